"""The efficiency agent: ``telemetry.raw`` → ``advice.efficiency``, where a site's cooling plant wastes energy.

Points are gathered into one plant sample per site and event time (``models.efficiency.SampleAssembler``);
each sample goes to the site's ``EfficiencyAdvisor`` (expected cooling and PUE learnt online, drift, a
setpoint far below what the inlets allow, over-staged chillers), and each piece of advice becomes an
``EfficiencyAdvice`` record with its reason code, sentence, kW and money a day at the tariff's price.

With ``OPSLOOP_COOLING_LOOP`` set it is also the cooling loop's proposer: each sample that carries the
setpoint and the inlets goes to ``models.cooling.propose``, and a proposal becomes a ``cooling_setpoint``
Action on ``actions.proposed`` carrying the readings it was made from, for the guard (which checks them
against the policy and its own approvals of the hour) and then the cooling sink. One proposal per site
per ``revert_timeout_s`` at most: by then the last one was verified, reverted or lapsed.

State and restarts are the anomaly and rul agents' (streams/series.py): each site's plant (``SitePlant``: the
sample it is assembling, its advisor with the learnt model and drift, when each reason was last advised, its
last proposal) is checkpointed to the partition of a compacted changelog its points come from, with the offset
after the last point it took, before the source offsets are committed. A restart restores it, so drift is
judged at once rather than after another day of warm-up, and a replayed point is skipped; a plant saved under
another advisor configuration starts afresh. Advice is advice: nothing acts on it but an operator, or the
cooling loop's own guarded proposals.
"""

from __future__ import annotations

from typing import Callable

from opsloop.config.policy import CoolingLimits
from opsloop.config.settings import Settings
from opsloop.config.site import Site
from opsloop.models import cooling
from opsloop.models.efficiency import EfficiencyAdvisor, PlantSample, SampleAssembler, advice_record, price_now
from opsloop.streams.series import SeriesProcessor


class SitePlant:
    """One site's plant as the agent knows it: the sample being assembled, the advisor, the last proposal's
    event time, and the offset after the last point it took (``upto``, streams/series.py)."""

    def __init__(self, advisor: EfficiencyAdvisor, upto: int = -1):
        self.assembler = SampleAssembler()
        self.advisor = advisor
        self.last_proposed: int | None = None
        self.upto = upto


class EfficiencyProcessor(SeriesProcessor):
    name = "efficiency"

    def __init__(self, settings: Settings, site: Site, limits: CoolingLimits,
                 new_advisor: Callable[[], EfficiencyAdvisor] = EfficiencyAdvisor, **kwargs):
        super().__init__(settings, **kwargs)
        self.site, self.limits = site, limits
        self.new_advisor = new_advisor
        self.rated_kw = {e["id"]: float(e["rated_kw"]) for e in (site.topology or {}).get("cooling", ())
                         if e.get("type") == "chiller" and e.get("rated_kw")}
        self.stats = {"points": 0, "samples": 0, "advice": 0, "proposed": 0, "dead_letters": 0,
                      "replayed_skipped": 0, "checkpoints": 0}
        self.proposing = settings.cooling_loop

    def current(self, key: str, plant: SitePlant) -> bool:
        """A restored plant is kept only under the advisor configuration this agent runs."""
        return plant.advisor.config == self.new_advisor().config

    def new_plant(self) -> SitePlant:
        return SitePlant(self.new_advisor())

    def handle(self, msg) -> None:
        point = self.decoded(msg, "TelemetryPoint")
        if point is None:
            return
        for record in self.on_point(point, msg.partition(), msg.offset()):
            self.emit("actions.proposed" if "action_id" in record else "advice.efficiency", record)

    def on_point(self, point: dict, partition: int = 0, offset: int | None = None) -> list[dict]:
        """The advice records ``point`` completes (most points complete nothing). ``offset``: its place in
        ``partition`` of the source, so a point taken before a restart is skipped (None: not from a topic)."""
        self.stats["points"] += 1
        if point["metric"] not in SampleAssembler.METRICS:
            return []  # not a plant reading: no state changes, nothing to skip on a replay
        if offset is None:
            plant = self.series.setdefault((self.topic, partition), {}).setdefault(point["site"], self.new_plant())
        else:
            plant = self.learnt(partition, point["site"], offset, self.new_plant)
            if plant is None:
                return []
        sample = plant.assembler.add(point)
        if sample is None:
            return []
        self.stats["samples"] += 1
        advisor = plant.advisor
        prices = self.site.prices_by_hour if sample.site == self.site.id else None
        price = price_now(prices, self.limits.energy_price_per_kwh, sample.ts_ms)
        records = [advice_record(sample, a, price, advisor.config)
                   for a in advisor.observe(sample, self.limits, price, self.rated_kw)]
        self.stats["advice"] += len(records)
        if self.proposing:
            records += self.propose(sample, plant)
        return records

    def propose(self, sample: PlantSample, plant: SitePlant) -> list[dict]:
        """A ``cooling_setpoint`` Action for ``sample``, or nothing."""
        if sample.setpoint_c is None or not sample.inlet_c:
            return []
        last = plant.last_proposed if plant.last_proposed is not None else -10**15
        waiting = sample.ts_ms - last < self.limits.revert_timeout_s * 1000
        known = cooling.CoolingState(sample.setpoint_c, sample.inlet_c, sample.ts_ms, pending=waiting)
        proposal = cooling.propose(known, self.limits, sample.ts_ms)
        if proposal is None or waiting:  # a lowering waits too: the guard and sink are still on the last one
            return []
        plant.last_proposed = sample.ts_ms
        self.stats["proposed"] += 1
        return [cooling.setpoint_action(sample.site, self.settings.bacnet_setpoint_object, sample.setpoint_c, proposal,
                                        self.limits, sample.ts_ms, proposer=self.name, inlet_c=sample.inlet_c)]
