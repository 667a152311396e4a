"""The anomaly agent: ``telemetry.raw`` → ``alarms.raw`` early warnings, as a confluent-kafka batch processor.

One ``models.anomaly.EarlyWarning`` per (site, device, metric) scores each point and
learns it; a raise or clear becomes an Alarm from source ``opsloop.anomaly``.

Why a batch processor and not a Faust agent: telemetry.raw is the highest-volume
topic, and Faust's per-event delivery costs ~80 µs here (see
../shared/notes/faust-performance.md); the detector itself costs a few µs per
point. ``make bench`` measures this processor against a bare consume-decode-produce
loop in the same run.

Restart safety: the detectors of source partition P are checkpointed to partition P
of a private compacted topic named after the consumer group (``<group>.state``) (every ``anomaly_checkpoint_s``,
on idle, on revoke and on stop), each with the offset after the last point it
learnt; only then are the source offsets committed. After a crash or a rebalance
the new owner restores the detectors and replays from the committed offset; a
point a detector has already learnt is skipped, so nothing is lost and nothing is
learnt twice. Alarms emitted after the last checkpoint may be emitted again after a
crash (at least once: the same ts, device and code, which dedup folds together).

Undecodable points and non-finite values go to ``deadletter`` with the reason.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable

from confluent_kafka import TopicPartition

from connectors.kafka import (DeadLetters, DeliveryErrors, close_clients, consumer, data_messages, producer, send,
                              wait_delivered)
from connectors.state_store import ensure_state_topic, read_state, write_state
from models.anomaly import EarlyWarning, Transition
from ops.settings import Settings
from schemas.codec import Codec, DecodeError

log = logging.getLogger("opsloop.anomaly")

SOURCE = "opsloop.anomaly"


class Series:
    """A detector and the offset after the last point it learnt (what a checkpoint holds)."""

    def __init__(self, warning: EarlyWarning, upto: int = -1):
        self.warning = warning
        self.upto = upto


def alarm(point: dict, t: Transition) -> dict:
    """The Alarm record of a raise or clear for a TelemetryPoint's series."""
    metric = point["metric"]
    return {
        "ts_ms": t.ts_ms, "site": point["site"], "device": point["device"], "device_type": point["device_type"],
        "source": SOURCE, "code": f"anomaly.{metric}", "severity": "warning", "state": t.state,
        "text": f"{metric} of {point['device']} at {t.value:g} {point['unit']}: {t.reason}",
        "attributes": {"metric": metric, "value": repr(t.value), "score": f"{t.score:.4f}", "unit": point["unit"]},
    }


