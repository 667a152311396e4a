"""`opsloop eval peaks --levers`: the battery alone against the battery with the site's flexible-load levers.

The same replayed load and the same peaks loop (``models.peak_loop``), twice: once with
the battery alone, once with the levers the site file's ``flexible_load`` declares,
priced by the policy's ``levers`` section (``models.levers``). With levers, each step's
load falls by the kW the loop engaged for it, never more than the lever could give at
the load that came (its share of it, in whole nodes or jobs). Both are scored per billing
period against the battery's perfect-foresight oracle (``ops.evals.peak_baselines``):
how much closer to the oracle's billed peak the levers bring the planner
(``closer``: 1 - gap with levers / gap alone), and, per lever, the kW it shed, the hours
it was engaged and what it cost (battery: wear per kWh discharged).
"""

from __future__ import annotations

from dataclasses import replace

from opsloop.models.battery import IDLE
from opsloop.models.peak_loop import LoopConfig
from opsloop.models.peak_planner import PERIOD_DAYS, billing_period
from opsloop.ops.evals.peak_baselines import Simulation, oracle_controller, oracle_limits, simulate

LEVERS = "planner+levers"


def simulate_shed(loads, step_s, battery, energy_kwh, controller, shed) -> Simulation:
    """``simulate`` where step ``t``'s load is reduced by ``shed[t]``, which the controller fills for ``t``."""
    return simulate(loads, step_s, battery, energy_kwh, controller, shed)


def levers_controller(times, loads, config: LoopConfig, history, planner_controller):
    """The peaks loop with levers as a controller; ``shed[t]`` (lever -> kW) is what step ``t`` sheds.

    ``planner_controller`` is ``ops.evals.peaks.planner_controller`` (passed in: that module calls this one).
    """
    shed: list[dict] = [{} for _ in loads]
    inner, decisions = planner_controller(times, loads, config, history)
    by_kind = {lv.kind: lv for lv in config.levers}

    def controller(t: int, energy_kwh: float, sim: Simulation):
        command = inner(t, energy_kwh, sim)  # it learns loads[t - 1] and bills the import that came
        decision = decisions[t - 1] if t > 0 else None
        if decision is not None and decision.levers is not None:
            for e in decision.levers.mix.engagements:
                if e.kw and e.kw[0] > 0:
                    shed[t][e.kind] = min(e.kw[0], by_kind[e.kind].cap_kw(loads[t]))
        return command

    return controller, decisions, shed


def evaluate_levers(times, loads, step_s, config: LoopConfig, soc_pct: float, warmup_days: float,
                    planner_controller) -> dict:
    """Both runs scored per period; ``planner_controller``: ``ops.evals.peaks.planner_controller``."""
    if not config.levers:
        raise ValueError("no levers: the site file needs a flexible_load block and the policy a levers section")
    battery = config.battery
    energy = battery.energy_kwh(soc_pct)
    s0 = next((i for i, ts in enumerate(times) if ts >= times[0] + warmup_days * 86_400_000), len(times))
    history, times, loads = (times[:s0], loads[:s0]), times[s0:], loads[s0:]
    periods = [billing_period(ts, config.billing_period)[0] for ts in times]
    alone_config = replace(config, levers=())
    alone, _ = planner_controller(times, loads, alone_config, history)
    with_levers, decisions, shed = levers_controller(times, loads, config, history, planner_controller)
    limits = oracle_limits(loads, periods, step_s, battery, energy)
    sims = {"none": simulate(loads, step_s, battery, energy, lambda t, e, s: IDLE),
            "planner": simulate(loads, step_s, battery, energy, alone),
            LEVERS: simulate_shed(loads, step_s, battery, energy, with_levers, shed),
            "oracle": simulate(loads, step_s, battery, energy, oracle_controller(limits, periods, step_s, battery))}
    step_h = step_s / 3600
    costs = {lv.kind: lv.cost_per_kwh for lv in config.levers}
    wear = config.lever_costs.battery_wear_per_kwh
    rows = []
    for period in dict.fromkeys(periods):
        idx = [i for i, p in enumerate(periods) if p == period]
        peaks = {name: round(max(sim.grid_kw[i] for i in idx), 1) for name, sim in sims.items()}
        gap_alone, gap_levers = peaks["planner"] - peaks["oracle"], peaks[LEVERS] - peaks["oracle"]
        by_lever = {}
        for kind in costs:
            kw = [shed[i].get(kind, 0.0) for i in idx]
            kwh = sum(kw) * step_h
            by_lever[kind] = {"max_kw": round(max(kw), 1), "kwh": round(kwh, 1),
                              "hours": round(sum(k > 0 for k in kw) * step_h, 2), "cost": round(kwh * costs[kind], 1)}
        for name in ("planner", LEVERS):
            discharged = sum(max(0.0, sims[name].power_kw[i]) for i in idx) * step_h
            by_lever.setdefault("battery", {})[name] = {
                "kwh": round(discharged, 1), "hours": round(sum(sims[name].power_kw[i] > 1e-6 for i in idx) * step_h, 2),
                "max_kw": round(max(max(0.0, sims[name].power_kw[i]) for i in idx), 1),
                "cost": round(discharged * wear, 1)}
        rows.append({"period": period, "billed_peak_kw": peaks, "gap_alone_kw": round(gap_alone, 1),
                     "gap_levers_kw": round(gap_levers, 1),
                     "closer": round(1 - gap_levers / gap_alone, 4) if gap_alone > 1e-6 else None,
                     "levers": by_lever,
                     "violations": {n: sum(sims[n].violations[i] for i in idx) for n in sims}})
    per_kw = config.lever_costs.demand_charge_per_kw_month * PERIOD_DAYS[config.billing_period] / PERIOD_DAYS["month"]
    for r in rows:  # what the levers changed, in the policy's currency: demand charge saved, lever and wear costs
        p, b = r["billed_peak_kw"], r["levers"]["battery"]
        r["demand_charge_saved"] = round((p["planner"] - p[LEVERS]) * per_kw, 1)
        r["lever_cost"] = round(sum(v["cost"] for k, v in r["levers"].items() if k != "battery")
                                + b[LEVERS]["cost"] - b["planner"]["cost"], 1)
    total_alone = sum(r["gap_alone_kw"] for r in rows)
    total_levers = sum(r["gap_levers_kw"] for r in rows)
    return {"billing_period": config.billing_period, "periods": rows,
            "levers": [{"kind": lv.kind, "cost_per_kwh": round(lv.cost_per_kwh, 3), "share": lv.share,
                        "granule_kw": lv.granule_kw, "max_hours_per_day": lv.max_hours_per_day}
                       for lv in sorted(config.levers, key=lambda lv: lv.cost_per_kwh)],
            "battery_wear_per_kwh": wear,
            "summary": {"gap_alone_kw": round(total_alone, 1), "gap_levers_kw": round(total_levers, 1),
                        "closer": round(1 - total_levers / total_alone, 4) if total_alone > 1e-6 else None,
                        "worst_period_closer": min((r["closer"] for r in rows if r["closer"] is not None),
                                                   default=None),
                        "demand_charge_saved": round(sum(r["demand_charge_saved"] for r in rows), 1),
                        "lever_cost": round(sum(r["lever_cost"] for r in rows), 1)}}


