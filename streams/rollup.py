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
* Undecodable, invalid (not finite, or beyond ``models.rollup.MAX_MAGNITUDE``), late
  and unknown points (a site or device no site file declares: ``models.names``) go to
  ``deadletter`` with the reason, once: after a restart, points of offsets handled
  before it are not dead-lettered again.

Watermarks are kept per lane, a (site, source) pair, so a replay of the past and a
live source on the wall clock never make each other late; each is the minimum over
partitions of the lane's latest event time, and a partition read to its end holds it
for ``idle_close_s`` before it is let go (a partition that has not delivered the lane's
data yet holds it back entirely for that long), so the first partition read cannot
close the windows of the others (models/rollup.py). Event times outside the bounds of
``max_future_s`` / ``max_past_s`` are dead-lettered as invalid and move nothing. When every
partition has caught up and nothing arrives for ``idle_close_s``, all open windows are
closed (the end of a replay, or a site gone silent).

Scale-out: all of a site's devices must reach one rollup process. The catalog keys
``telemetry.raw`` by site, so a site's points meet in one partition and the rollup
scales by adding processes to its consumer group, up to the partition count; each
lane's watermark then follows only the partitions that delivered it
(``LaneWatermarks(keyed=True)``). A rebalance hands the open windows over the way a
crash does: the revoked owner commits (never past a point an open window holds, with
the lanes and ``processed_upto`` in the metadata) and the next owner folds the
uncommitted points in again, recognising those of windows already emitted. With a
catalog that keys ``telemetry.raw`` otherwise (by device, as before) one process must
own every partition, and on a partial assignment it fails with a clear error rather
than emit partial sites.

The consume/commit loop is streams/processor.py's; this module keeps what is the
rollup's own: partition ends move the watermark in message order, closing windows
asks for a commit at once, and the commit carries the watermark as metadata.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

from confluent_kafka import TopicPartition

from opsloop.models.event_time import EventTimeBounds
from opsloop.models.names import SiteNames
from opsloop.models.rollup import Invalid, LaneWatermarks, SiteRollup, fold
from opsloop.config.settings import Settings
from opsloop.schemas.codec import DecodeError
from opsloop.schemas.point_decoder import PointDecoder
from opsloop.streams.processor import BatchProcessor


METADATA_BYTES = 3_800  # of the broker's offset.metadata.max.bytes (4,096 by default), leaving room for the offsets


@dataclass(frozen=True)
class Unknown:
    """A point of a site or device no site file declares (``SiteNames.check``)."""

    reason: str


class PartialAssignment(RuntimeError):
    """Another rollup process shares the group: windows would hold only part of each site."""


