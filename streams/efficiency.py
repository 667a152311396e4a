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

State: the advisors live in memory and relearn after a restart (a day of warm-up before drift is
judged again; the setpoint and staging advice need no history). Advice is advice: nothing acts on it
but an operator, or the cooling loop's own guarded proposals.
"""

from __future__ import annotations

from opsloop.config.policy import CoolingLimits
from opsloop.config.settings import Settings
from opsloop.config.site import Site
from opsloop.models import cooling
from opsloop.models.efficiency import EfficiencyAdvisor, PlantSample, SampleAssembler, advice_record, price_now
from opsloop.schemas.codec import DecodeError
from opsloop.streams.processor import BatchProcessor


class EfficiencyProcessor(BatchProcessor):
    name = "efficiency"
    source = "telemetry.raw"

    def __init__(self, settings: Settings, site: Site, limits: CoolingLimits, **kwargs):
        super().__init__(settings, **kwargs)
        self.site, self.limits = site, limits
        self.rated_kw = {e["id"]: float(e["rated_kw"]) for e in (site.topology or {}).get("cooling", ())
                         if e.get("type") == "chiller" and e.get("rated_kw")}
        self.assembler = SampleAssembler()
        self.advisors: dict[str, EfficiencyAdvisor] = {}
        self.stats = {"points": 0, "samples": 0, "advice": 0, "proposed": 0, "dead_letters": 0, "commits": 0}
        self.proposing = settings.cooling_loop
        self.last_proposed: dict[str, int] = {}

    def handle(self, msg) -> None:
        try:
            point = self.codec.decode_as("TelemetryPoint", msg.value())
        except DecodeError as exc:
            self.dead_letter(msg, "decode", exc.reason)
            return
        for record in self.on_point(point):
            self.emit("actions.proposed" if "action_id" in record else "advice.efficiency", record)

    def on_point(self, point: dict) -> list[dict]:
        """The advice records ``point`` completes (most points complete nothing)."""
        self.stats["points"] += 1
        sample = self.assembler.add(point)
        if sample is None:
            return []
        self.stats["samples"] += 1
        advisor = self.advisors.setdefault(sample.site, EfficiencyAdvisor())
        prices = self.site.prices_by_hour if sample.site == self.site.id else None
        price = price_now(prices, self.limits.energy_price_per_kwh, sample.ts_ms)
        records = [advice_record(sample, a, price, advisor.config)
                   for a in advisor.observe(sample, self.limits, price, self.rated_kw)]
        self.stats["advice"] += len(records)
        if self.proposing:
            records += self.propose(sample)
        return records

    def propose(self, sample: PlantSample) -> list[dict]:
        """A ``cooling_setpoint`` Action for ``sample``, or nothing."""
        if sample.setpoint_c is None or not sample.inlet_c:
            return []
        waiting = sample.ts_ms - self.last_proposed.get(sample.site, -10**15) < self.limits.revert_timeout_s * 1000
        known = cooling.CoolingState(sample.setpoint_c, sample.inlet_c, sample.ts_ms, pending=waiting)
        proposal = cooling.propose(known, self.limits, sample.ts_ms)
        if proposal is None or waiting:  # a lowering waits too: the guard and sink are still on the last one
            return []
        self.last_proposed[sample.site] = sample.ts_ms
        self.stats["proposed"] += 1
        return [cooling.setpoint_action(sample.site, self.settings.bacnet_setpoint_object, sample.setpoint_c, proposal,
                                        self.limits, sample.ts_ms, proposer=self.name, inlet_c=sample.inlet_c)]