def render(report: dict) -> str:
    lines = [f"battery alone vs battery + levers (merit order by cost per kWh; battery wear "
             f"{report['battery_wear_per_kwh']:g} per kWh):",
             "  levers: " + ", ".join(f"{lv['kind']} {lv['cost_per_kwh']:.2f}/kWh, {100 * lv['share']:.1f}% of load"
                                      + (f" in {lv['granule_kw']:g} kW units" if lv["granule_kw"] else "")
                                      + f", {lv['max_hours_per_day']:g} h/day" for lv in report["levers"]), ""]
    period = report["billing_period"]
    lines.append(f"{period:<9} {'none':>9} {'alone':>9} {'+levers':>9} {'oracle':>9} {'gap alone':>10} "
                 f"{'gap +lev':>9} {'closer':>8} {'saved':>8} {'cost':>8}   (billed peak kW; demand charge "
                 f"saved, lever cost incl. extra wear)")
    for r in report["periods"]:
        p = r["billed_peak_kw"]
        closer = "-" if r["closer"] is None else f"{100 * r['closer']:.1f}%"
        lines.append(f"{r['period']:<9} {p['none']:>9,.0f} {p['planner']:>9,.0f} {p[LEVERS]:>9,.0f} {p['oracle']:>9,.0f} "
                     f"{r['gap_alone_kw']:>10,.0f} {r['gap_levers_kw']:>9,.0f} {closer:>8} "
                     f"{r['demand_charge_saved']:>8,.0f} {r['lever_cost']:>8,.0f}")
    lines += ["", f"{period:<9} {'lever':<16} {'max kW shed':>12} {'MWh shed':>9} {'hours':>7} {'cost':>8}"]
    for r in report["periods"]:
        first = True
        for kind, v in r["levers"].items():
            if kind == "battery":
                for name, b in v.items():
                    label = "battery alone" if name == "planner" else "battery +lev"
                    lines.append(f"{r['period'] if first else '':<9} {label:<16} {b['max_kw']:>12,.0f} "
                                 f"{b['kwh'] / 1000:>9,.1f} {b['hours']:>7,.1f} {b['cost']:>8,.0f}")
                    first = False
                continue
            lines.append(f"{r['period'] if first else '':<9} {kind:<16} {v['max_kw']:>12,.0f} {v['kwh'] / 1000:>9,.2f} "
                         f"{v['hours']:>7,.1f} {v['cost']:>8,.0f}")
            first = False
    s = report["summary"]
    closer = "-" if s["closer"] is None else f"{100 * s['closer']:.1f}%"
    worst = "-" if s["worst_period_closer"] is None else f"{100 * s['worst_period_closer']:.1f}%"
    lines += ["", f"levers: billed peaks {closer} closer to the oracle's over all {period}s (gap "
                  f"{s['gap_alone_kw']:,.0f} -> {s['gap_levers_kw']:,.0f} kW; target >= 10%), worst {period} {worst}; "
                  f"demand charge saved {s['demand_charge_saved']:,.0f} for {s['lever_cost']:,.0f} in lever costs and "
                  f"extra battery wear"]
    return "\n".join(lines)
