"""The peaks part of `opsloop demo`: run the peaks processor on the rolled-up demo site and price its plan.

The replayed ESS is idle (a recording has no battery in it), so the billed peak
"with opsloop" is the same planner run in closed loop with the battery model on
the same steps (``ops.evals.peaks``), next to no control and the oracle.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from opsloop.config.settings import Settings
from opsloop.config.site import Site

SAFETY_NET_S = 300.0


def run_peaks(settings: Settings, site: Site, snapshots: int) -> dict:
    """Run the peaks processor until it has decided every closed step; returns what it did and the pricing."""
    from opsloop.ops.evals.peaks import evaluate
    from opsloop.models.peak_loop import LoopConfig
    from opsloop.streams.peaks import PeaksProcessor

    decisions: list = []
    stop = threading.Event()
    expected = snapshots - 1  # the last step stays open: no later snapshot closes it

    def observe(batch, events) -> None:
        decisions.extend(batch)
        if len(decisions) >= expected:
            stop.set()

    timer = threading.Timer(SAFETY_NET_S, stop.set)
    timer.start()
    t0 = time.monotonic()
    try:
        PeaksProcessor(settings.as_principal("peaks"), site, observer=observe).run(stop)
    finally:
        timer.cancel()
    wall = time.monotonic() - t0
    kinds = Counter(a["kind"] for d in decisions for a in d.actions)
    config = LoopConfig.from_site(site, step_s=settings.peaks_step_s)
    report = evaluate([d.step_start_ms for d in decisions], [d.load_kw for d in decisions], settings.peaks_step_s,
                      config, soc_pct=80.0, warmup_days=1)
    periods = report["periods"]
    billed = {name: max(p["strategies"][name]["billed_peak_kw"] for p in periods) for name in ("none", "planner", "oracle")}
    return {"decisions": len(decisions), "kinds": kinds, "wall_s": wall, "billed": billed, "report": report,
            "battery": config.battery}


def summary_lines(result: dict) -> list[str]:
    k, b, r = result["kinds"], result["billed"], result["report"]
    battery = result["battery"]
    reduction = b["none"] - b["planner"]
    best = b["none"] - b["oracle"]
    return [
        f"  peaks    {result['decisions']:,} planning steps -> {result['decisions']:,} forecasts, "
        f"{sum(k.values()):,} proposed actions ({k['pcs_discharge']} discharge, {k['pcs_charge']} charge, "
        f"{k['pcs_idle']} idle, {k['slurm_hold']} job relocation) in {result['wall_s']:.1f} s",
        f"  billing  billed peak from {r['scored_from']} UTC (the first day is forecaster history): "
        f"without opsloop {b['none']:,.0f} kW, with opsloop {b['planner']:,.0f} kW "
        f"(-{reduction:,.0f} kW; perfect foresight -{best:,.0f} kW)",
        f"           battery {battery.capacity_kwh / 1000:g} MWh / {battery.pcs_discharge_kw / 1000:g} MW "
        f"following the planner, simulated (the replayed ESS is idle); forecast MAPE 1 h "
        f"{r['forecast']['mape_1h_pct']}%, 4 h {r['forecast']['mape_4h_pct']}%",
    ]
