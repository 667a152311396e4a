"""The rul agent: ``telemetry.raw`` → ``forecasts.rul``, when each part will reach its retirement limit.

One ``models.rul.DegradationTrend`` per (site, device, metric) of a metric with a retirement rule
(``models.rul.rules``: battery health against the policy's ``pcs.min_soh_pct``, GPU remapped rows,
ECC errors and XIDs counted from the last XID code, temperatures); every other metric is skipped
at the cost of a dict lookup. A series publishes a ``RulForecast`` once its band's early edge falls within ``horizon_days``, then
again whenever ``republish_days`` of event time have passed, so a part's forecast stays fresh
without one record per reading. A GPU part whose band opens within two weeks also gets one
maintenance window (models/maintenance.py): a ``slurm_reserve`` Action on ``actions.proposed`` for
the guard, at the cheapest hours before the band by the node's own utilisation by hour of day (its
GPUs' ``gpu_util_pct``), the tariff and the site's latest ``slurm.queue`` snapshot (hours its running and
pending jobs want the GPUs cost the node's whole work). The snapshots are a hint, broadcast (streams/series.py):
every instance reads every site's, since slurm.queue and telemetry.raw are partitioned apart (4 and 8 partitions),
so a site's queue need not sit in the partition number its GPUs' readings do; on start the reader goes back as
far as the plan still uses a snapshot (``queue_max_age_h``). An undecodable snapshot entry is skipped and counted
(``hints_refused``), not dead-lettered: every instance would dead-letter it again, at each start.

XIDs as wear: the live sources turn each NVIDIA XID into an alarm on ``alarms.raw`` (code ``XID_<n>``), so the
agent reads that topic too. Each GPU's raised XID alarms are counted by a ``models.xid_rate.XidRate`` (a Poisson
rate, its weight halving over a month) and forecast against the same ``xid_count`` rule as the XIDs counted from
telemetry, published and given a maintenance window the same way; every other alarm is skipped.

State and restarts are the anomaly agent's (streams/series.py): the models of source partition P
are checkpointed to partition P of a compacted changelog with the offset after the last reading
each learnt, before the source offsets are committed; a replayed reading is skipped, and a model
saved under another configuration restarts afresh. The XID counts of alarms.raw partition P are kept in
partition P of a second changelog (``rul-alarms.raw-state``).
"""

from __future__ import annotations

import time
from typing import Callable

from opsloop.config.settings import Settings
from opsloop.models.event_time import EventTimeBounds
from opsloop.models.names import SiteNames
from opsloop.models.maintenance import HourlyProfile, MaintenancePlan, node_of, propose
from opsloop.models.slurm_queue import LatestQueue
from opsloop.models.rul import DAY_MS, DERIVED, RULES, DegradationTrend, Forecast, Rule, count_xid, forecast_record
from opsloop.models.xid_rate import XidRate, xid_code
from opsloop.streams.series import SeriesProcessor


def default_trend(rule: Rule) -> DegradationTrend:
    """Batteries: the configuration ``opsloop eval rul`` chose (leave-one-condition-out); the rest: a
    straight line over a month's half-life (no public failure data to choose by; see the README)."""
    if rule.family == "battery":
        return DegradationTrend(exponent=0.55, half_life_days=365.0, form_spread=0.04)
    return DegradationTrend(exponent=1.0, half_life_days=30.0, form_spread=0.1, min_span_days=1.0)


class Series:
    """A model, the offset after the last reading it learnt, and when it last published."""

    def __init__(self, trend: DegradationTrend, upto: int = -1):
        self.trend = trend
        self.upto = upto
        self.published_ms: int | None = None
        self.proposed: str | None = None  # the maintenance window proposed for the part (its action id)
        self.last_xid, self.xids = 0, 0  # the last XID code read and the XIDs so far (xid_count only)


class XidSeries:
    """A GPU's XID alarms: their count and rate, the offset after the last alarm learnt, publication and window."""

    def __init__(self, rate: XidRate, upto: int = -1):
        self.rate = rate
        self.upto = upto
        self.published_ms: int | None = None
        self.proposed: str | None = None


