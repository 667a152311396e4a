"""The rollup agent: ``telemetry.raw`` → ``telemetry.site``, as a confluent-kafka batch processor.

Why not a Faust agent: this is the highest-volume path, and Faust's per-event
delivery costs ~80 µs on these 2-core machines. ``make bench`` measures it in one
run: ~11k events/s for the same rollup as a tuned Faust agent, ~70k for this
processor, ~60k for a bare consume-decode-encode-produce loop.

The agent stays thin: decode, hand points to ``models.rollup.SiteRollup``, emit
closed windows. Delivery guarantees:

* Offsets are committed only after the snapshots of the windows they close are
  acknowledged by the broker, and never past a point still held by an open
  window, so a crash loses nothing: the open windows are rebuilt on restart.
* Each commit carries the watermark and how far the partition was processed
  (commit metadata), so after a restart points of windows that were already
  emitted are recognised and not counted twice; re-emitted windows are
  identical, and consumers upsert by (site, window_start_ms).
* Undecodable, invalid and late points go to ``deadletter`` with the reason.

The watermark is the minimum over partitions of their latest event time
(partitions that have caught up do not hold it back). When every partition has
caught up and nothing arrives for ``idle_close_s``, all open windows are closed
(the end of a replay, or a site gone silent).

All of a site's devices must reach one rollup process, so one process owns all
partitions of ``telemetry.raw``: on a partial assignment (a second rollup in the
group) it fails with a clear error rather than emit partial sites. A repartition
stage keyed by site is the way to scale past one process.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from connectors.kafka import DeadLetters, DeliveryErrors, close_clients, consumer, producer, send, wait_delivered
from models.rollup import Invalid, PartitionWatermark, SiteRollup, fold
from ops.settings import Settings
from schemas.codec import Codec, DecodeError

log = logging.getLogger("opsloop.rollup")


class PartialAssignment(RuntimeError):
    """Another rollup process shares the group: windows would hold only part of each site."""
COMMIT_EVERY_S = 1.0


class RollupProcessor:
    name = "rollup"

    def __init__(self, settings: Settings, codec: Codec | None = None, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.codec = codec or Codec.default()
        self.clock = clock  # processing time, only for idleness and commit pacing
        self.source = settings.topic("telemetry.raw")
        self.sink = settings.topic("telemetry.site")
        self.stats = {"points": 0, "snapshots": 0, "dead_letters": 0, "replayed_skipped": 0, "commits": 0}
        self._reset()

    def _reset(self) -> None:
        self.rollup = SiteRollup(self.settings.window_s, self.settings.grace_s)
        self.watermark = PartitionWatermark()
        self.processed: dict[int, int] = {}  # partition → next offset to read
        self.replayed_upto: dict[int, int] = {}  # partition → offsets below this were handled before a restart
        self.assigned: set[int] = set()
        self.caught_up: set[int] = set()

    # -- rebalance ---------------------------------------------------------------------

    def _on_assign(self, cons, partitions) -> None:
        self._reset()  # open windows mix partitions: rebuild them from the committed offsets
        self.assigned = {p.partition for p in partitions}
        total = len(cons.list_topics(self.source, timeout=30).topics[self.source].partitions)
        if partitions and len(self.assigned) < total:
            raise PartialAssignment(f"rollup was assigned {len(self.assigned)} of the {total} partitions of "
                                    f"{self.source}; a site's devices span all of them, so run one rollup process")
        self.watermark = PartitionWatermark(self.assigned)
        for tp in cons.committed(partitions, timeout=30):
            if tp.metadata:
                mark = json.loads(tp.metadata)
                self.rollup.advance(mark["watermark_ms"])
                self.replayed_upto[tp.partition] = mark["processed_upto"]
        log.info("rollup assigned partitions %s of %s", sorted(self.assigned), self.source)

    def _on_revoke(self, cons, partitions) -> None:
        self._reset()

    # -- processing --------------------------------------------------------------------

    def handle(self, msg, dead: DeadLetters) -> None:
        partition, offset = msg.partition(), msg.offset()
        self.processed[partition] = offset + 1
        try:
            point = self.codec.decode_as("TelemetryPoint", msg.value())
        except DecodeError as exc:
            dead.send(msg, "decode", exc.reason)
            return
        rejected = fold(self.rollup, self.watermark, point, partition, offset)
        if rejected is None:
            self.stats["points"] += 1
        elif isinstance(rejected, Invalid):
            dead.send(msg, "invalid", rejected.reason)
        elif offset < self.replayed_upto.get(partition, -1):
            self.stats["replayed_skipped"] += 1  # counted or dead-lettered before the restart
        else:
            dead.send(msg, "late", rejected.reason)

    def _commit(self, cons, prod, errors: DeliveryErrors) -> None:
        wait_delivered(prod)
        errors.raise_if_any()
        pending = self.rollup.pending_offsets()
        mark = {"watermark_ms": self.rollup.watermark_ms}
        offsets = [TopicPartition(self.source, p, pending.get(p, upto),
                                  metadata=json.dumps({**mark, "processed_upto": upto}))
                   for p, upto in self.processed.items() if p in self.assigned]
        if offsets:
            cons.commit(offsets=offsets, asynchronous=False)
            self.stats["commits"] += 1

    def _emit(self, prod, snapshots: list[dict], errors: DeliveryErrors) -> None:
        for snap in snapshots:
            send(prod, self.sink, snap["site"].encode(), self.codec.encode("SiteSnapshot", snap), errors)
        self.stats["snapshots"] += len(snapshots)

    def run(self, stop: threading.Event, exit_when_idle: bool = False) -> dict:
        settings = self.settings
        cons = consumer(settings, settings.group(self.name))
        prod = producer(settings)
        errors = DeliveryErrors()
        dead = DeadLetters(settings, prod, self.name)
        cons.subscribe([self.source], on_assign=self._on_assign, on_revoke=self._on_revoke)
        last_data = last_commit = self.clock()
        dirty = False
        try:
            while not stop.is_set():
                batch = cons.consume(settings.batch_size, timeout=0.5)
                got_data = False
                for msg in batch:
                    err = msg.error()
                    if err is None:
                        self.handle(msg, dead)
                        self.caught_up.discard(msg.partition())
                        got_data = True
                    elif err.code() == KafkaError._PARTITION_EOF:
                        self.watermark.caught_up(msg.partition())
                        self.caught_up.add(msg.partition())
                    else:
                        raise KafkaException(err)
                now = self.clock()
                if got_data:
                    last_data = now
                closed = self.rollup.advance(self.watermark.value)
                idle = bool(self.assigned) and self.caught_up >= self.assigned and now - last_data >= settings.idle_close_s
                if idle:
                    closed += self.rollup.flush()
                if closed:
                    self._emit(prod, closed, errors)
                dirty = dirty or got_data or bool(closed)  # closing windows frees offsets to commit
                prod.poll(0)
                if dirty and (closed or idle or now - last_commit >= COMMIT_EVERY_S):
                    self._commit(cons, prod, errors)
                    last_commit, dirty = now, False
                if idle and exit_when_idle and not dirty and self.rollup.open_windows == 0:
                    break
        finally:
            self.stats["dead_letters"] = dead.count
            close_clients(prod, cons)
        log.info("rollup stopped: %s", self.stats)
        return self.stats