class AnomalyProcessor:
    name = "anomaly"

    def __init__(self, settings: Settings, codec: Codec | None = None, clock: Callable[[], float] = time.monotonic,
                 new_warning: Callable[[], EarlyWarning] = EarlyWarning):
        self.settings = settings
        self.codec = codec or Codec.default()
        self.clock = clock  # processing time, only for idleness and checkpoint pacing
        self.new_warning = new_warning
        self.source = settings.topic("telemetry.raw")
        self.sink = settings.topic("alarms.raw")
        self.state_topic = settings.group(self.name) + ".state"  # belongs to the consumer group, like its offsets
        self.stats = {"points": 0, "alarms": 0, "dead_letters": 0, "replayed_skipped": 0, "checkpoints": 0}
        self.series: dict[int, dict[str, Series]] = {}  # partition → series key → series
        self.dirty: dict[int, set[str]] = {}
        self.processed: dict[int, int] = {}  # partition → next offset to read
        self._prod = None
        self._errors = DeliveryErrors()

    # -- rebalance ---------------------------------------------------------------------

    def _on_assign(self, cons, partitions) -> None:
        restored = read_state(self.settings, self.state_topic, [p.partition for p in partitions])
        for p, states in restored.items():
            self.series[p] = states
            self.dirty[p] = set()
        log.info("anomaly assigned partitions %s of %s, %d series restored",
                 sorted(restored), self.source, sum(len(s) for s in restored.values()))

    def _on_revoke(self, cons, partitions) -> None:
        gone = [p.partition for p in partitions]
        self._checkpoint(cons, gone)
        for p in gone:
            self.series.pop(p, None)
            self.dirty.pop(p, None)
            self.processed.pop(p, None)

    # -- processing --------------------------------------------------------------------

    def handle(self, msg, dead: DeadLetters) -> None:
        partition, offset = msg.partition(), msg.offset()
        self.processed[partition] = offset + 1
        try:
            point = self.codec.decode_as("TelemetryPoint", msg.value())
        except DecodeError as exc:
            dead.send(msg, "decode", exc.reason)
            return
        value = point["value"]
        if not math.isfinite(value):
            dead.send(msg, "invalid", f"{point['metric']} of {point['device']} is {value}, not a finite number")
            return
        key = f"{point['site']}|{point['device']}|{point['metric']}"
        owned = self.series.setdefault(partition, {})
        series = owned.get(key)
        if series is None:
            series = owned[key] = Series(self.new_warning())
        elif offset < series.upto:
            self.stats["replayed_skipped"] += 1  # learnt before the restart
            return
        t = series.warning.update(value, point["ts_ms"])
        series.upto = offset + 1
        self.dirty.setdefault(partition, set()).add(key)
        self.stats["points"] += 1
        if t is not None:
            send(self._prod, self.sink, point["device"].encode(), self.codec.encode("Alarm", alarm(point, t)),
                 self._errors)
            self.stats["alarms"] += 1

    def _checkpoint(self, cons, partitions=None) -> None:
        """Flush the outputs, write the changed detectors, wait for them, then commit the offsets they cover."""
        partitions = list(self.processed) if partitions is None else [p for p in partitions if p in self.processed]
        if not partitions or self._prod is None:
            return
        # Alarms and dead letters first: a state that says "learnt" must never reach the broker
        # before the alarms of the points it covers (a crash in between would lose them).
        wait_delivered(self._prod)
        self._errors.raise_if_any()
        for p in partitions:
            for key in self.dirty.get(p, ()):
                write_state(self._prod, self.state_topic, p, key, self.series[p][key], self._errors)
            self.dirty[p] = set()
        wait_delivered(self._prod)
        self._errors.raise_if_any()
        cons.commit(offsets=[TopicPartition(self.source, p, self.processed[p]) for p in partitions],
                    asynchronous=False)
        self.stats["checkpoints"] += 1

    def run(self, stop: threading.Event, exit_when_idle: bool = False) -> dict:
        settings = self.settings
        cons = consumer(settings, settings.group(self.name))
        self._prod = prod = producer(settings)
        dead = DeadLetters(settings, prod, self.name)
        partitions = len(cons.list_topics(self.source, timeout=30).topics[self.source].partitions)
        ensure_state_topic(settings, self.state_topic, partitions)
        cons.subscribe([self.source], on_assign=self._on_assign, on_revoke=self._on_revoke)
        assigned: set[int] = set()
        caught_up: set[int] = set()
        last_data = last_checkpoint = self.clock()
        dirty = False
        try:
            while not stop.is_set():
                batch = cons.consume(settings.batch_size, timeout=0.5)
                data = data_messages(batch, caught_up)
                for msg in data:
                    self.handle(msg, dead)
                got_data = bool(data)
                now = self.clock()
                if got_data:
                    last_data, dirty = now, True
                prod.poll(0)
                assigned = {tp.partition for tp in cons.assignment()}
                idle = bool(assigned) and caught_up >= assigned and now - last_data >= settings.idle_close_s
                if dirty and (idle or now - last_checkpoint >= settings.anomaly_checkpoint_s):
                    self._checkpoint(cons)
                    last_checkpoint, dirty = now, False
                if idle and exit_when_idle and not dirty:
                    break
            if dirty:
                self._checkpoint(cons)
        finally:
            self.stats["dead_letters"] = dead.count
            close_clients(prod, cons)
        log.info("anomaly stopped: %s", self.stats)
        return self.stats
