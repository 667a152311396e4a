"""The anomaly agent: ``telemetry.raw`` → ``alarms.raw`` early warnings, as a confluent-kafka batch processor.

One ``models.anomaly.EarlyWarning`` per (site, device, metric) scores each point and
learns it; a raise or clear becomes an Alarm from source ``opsloop.anomaly``.

Why a batch processor and not a Faust agent: telemetry.raw is the highest-volume
topic, and Faust's per-event delivery costs ~80 µs here (see
../shared/notes/faust-performance.md); the detector itself costs a few µs per
point. ``make bench`` measures this processor against a bare consume-decode-produce
loop in the same run.

Restart safety: the detectors of source partition P are checkpointed to partition P
of its compacted changelog (connectors/changelog.py, as the keyed processors' state: pickled
detectors, private to this processor) (every ``anomaly_checkpoint_s``,
on idle, on revoke and on stop), each with the offset after the last point it
learnt; only then are the source offsets committed. After a crash or a rebalance
the new owner restores the detectors and replays from the committed offset; a
point a detector has already learnt is skipped, so nothing is lost and nothing is
learnt twice. A detector checkpointed under another configuration than the current
``EarlyWarning`` (an upgrade) is not restored: its series starts afresh, so every series
runs the configuration that was evaluated. Alarms emitted after the last checkpoint
may be emitted again after a crash (at least once: the same ts, device and code,
which dedup folds together).

Undecodable points, non-finite values and event times out of bounds (before the epoch or
ahead of the processing clock, models/event_time.py) go to ``deadletter`` with the reason. The
consume/commit loop is streams/processor.py's: the checkpoint is its ``checkpoint`` hook.
"""

from __future__ import annotations

import pickle
import time
from typing import Callable

from opsloop.connectors.changelog import Changelog
from opsloop.models import records
from opsloop.models.anomaly import EarlyWarning, Transition
from opsloop.models.names import SiteNames
from opsloop.models.rollup import value_problem
from opsloop.models.event_time import EventTimeBounds
from opsloop.config.settings import Settings
from opsloop.schemas.codec import DecodeError
from opsloop.streams.processor import BatchProcessor

SOURCE = "opsloop.anomaly"


class Series:
    """A detector and the offset after the last point it learnt (what a checkpoint holds)."""

    def __init__(self, warning: EarlyWarning, upto: int = -1):
        self.warning = warning
        self.upto = upto


def alarm(point: dict, t: Transition) -> dict:
    """The Alarm record of a raise or clear for a TelemetryPoint's series."""
    metric = point["metric"]
    return records.alarm(t.ts_ms, point["site"], point["device"], point["device_type"], SOURCE, f"anomaly.{metric}",
                         f"{metric} of {point['device']} at {t.value:g} {point['unit']}: {t.reason}",
                         severity="warning", state=t.state,
                         attributes={"metric": metric, "value": repr(t.value), "score": f"{t.score:.4f}",
                                     "unit": point["unit"]})


class AnomalyProcessor(BatchProcessor):
    transactional = True  # its effects are Kafka records only: exactly-once is an option
    name = "anomaly"
    source = "telemetry.raw"
    commit_stat = "checkpoints"

    def __init__(self, settings: Settings, new_warning: Callable[[], EarlyWarning] = EarlyWarning,
                 names: SiteNames | None = None, wall_clock: Callable[[], float] = time.time, **kwargs):
        super().__init__(settings, **kwargs)
        self.names = names  # None: every site and device is taken
        self.commit_every_s = settings.anomaly_checkpoint_s
        self.new_warning = new_warning
        self.bounds = EventTimeBounds.from_settings(settings)
        self.wall_clock = wall_clock  # processing time that bounds event times (the run's one clock)
        self.now_ms = int(self.wall_clock() * 1000)
        self.stats = {"points": 0, "alarms": 0, "dead_letters": 0, "replayed_skipped": 0, "checkpoints": 0}
        self.series: dict[int, dict[str, Series]] = {}  # partition → series key → series
        self.dirty: dict[int, set[str]] = {}

    def setup(self, cons) -> None:
        partitions = len(cons.list_topics(self.topic, timeout=30).topics[self.topic].partitions)
        self.changelog = Changelog(self.settings, f"{self.name}-state", partitions)

    # -- rebalance ---------------------------------------------------------------------

    def on_assign(self, cons, partitions) -> None:
        restored = self.changelog.restore([p.partition for p in partitions])
        current, restarted = self.new_warning().configuration(), 0
        for p, states in restored.items():
            series = {key.decode(): pickle.loads(value) for key, value in states.items()}
            # A detector checkpointed under another configuration (an upgrade) starts afresh: every series runs
            # the configuration that was evaluated, and replay from the committed offset feeds the new one.
            self.series[p] = {k: s for k, s in series.items() if s.warning.configuration() == current}
            restarted += len(series) - len(self.series[p])
            self.dirty[p] = set()
        self.log.info("anomaly assigned partitions %s of %s, %d series restored, %d restarted (configuration changed)",
                      sorted(restored), self.topic, sum(len(self.series[p]) for p in restored), restarted)

    def on_revoke(self, cons, partitions) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self.commit(cons, gone)
        for _, p in gone:
            self.series.pop(p, None)
            self.dirty.pop(p, None)

    # -- processing --------------------------------------------------------------------

    def before_batch(self) -> None:
        self.now_ms = int(self.wall_clock() * 1000)

    def handle(self, msg) -> None:
        partition, offset = msg.partition(), msg.offset()
        try:
            point = self.codec.decode_as("TelemetryPoint", msg.value())
        except DecodeError as exc:
            self.dead_letter(msg, "decode", exc.reason)
            return
        value = point["value"]
        problem = value_problem(point)  # the rollup's check: not finite, or beyond any real reading
        if problem is not None:
            self.dead_letter(msg, "invalid", problem)
            return
        unknown = self.names.check(point["site"], point["device"]) if self.names is not None else None
        if unknown is not None:
            self.dead_letter(msg, "unknown", unknown)
            return
        refused = self.bounds.check(point["ts_ms"], None, None, self.now_ms)  # it would date the alarms it raises
        if refused is not None:
            self.dead_letter(msg, "invalid", f"{point['metric']} of {point['device']}: {refused}")
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
            self.emit("alarms.raw", alarm(point, t))
            self.stats["alarms"] += 1

    def checkpoint(self, partitions) -> None:
        """Write the changed detectors. The alarms of the points they learnt are delivered by now:
        a state that says "learnt" must never reach the broker before them (a crash would lose them)."""
        for _, p in partitions:
            for key in self.dirty.get(p, ()):
                self.changelog.write(self.prod, p, key.encode(),
                                     pickle.dumps(self.series[p][key], protocol=pickle.HIGHEST_PROTOCOL), self.errors)
            self.dirty[p] = set()
