"""The anomaly agent: ``telemetry.raw`` → ``alarms.raw`` early warnings, as a confluent-kafka batch processor.

One ``models.anomaly.EarlyWarning`` per (site, device, metric) scores each point and
learns it; a raise or clear becomes an Alarm from source ``opsloop.anomaly``.

The guard's approved battery actions (``actions.approved``, read as a hint: signature checked with the verdict
keys, not checkpointed; every instance reads all of them, from ``hint_lookback_s`` before it started, whichever
telemetry partitions it owns: streams/series.py) tell which changes the loop made itself (models/action_effects.py): a raise on the ESS or a grid meter while such an action is in
force is not sent (counted as ``explained``), nor is the clear that ends it. The series still learns the point.
Without a verdict key no hint is trusted.

Why a batch processor and not a Faust agent: telemetry.raw is the highest-volume
topic, and Faust's per-event delivery costs ~80 µs here (see
../shared/notes/faust-performance.md); the detector itself costs a few µs per
point. ``make bench`` measures this processor against a bare consume-decode-produce
loop in the same run.

Restart safety (streams/series.py, shared with the rul agent): the detectors of source
partition P are checkpointed to partition P of its compacted changelog (every
``anomaly_checkpoint_s``, on idle, on revoke and on stop), each with the offset after the
last point it learnt; only then are the source offsets committed. After a crash or a rebalance
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

import time
from typing import Callable

from opsloop.models import records
from opsloop.models.action_effects import ActionsInForce
from opsloop.models.signing import Keyring, verdict_authentic
from opsloop.models.anomaly import EarlyWarning, Transition
from opsloop.models.names import SiteNames
from opsloop.models.event_time import EventTimeBounds
from opsloop.config.settings import Settings
from opsloop.streams.series import SeriesProcessor

SOURCE = "opsloop.anomaly"


class Series:
    """A detector and the offset after the last point it learnt (what a checkpoint holds); ``muted``: its open
    raise was explained by an action, so its clear is not sent either."""

    def __init__(self, warning: EarlyWarning, upto: int = -1):
        self.warning = warning
        self.upto = upto
        self.muted = False


def alarm(point: dict, t: Transition) -> dict:
    """The Alarm record of a raise or clear for a TelemetryPoint's series."""
    metric = point["metric"]
    return records.alarm(t.ts_ms, point["site"], point["device"], point["device_type"], SOURCE, f"anomaly.{metric}",
                         f"{metric} of {point['device']} at {t.value:g} {point['unit']}: {t.reason}",
                         severity="warning", state=t.state,
                         attributes={"metric": metric, "value": repr(t.value), "score": f"{t.score:.4f}",
                                     "unit": point["unit"]})


class AnomalyProcessor(SeriesProcessor):
    transactional = True  # its effects are Kafka records only: exactly-once is an option
    name = "anomaly"
    sources = ("telemetry.raw", "actions.approved")
    stateless = ("actions.approved",)
    hint_lookback_s = 6 * 3600.0  # approvals read again on start: longer than any action lives

    def __init__(self, settings: Settings, new_warning: Callable[[], EarlyWarning] = EarlyWarning,
                 names: SiteNames | None = None, wall_clock: Callable[[], float] = time.time, **kwargs):
        super().__init__(settings, **kwargs)
        self.names = names  # None: every site and device is taken
        self.new_warning = new_warning
        self.bounds = EventTimeBounds.from_settings(settings)
        self.wall_clock = wall_clock  # processing time that bounds event times (the run's one clock)
        self.now_ms = int(self.wall_clock() * 1000)
        self.stats = {"points": 0, "alarms": 0, "explained": 0, "dead_letters": 0, "replayed_skipped": 0,
                      "checkpoints": 0, "hints_refused": 0}
        self.configuration = new_warning().configuration()
        self.approved_topic = settings.topic("actions.approved")
        self.verdict_keys = Keyring.parse(settings.verdict_key, "OPSLOOP_VERDICT_KEY")
        self.effects = ActionsInForce()

    def current(self, key: str, series: Series) -> bool:
        # A detector checkpointed under another configuration (an upgrade) starts afresh: every series runs the
        # configuration that was evaluated, and replay from the committed offset feeds the new one.
        return series.warning.configuration() == self.configuration

    # -- processing --------------------------------------------------------------------

    def before_batch(self) -> None:
        self.now_ms = int(self.wall_clock() * 1000)
        super().before_batch()  # the approvals that came meanwhile, before the batch's points are scored

    def handle(self, msg) -> None:
        if msg.topic() == self.approved_topic:
            self.on_approved(msg)
            return
        partition, offset = msg.partition(), msg.offset()
        point = self.decoded(msg, "TelemetryPoint")
        if point is None:
            return
        value = point["value"]
        if self.refused(msg, point, self.names, self.bounds, self.now_ms):
            return
        key = f"{point['site']}|{point['device']}|{point['metric']}"
        series = self.learnt(partition, key, offset, lambda: Series(self.new_warning()))
        if series is None:
            return  # learnt before the restart
        t = series.warning.update(value, point["ts_ms"])
        self.stats["points"] += 1
        if t is None:
            return
        if t.state == "raise" and self.effects.explains(point["site"], point["device"], point["device_type"],
                                                        t.ts_ms) is not None:
            series.muted = True
        elif t.state == "clear" and getattr(series, "muted", False):  # a series checkpointed before muting: False
            series.muted = False
        else:
            self.emit("alarms.raw", alarm(point, t))
            self.stats["alarms"] += 1
            return
        self.stats["explained"] += 1

    def on_approved(self, msg) -> None:
        """A guard verdict as a hint of what the loop itself changes; an unsigned or forged one is ignored."""
        approved = self.hint(msg, "ApprovedAction")  # the guard's sinks dead-letter a bad one
        if approved is None:
            return
        if not self.verdict_keys or verdict_authentic(approved, self.verdict_keys) is not None:
            self.stats["hints_refused"] += 1
            return
        self.effects.learn_one(approved)
