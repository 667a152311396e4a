"""The efficiency agent: ``telemetry.raw`` → ``advice.efficiency``, where a site's cooling plant wastes energy.

Points are gathered into one plant sample per site and event time (``models.efficiency.SampleAssembler``);
each sample goes to the site's ``EfficiencyAdvisor`` (expected cooling and PUE learnt online, drift, a
setpoint far below what the inlets allow, over-staged chillers), and each piece of advice becomes an
``EfficiencyAdvice`` record with its reason code, sentence, kW and money a day at the tariff's price.

State: the advisors live in memory and relearn after a restart (a day of warm-up before drift is
judged again; the setpoint and staging advice need no history). Advice is advice: nothing acts on it
but an operator, or the cooling loop's own guarded proposals.
"""

from __future__ import annotations

from opsloop.config.policy import CoolingLimits
from opsloop.config.settings import Settings
from opsloop.config.site import Site
from opsloop.models.efficiency import EfficiencyAdvisor, SampleAssembler, advice_record, price_now
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
        self.stats = {"points": 0, "samples": 0, "advice": 0, "dead_letters": 0}

    def handle(self, msg) -> None:
        try:
            point = self.codec.decode_as("TelemetryPoint", msg.value())
        except DecodeError as exc:
            self.dead_letter(msg, "decode", exc.reason)
            return
        for record in self.on_point(point):
            self.emit("advice.efficiency", record)

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
        return records