class RulProcessor(SeriesProcessor):
    name = "rul"
    sources = ("telemetry.raw", "alarms.raw", "slurm.queue")
    stateless = ("slurm.queue",)

    def __init__(self, settings: Settings, rules: dict[str, Rule] = RULES,
                 new_trend: Callable[[Rule], DegradationTrend] = default_trend, horizon_days: float = 365.0,
                 republish_days: float = 1.0, maintenance: MaintenancePlan | None = MaintenancePlan(),
                 names: SiteNames | None = None, new_xid_rate: Callable[[], XidRate] = XidRate,
                 wall_clock: Callable[[], float] = time.time, **kwargs):
        super().__init__(settings, **kwargs)
        self.rules = rules
        self.new_trend = new_trend
        self.new_xid_rate = new_xid_rate
        self.alarms_topic, self.queue_topic = settings.topic("alarms.raw"), settings.topic("slurm.queue")
        self.queues = LatestQueue()  # each site's latest Slurm queue (a hint: not checkpointed, read again)
        self.horizon_ms = int(horizon_days * DAY_MS)
        self.republish_ms = int(republish_days * DAY_MS)
        self.maintenance = maintenance  # None: forecasts only, no windows proposed
        # a snapshot older than the plan's limit says nothing about the hours ahead: no need to read it on start
        self.hint_lookback_s = maintenance.queue_max_age_h * 3600.0 if maintenance is not None else 0.0
        self.profiles: dict[str, HourlyProfile] = {}  # node → its GPUs' utilisation by hour of day
        self.names = names
        self.bounds = EventTimeBounds.from_settings(settings)
        self.wall_clock = wall_clock
        self.now_ms = int(wall_clock() * 1000)
        self.stats = {"points": 0, "xids": 0, "forecasts": 0, "windows": 0, "dead_letters": 0, "replayed_skipped": 0,
                      "checkpoints": 0, "hints_refused": 0}

    def current(self, key: str, series: Series) -> bool:
        """A restored model is kept only under the rule and configuration this agent runs."""
        rule = self.rules.get(key.rsplit("|", 1)[1])
        if isinstance(series, XidSeries):
            return rule is not None and series.rate.configuration() == self.new_xid_rate().configuration()
        return rule is not None and series.trend.configuration() == self.new_trend(rule).configuration()

    def before_batch(self) -> None:
        self.now_ms = int(self.wall_clock() * 1000)
        super().before_batch()  # the queue snapshots that came meanwhile

    def handle(self, msg) -> None:
        if msg.topic() == self.alarms_topic:
            self.on_alarm(msg)
            return
        if msg.topic() == self.queue_topic:
            if (entry := self.hint(msg, "SlurmQueue")) is not None:
                self.queues.add(entry)
            return
        partition, offset = msg.partition(), msg.offset()
        point = self.decoded(msg, "TelemetryPoint")
        if point is None:
            return
        metric = DERIVED.get(point["metric"], point["metric"])
        rule = self.rules.get(metric)
        if rule is None:
            if point["metric"] == "gpu_util_pct" and (node := node_of(point["device"])) is not None:
                # the load forecast of a node's maintenance window (a hint: not checkpointed, relearnt)
                self.profiles.setdefault(node, HourlyProfile()).learn_one(point["ts_ms"], point["value"])
            return  # nothing wears out on this metric
        if self.refused(msg, point, self.names, self.bounds, self.now_ms):
            return
        key = f"{point['site']}|{point['device']}|{metric}"
        series = self.learnt(partition, key, offset, lambda: Series(self.new_trend(rule)))
        if series is None:
            return  # learnt before the restart
        if metric == "xid_count":  # the XIDs so far, learnt as a count
            series.last_xid, series.xids = count_xid(series.last_xid, series.xids, int(point["value"]))
            point = {**point, "metric": metric, "value": float(series.xids), "unit": "errors"}
        series.trend.learn_one(point["ts_ms"], point["value"])
        self.stats["points"] += 1
        self.publish(series, point, rule, lambda: series.trend.forecast(rule.limit, rule.direction),
                     series.trend.describe())

    def on_alarm(self, msg) -> None:
        """An alarm: a raised XID is one more for its GPU (as the rule ``xid_count`` counts them); the rest are
        skipped."""
        alarm = self.decoded(msg, "Alarm")
        if alarm is None:
            return
        code, rule = xid_code(alarm), self.rules.get("xid_count")
        if code is None or rule is None:
            return
        if self.refused(msg, alarm, self.names, self.bounds, self.now_ms):
            return
        key = f"{alarm['site']}|{alarm['device']}|{rule.metric}"
        series = self.learnt((msg.topic(), msg.partition()), key, msg.offset(),
                             lambda: XidSeries(self.new_xid_rate()))
        if series is None:
            return  # learnt before the restart
        before = series.rate.count
        series.rate.learn_one(alarm["ts_ms"], code)
        self.stats["xids"] += series.rate.count - before  # a resent alarm is no XID more
        point = {"ts_ms": alarm["ts_ms"], "site": alarm["site"], "device": alarm["device"],
                 "device_type": alarm["device_type"]}
        self.publish(series, point, rule, lambda: series.rate.forecast(rule.limit), series.rate.describe())

    def publish(self, series: Series | XidSeries, point: dict, rule: Rule, forecast: Callable[[], Forecast | None],
                model: str) -> None:
        """A ``RulForecast`` (and a part's maintenance window) once the band opens within the horizon, then again
        every ``republish_days`` of event time."""
        if series.published_ms is not None and point["ts_ms"] - series.published_ms < self.republish_ms:
            return
        found = forecast()
        if found is None or found.earliest_ms - found.last_ms > self.horizon_ms:
            return
        record = forecast_record(point, rule, found, model)
        self.emit("forecasts.rul", record)
        series.published_ms = point["ts_ms"]
        self.stats["forecasts"] += 1
        if self.maintenance is not None and series.proposed is None:
            node = node_of(point["device"]) or ""
            action = propose(record, self.profiles.get(node, HourlyProfile()), self.maintenance, point["ts_ms"],
                             self.queues.of(point["site"]))
            if action is not None:
                self.emit("actions.proposed", action)
                series.proposed = action["action_id"]
                self.stats["windows"] += 1