class RollupProcessor(BatchProcessor):
    transactional = True  # its effects are Kafka records only: exactly-once is an option
    name = "rollup"
    source = "telemetry.raw"
    # A batch waits at most 50 ms to fill: at 10,000 points/s a full 5,000 would hold the point that closes a
    # window for half a second (ops/bench/loop.py); when the rollup is behind, batches still fill at once.
    poll_s = 0.05

    def __init__(self, settings: Settings, names: SiteNames | None = None,
                 wall_clock: Callable[[], float] = time.time, **kwargs):
        super().__init__(settings, **kwargs)
        self.names = names  # None: every site and device is taken
        self.keyed = self.catalog[self.source].key == "site"  # a site's points meet in one partition
        self.wall_clock = wall_clock  # processing time for event-time bounds and partition holds
        self._metadata_full = False  # warned that lanes did not fit the commit metadata
        self.now_ms = int(wall_clock() * 1000)
        self.decode = PointDecoder(self.codec).decode  # the codec's result, several times cheaper per point
        self.stats = {"points": 0, "snapshots": 0, "dead_letters": 0, "replayed_skipped": 0, "commits": 0}
        self._reset()

    def _reset(self, partitions=()) -> None:
        self.rollup = SiteRollup(self.settings.window_s, self.settings.grace_s,
                                 EventTimeBounds.from_settings(self.settings))
        # idle_close_s is how long a Kafka consumer may take to reach a partition: wall seconds, counted on
        # the run's clock (a twin clock runs `speed` times faster)
        hold_ms = int(self.settings.idle_close_s * 1000 * getattr(self.wall_clock, "speed", 1.0))
        self.watermark = LaneWatermarks(partitions, hold_ms=hold_ms, keyed=self.keyed)
        self.replayed_upto: dict[int, int] = {}  # partition → offsets below this were handled before a restart
        self.start_offsets: dict[int, int] = {}  # partition → where this assignment reads from (-1: its beginning)
        self.lane_homes: dict[tuple[str, str], set[int]] = {}  # lane → partitions whose commit metadata carried it

    # -- rebalance ---------------------------------------------------------------------

    def on_assign(self, cons, partitions) -> None:
        self._reset([p for _, p in self.assigned])  # open windows mix partitions: rebuild from the commits
        total = len(cons.list_topics(self.topic, timeout=30).topics[self.topic].partitions)
        if partitions and len(self.assigned) < total and not self.keyed:
            raise PartialAssignment(f"rollup was assigned {len(self.assigned)} of the {total} partitions of "
                                    f"{self.topic}; a site's devices span all of them, so run one rollup process "
                                    "(or key the topic by site in the catalog)")
        for tp in cons.committed(partitions, timeout=30):
            self.start_offsets[tp.partition] = tp.offset if tp.offset >= 0 else -1
            if tp.metadata:
                mark = json.loads(tp.metadata)
                self.rollup.move_watermark(mark.get("watermark_ms"))  # written by versions without lanes
                for site, source, lane_ms in mark.get("lanes", ()):
                    self.rollup.move_watermark(lane_ms, (site, source))
                    self.lane_homes.setdefault((site, source), set()).add(tp.partition)
                self.replayed_upto[tp.partition] = mark["processed_upto"]
        self.log.info("rollup assigned partitions %s of %s", sorted(p for _, p in self.assigned), self.topic)

    def on_revoke(self, cons, partitions) -> None:
        self._reset()

    # -- processing --------------------------------------------------------------------

    def before_batch(self) -> None:
        self.now_ms = int(self.wall_clock() * 1000)

    def handle(self, msg) -> None:
        partition, offset = msg.partition(), msg.offset()
        try:
            point = self.decode(msg.value())
        except DecodeError as exc:
            self.dead_letter(msg, "decode", exc.reason)
            return
        unknown = self.names.check(point["site"], point["device"]) if self.names is not None else None
        rejected = Unknown(unknown) if unknown is not None else fold(self.rollup, self.watermark, point, partition,
                                                                     offset, self.now_ms)
        if rejected is None:
            self.stats["points"] += 1
        elif offset < self.replayed_upto.get(partition, -1):
            self.stats["replayed_skipped"] += 1  # counted or dead-lettered before the restart
        else:
            self.dead_letter(msg, "unknown" if isinstance(rejected, Unknown) else
                             "invalid" if isinstance(rejected, Invalid) else "late", rejected.reason)

    def partition_end(self, partition) -> None:
        self.watermark.caught_up(partition[1], self.now_ms)  # in message order

    def partitions_stale(self, partitions) -> None:
        for _, p in partitions:  # data queued while the broker was away must not arrive late
            self.watermark.stale(p, int(self.wall_clock() * 1000))

    def end_batch(self, messages: int, idle: bool) -> bool:
        self.watermark.backlog(self._behind())
        closed = self.rollup.advance(lanes=self.watermark.marks(int(self.wall_clock() * 1000)))
        if idle:
            closed += self.rollup.flush()
        for snap in closed:
            self.emit("telemetry.site", snap)
        self.stats["snapshots"] += len(closed)
        return bool(closed)  # closing windows frees offsets to commit

    def _behind(self) -> list[int]:
        """Assigned partitions whose position is short of the broker's end, as the consumer last heard it
        (local calls: positions and the high watermarks cached from fetch responses)."""
        if self.cons is None or not self.assigned:
            return []
        behind = []
        for tp in self.cons.position([TopicPartition(t, p) for t, p in sorted(self.assigned)]):
            low, high = self.cons.get_watermark_offsets(tp, cached=True)
            at = tp.offset  # none yet while nothing was read since the assignment: where reading starts
            if at < 0:
                start = self.start_offsets.get(tp.partition)
                at = low if start == -1 else start if start is not None else -1
            if at >= 0 and high >= 0 and at < high:
                behind.append(tp.partition)
        return behind

    def offsets(self, partitions) -> list[TopicPartition]:
        """Never past a point an open window holds; the metadata lets a restart recognise what was handled."""
        pending = self.rollup.pending_offsets()
        return [TopicPartition(topic, p, pending.get(p, upto), metadata=json.dumps({**self._mark(p), "processed_upto": upto}))
                for (topic, p), upto in self.processed.items() if (topic, p) in partitions]

    def _mark(self, partition: int) -> dict:
        """The watermarks a restart on ``partition`` needs: every lane, or with a site-keyed input the lanes that
        live on it (so the metadata does not grow with the sites of the whole group)."""
        lanes = [[site, source, ms] for (site, source), ms in self.rollup.lanes.items()
                 if not self.keyed or self._lives_on((site, source), partition)]
        lanes.sort(key=lambda lane: -lane[2])
        mark = {"watermark_ms": self.rollup.watermark_ms, "lanes": lanes}
        while len(json.dumps(mark)) > METADATA_BYTES - 64 and lanes:  # the broker refuses the commit past its limit
            dropped = lanes.pop()  # the lane furthest behind: least likely to have points in the uncommitted range
            if not self._metadata_full:
                self._metadata_full = True
                self.log.warning("commit metadata full: lanes from %s/%s (watermark %d) on are not kept; a restart "
                                 "may count their uncommitted points again", dropped[0], dropped[1], dropped[2])
        return mark

    def _lives_on(self, lane, partition: int) -> bool:
        home = self.watermark.partitions_of(lane) | self.lane_homes.get(lane, set())
        return not home or partition in home  # a lane of unknown home goes everywhere: nothing is lost
