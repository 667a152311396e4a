"""`opsloop eval peaks`: every peak-shaving strategy on one battery model, scored per billing period.

Reads any ``timestamp,value`` CSV (the first column is the time, ISO 8601 or
Unix seconds; the value is ``--column`` or the first numeric column), scales it
to site kW, and puts it on a regular grid of billing intervals: series finer
than 15 minutes are averaged into 15-minute steps, coarser ones keep their step
(each step is then the average of the 15-minute intervals it covers); missing
steps are interpolated and counted. Demand charges bill the highest 15-minute
average import of each billing period, so the billed peak is the highest step of
the period: a calendar month (UTC) by default, as most tariffs bill; ``--billing
week`` or ``day`` score tariffs that bill so, and give many more periods to judge
a strategy by when the data spans only a few months.

Strategies: no control, reactive threshold, the opsloop planner (the peaks
agent's own loop, ``models.peak_loop``), and the perfect-foresight oracle; see
``models.peak_baselines``. Forecast MAPE at 1 h and 4 h is the planner's
forecaster over the scored period. Scoring starts after `--warmup-days` (default 7) of history that
every strategy may learn from, as a deployed site has; the battery idles then.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from opsloop.models.battery import IDLE
from opsloop.ops.evals.peak_baselines import (ReactiveThreshold, Simulation, no_control, oracle_controller, oracle_limits,
                                   simulate)
from opsloop.models.peak_forecast import PeakForecaster
from opsloop.models.peak_loop import LoopConfig, SitePeakLoop
from opsloop.models.peak_planner import PERIOD_DAYS, billing_period

BILLING_S = 900
WARMUP_DAYS = 7
AUTO_PEAK_SHARE = 0.9  # --scale auto: the series' maximum becomes this share of the site's import cap
STRATEGIES = ("none", "reactive", "planner", "oracle")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="CSV with a time column and a value column")
    p.add_argument("--column", help="value column (default: the first numeric column after the time)")
    p.add_argument("--scale", default="auto",
                   help="multiply values by this to get site kW; 'auto' (default) makes the maximum "
                        f"{AUTO_PEAK_SHARE * 100:.0f}%% of the site's grid import cap")
    p.add_argument("--site", type=Path, help="site file (default: OPSLOOP_TOPOLOGY, the demo site)")
    p.add_argument("--battery-kwh", type=float, help="battery capacity (default: the site's ESS)")
    p.add_argument("--pcs-kw", type=float, help="PCS charge and discharge limit (default: the site's)")
    p.add_argument("--soc", type=float, default=80.0, help="initial state of charge, %% (default 80)")
    p.add_argument("--warmup-days", type=float, default=WARMUP_DAYS,
                   help=f"days of history every strategy may learn from before scoring starts (default {WARMUP_DAYS})")
    p.add_argument("--reactive-percentile", type=float, default=95.0,
                   help="reactive baseline: T = this percentile of the previous 28 days' load (default 95)")
    p.add_argument("--billing", choices=tuple(PERIOD_DAYS),
                   help="billing period of the demand charge (default: the site's, else month)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--compare-forecasters", action="store_true",
                   help="also score River's HoltWinters and SNARIMAX against the planner's forecaster")
    p.add_argument("--levers", action="store_true",
                   help="the battery alone against the battery with the site file's flexible_load levers, priced "
                        "by the policy's levers section: billed peaks against the oracle's, and per lever kW shed, "
                        "hours engaged and cost")
    p.add_argument("--policy", type=Path, help="policy file for --levers (default: OPSLOOP_POLICY, the shipped one)")


def main(args: argparse.Namespace, settings=None) -> int:
    from opsloop.config.site import load_site

    site_file = args.site or (settings.topology if settings else None)
    if site_file is None:
        from opsloop.config.settings import Settings
        site_file = Settings.from_env().topology
    times, values, column = read_series(args.data, args.column)
    step_s, times, values, filled = regular_steps(times, values)
    config = LoopConfig.from_site(load_site(site_file), step_s=step_s, battery_kwh=args.battery_kwh, pcs_kw=args.pcs_kw)
    if args.billing:
        config = replace(config, billing_period=args.billing)
    cap = config.policy.import_cap_kw
    if args.scale == "auto":
        if not cap:
            raise ValueError(f"{site_file}: --scale auto needs site.grid_import_cap_kw; give --scale")
        scale = AUTO_PEAK_SHARE * cap / max(values)
    else:
        scale = float(args.scale)
    loads = [v * scale for v in values]
    if args.levers:
        return _levers(args, settings, site_file, config, times, loads, step_s, scale, column)
    report = evaluate(times, loads, step_s, config, args.soc, args.reactive_percentile, args.warmup_days)
    report["input"] = {"data": str(args.data), "column": column, "scale": scale, "step_s": step_s,
                       "steps": len(loads), "interpolated_steps": filled,
                       "first": _iso(times[0]), "last": _iso(times[-1])}
    if args.compare_forecasters:
        report["forecasters"] = compare_forecasters(times, loads, step_s)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _levers(args, settings, site_file, config, times, loads, step_s, scale, column) -> int:
    from opsloop.config.policy import load_policy
    from opsloop.config.site import load_site
    from opsloop.ops.evals import peak_levers

    policy_file = args.policy or (settings.policy if settings else None)
    if policy_file is None:
        from opsloop.config.assets import POLICY_FILE
        policy_file = POLICY_FILE
    costs = load_policy(policy_file).levers
    if costs is None:
        raise ValueError(f"{policy_file}: --levers needs the policy's levers section (policy version 4)")
    config = replace(config, **{k: getattr(LoopConfig.from_site(load_site(site_file), lever_costs=costs), k)
                                for k in ("levers", "lever_costs", "flexible_load")})
    report = peak_levers.evaluate_levers(times, loads, step_s, config, args.soc, args.warmup_days, planner_controller)
    report["input"] = {"data": str(args.data), "column": column, "scale": scale, "step_s": step_s,
                       "site": str(site_file), "policy": str(policy_file),
                       "battery_kwh": config.battery.capacity_kwh, "pcs_kw": config.battery.pcs_discharge_kw}
    print(json.dumps(report, indent=2) if args.json else peak_levers.render(report))
    return 0


def read_series(path: Path, column: str | None = None) -> tuple[list[int], list[float], str]:
    """(times in ms, values, the value column's name); rows with an empty or non-numeric value are skipped."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if not header or len(header) < 2:
            raise ValueError(f"{path}: expected a header with a time column and a value column")
        body = list(rows)
    if column is None:
        column = next((h for i, h in enumerate(header[1:], 1) if any(_number(r[i]) is not None for r in body[:50]
                                                                    if len(r) > i)), None)
        if column is None:
            raise ValueError(f"{path}: no numeric column after {header[0]!r}")
    if column not in header:
        raise ValueError(f"{path}: no column {column!r}; columns: {', '.join(header)}")
    i = header.index(column)
    times, values = [], []
    for n, row in enumerate(body, 2):
        value = _number(row[i]) if len(row) > i else None
        if value is None:
            continue
        try:
            times.append(_time_ms(row[0]))
        except ValueError:
            raise ValueError(f"{path}:{n}: cannot read the time {row[0]!r} (ISO 8601 or Unix seconds)") from None
        values.append(value)
    if len(values) < 2:
        raise ValueError(f"{path}: fewer than 2 numeric values in {column!r}")
    order = sorted(range(len(times)), key=times.__getitem__)
    return [times[k] for k in order], [values[k] for k in order], column


def regular_steps(times: list[int], values: list[float]) -> tuple[int, list[int], list[float], int]:
    """(step_s, step start times, step means, steps interpolated) on a grid of max(15 min, the data's step)."""
    gaps = sorted(b - a for a, b in zip(times, times[1:]) if b > a)
    native_s = max(1, round(gaps[len(gaps) // 2] / 1000)) if gaps else BILLING_S
    step_s = max(BILLING_S, native_s)
    step_ms = step_s * 1000
    sums: dict[int, list[float]] = {}
    for ts, v in zip(times, values):
        acc = sums.setdefault(ts // step_ms, [0.0, 0])
        acc[0] += v
        acc[1] += 1
    first, last = min(sums), max(sums)
    known = {k: s / n for k, (s, n) in sums.items()}
    out, filled, previous = [], 0, None
    for k in range(first, last + 1):
        if k in known:
            out.append(known[k])
            previous = k
            continue
        nxt = next(j for j in range(k + 1, last + 1) if j in known)
        w = (k - previous) / (nxt - previous)
        out.append((1 - w) * known[previous] + w * known[nxt])
        filled += 1
    return step_s, [k * step_ms for k in range(first, last + 1)], out, filled


def evaluate(times: list[int], loads: list[float], step_s: int, config: LoopConfig, soc_pct: float,
             reactive_percentile: float = 95.0, warmup_days: float = WARMUP_DAYS) -> dict:
    """Scores every strategy after ``warmup_days`` of history, which the causal strategies learn from."""
    battery = config.battery
    energy = battery.energy_kwh(soc_pct)
    s0 = next((i for i, ts in enumerate(times) if ts >= times[0] + warmup_days * 86_400_000), len(times))
    if len(times) - s0 < 2:
        raise ValueError(f"the data spans less than the {warmup_days:g} days of warm-up plus 2 steps")
    days = [ts // 86_400_000 for ts in times]
    reactive = ReactiveThreshold(loads, days, step_s, battery, percentile=reactive_percentile)
    history, times, loads = (times[:s0], loads[:s0]), times[s0:], loads[s0:]
    periods = [billing_period(ts, config.billing_period)[0] for ts in times]
    limits = oracle_limits(loads, periods, step_s, battery, energy)
    planner, decisions = planner_controller(times, loads, config, history)
    sims = {"none": simulate(loads, step_s, battery, energy, no_control),
            "reactive": simulate(loads, step_s, battery, energy, lambda t, e, sim: reactive(t + s0, e, sim)),
            "planner": simulate(loads, step_s, battery, energy, planner),
            "oracle": simulate(loads, step_s, battery, energy, oracle_controller(limits, periods, step_s, battery))}
    report = {"battery": {"capacity_kwh": battery.capacity_kwh, "pcs_kw": battery.pcs_discharge_kw,
                          "round_trip_efficiency": battery.round_trip_efficiency,
                          "reserve_pct": battery.reserve_soc_pct,
                          "soh_pct": battery.soh_pct, "initial_soc_pct": soc_pct},
              "scored_from": _iso(times[0]), "warmup_days": warmup_days,
              "billing_period": config.billing_period, "periods": [],
              "forecast": forecast_mape(times, loads, step_s, decisions),
              "reactive_threshold": f"{reactive_percentile:g}th percentile of the previous 28 days' load, "
                                    "re-set daily (no control on the first day)"}
    step_h = step_s / 3600
    for period in dict.fromkeys(periods):
        idx = [i for i, p in enumerate(periods) if p == period]
        row = {"period": period, "days": round(len(idx) * step_h / 24, 1), "strategies": {}}
        base = max(sims["none"].grid_kw[i] for i in idx)
        best = max(sims["oracle"].grid_kw[i] for i in idx)
        for name in STRATEGIES:
            sim = sims[name]
            peak = max(sim.grid_kw[i] for i in idx)
            discharged = sum(max(0.0, sim.power_kw[i]) for i in idx) * step_h
            row["strategies"][name] = {
                "billed_peak_kw": round(peak, 1), "reduction_kw": round(base - peak, 1),
                "share_of_oracle": round((base - peak) / (base - best), 4) if base - best > 1e-6 else None,
                "discharged_kwh": round(discharged, 1),
                "cycles": round(discharged / battery.eta / battery.full_kwh, 2),
                "violations": sum(sim.violations[i] for i in idx)}
        relocations = [a for i in idx if decisions[i] for a in decisions[i].actions if a["kind"] == "slurm_hold"] \
            if decisions else []
        modes = [decisions[i - 1].mode for i in idx if i > 0 and decisions and decisions[i - 1]]
        row["strategies"]["planner"]["modes"] = {m: modes.count(m) for m in dict.fromkeys(modes)}
        row["strategies"]["planner"]["floor_steps"] = sum(  # forecast steps whose target the reactive floor set
            1 for i in idx if i > 0 and decisions and decisions[i - 1]
            and "reactive_floor_kw" in decisions[i - 1].plan.notes)
        row["strategies"]["planner"]["decided_by"] = max(row["strategies"]["planner"]["modes"],
                                                         key=row["strategies"]["planner"]["modes"].get, default="forecast")
        row["strategies"]["planner"]["relocation_requests"] = len(relocations)
        row["strategies"]["planner"]["max_shed_kw"] = max((a["shed_kw"] for a in relocations), default=0.0)
        report["periods"].append(row)
    shares = sorted(r["strategies"]["planner"]["share_of_oracle"] for r in report["periods"]
                    if r["strategies"]["planner"]["share_of_oracle"] is not None)
    report["targets"] = {
        "planner_min_share_of_oracle": shares[0] if shares else None,
        "planner_mean_share_of_oracle": round(sum(shares) / len(shares), 4) if shares else None,
        "planner_periods_below_90pct": sum(s < 0.9 for s in shares),
        "planner_violations": sum(r["strategies"]["planner"]["violations"] for r in report["periods"]),
        "periods_decided_by": {m: sum(r["strategies"]["planner"]["decided_by"] == m for r in report["periods"])
                               for m in ("forecast", "reactive")},
        "planner_beats_reactive_every_period": all(
            r["strategies"]["planner"]["billed_peak_kw"] <= r["strategies"]["reactive"]["billed_peak_kw"]
            for r in report["periods"])}
    return report


def planner_controller(times: list[int], loads: list[float], config: LoopConfig, history=((), ()),
                       queue_at: Callable[[int], list[dict]] | None = None,
                       weather_at: Callable[[int], tuple[int, list]] | None = None):
    """The peaks loop as a controller: after step t-1 it learns the measured step and plans step t.

    ``history`` (times, loads) is learned by the forecaster first (the warm-up). ``queue_at(ts_ms)``, when given,
    is the Slurm queue snapshot (``SlurmQueue`` records) the loop is handed as each step closes at ``ts_ms``;
    ``weather_at(ts_ms)`` the latest outside-temperature forecast then (its issue time and (valid time, degC)
    points).
    """
    loop = SitePeakLoop(config)
    step_ms = config.step_s * 1000

    def hints(ts_ms: int) -> None:
        if queue_at is not None:
            loop.on_queue(queue_at(ts_ms))
        if weather_at is not None:
            loop.on_weather(*weather_at(ts_ms))

    for ts, load in zip(*history):  # the warm-up, as the offline reactive baseline sees it too
        hints(ts + step_ms)
        loop.warm_up(ts, load)
    decisions: list = [None] * len(loads)

    def controller(t: int, energy_kwh: float, sim: Simulation):
        soc = config.battery.soc_pct(energy_kwh)
        if t == 0:  # the first scored step is planned from the last step of history, which is not billed
            if not history[0]:
                return IDLE
            return loop.on_step(history[0][-1], history[1][-1], history[1][-1], soc, None, billed=False).plan.command
        hints(times[t - 1] + step_ms)
        decision = loop.on_step(times[t - 1], loads[t - 1], sim.grid_kw[t - 1], soc, None)
        decisions[t - 1] = decision
        return decision.plan.command

    return controller, decisions


def forecast_mape(times: list[int], loads: list[float], step_s: int, decisions: list) -> dict:
    index = {ts: i for i, ts in enumerate(times)}
    start = times[0]
    out = {}
    for hours in (1, 4):
        h = max(1, round(hours * 3600 / step_s))
        errors = []
        for d in decisions:
            if d is None or d.step_start_ms < start:
                continue
            points = d.forecast["points"]
            if len(points) >= h and (i := index.get(points[h - 1]["ts_ms"])) is not None and abs(loads[i]) > 1e-9:
                errors.append(abs(points[h - 1]["kw"] - loads[i]) / abs(loads[i]))
        out[f"mape_{hours}h_pct"] = round(100 * sum(errors) / len(errors), 2) if errors else None
    return out


def compare_forecasters(times: list[int], loads: list[float], step_s: int) -> dict:
    """1 h and 4 h MAPE (after the warm-up) of the planner's forecaster and two River time-series models."""
    from river import time_series

    day = max(1, 86_400 // step_s)
    h1, h4 = max(1, round(3600 / step_s)), max(1, round(4 * 3600 / step_s))
    # Each: the forecaster and the x it learns with (ours reads the step's time; to SNARIMAX an x would be
    # exogenous features, so River's models learn the bare series).
    models = {
        "lag regression (opsloop)": (PeakForecaster(step_s=step_s, season_steps=day), lambda ts: {"ts_ms": ts}),
        "HoltWinters additive, daily season": (time_series.HoltWinters(alpha=0.3, beta=0.01, gamma=0.3,
                                                                       seasonality=day), lambda ts: None),
        "SNARIMAX(2,0,0)(1,1,0) daily": (time_series.SNARIMAX(p=2, d=0, q=0, m=day, sp=1, sd=1), lambda ts: None),
    }
    start = times[0] + WARMUP_DAYS * 86_400_000
    out = {}
    for name, (model, x_of) in models.items():
        errors = {h1: [], h4: []}
        for i, (ts, y) in enumerate(zip(times, loads)):
            if ts >= start and i + h4 <= len(loads):
                predicted = model.forecast(h4)
                for h in (h1, h4):
                    if len(predicted) >= h and abs(loads[i + h - 1]) > 1e-9:
                        errors[h].append(abs(predicted[h - 1] - loads[i + h - 1]) / abs(loads[i + h - 1]))
            model.learn_one(y, x_of(ts))
        out[name] = {f"mape_{k}h_pct": round(100 * sum(errors[h]) / len(errors[h]), 2) if errors[h] else None
                     for k, h in (("1", h1), ("4", h4))}
    return out


def render(report: dict) -> str:
    b, i = report["battery"], report["input"]
    lines = [f"opsloop eval peaks: judged on {i['data']} ({i['column']} x {i['scale']:g} = site kW), {i['steps']:,} steps of "
             f"{i['step_s'] // 60} min, {i['first']} .. {i['last']} UTC"
             + (f", {i['interpolated_steps']} interpolated" if i["interpolated_steps"] else ""),
             f"battery {b['capacity_kwh']:,.0f} kWh / {b['pcs_kw']:,.0f} kW, round trip {b['round_trip_efficiency']:.0%}, "
             f"reserve {b['reserve_pct']:g}%, SoH {b['soh_pct']:g}%, starting at {b['initial_soc_pct']:g}% SoC; "
             f"reactive T = {report['reactive_threshold']}",
             f"scored from {report['scored_from']} UTC: the first {report['warmup_days']:g} days are history that "
             "every strategy may learn from (the battery idles), as a deployed site has", ""]
    width = max(8, *(len(r["period"]) for r in report["periods"]))
    lines.append(f"{report['billing_period']:<{width}} {'strategy':<9} {'billed peak kW':>15} {'reduction kW':>13} {'of oracle':>10} "
                 f"{'discharged MWh':>15} {'cycles':>7} {'violations':>11}")
    for row in report["periods"]:
        for name in STRATEGIES:
            s = row["strategies"][name]
            share = "-" if s["share_of_oracle"] is None else f"{100 * s['share_of_oracle']:.1f}%"
            extra = ""
            if name == "planner":
                extra = f"  decided by: {', '.join(f'{m} {n} steps' for m, n in s['modes'].items()) or '-'}"
                if s.get("floor_steps"):
                    extra += f" (the reactive floor set the forecast target in {s['floor_steps']})"
            if name == "planner" and s["relocation_requests"]:
                extra += f" ({s['relocation_requests']} relocation requests, up to {s['max_shed_kw']:,.0f} kW)"
            lines.append(f"{row['period'] if name == 'none' else '':<{width}} {name:<9} {s['billed_peak_kw']:>15,.0f} "
                         f"{s['reduction_kw']:>13,.0f} {share:>10} {s['discharged_kwh'] / 1000:>15,.1f} "
                         f"{s['cycles']:>7.1f} {s['violations']:>11}{extra}")
    f, t = report["forecast"], report["targets"]
    lines += ["", f"forecast MAPE (planner's forecaster, scored period): "
                  f"1 h {_pct(f['mape_1h_pct'])}, 4 h {_pct(f['mape_4h_pct'])}",
              _summary(report)]
    for name, scores in report.get("forecasters", {}).items():
        lines.append(f"  forecaster {name:<38} MAPE 1 h {_pct(scores['mape_1h_pct'])}, 4 h {_pct(scores['mape_4h_pct'])}")
    return "\n".join(lines)


def _summary(report: dict) -> str:
    t, period = report["targets"], report["billing_period"]
    worst, mean = t["planner_min_share_of_oracle"], t["planner_mean_share_of_oracle"]
    n = len(report["periods"])
    spread = "" if n < 2 or mean is None else (f", mean {_pct(100 * mean)}, {t['planner_periods_below_90pct']} of {n} "
                                               f"{period}s under 90%")
    return (f"planner: worst {period} {_pct(None if worst is None else 100 * worst)} of the oracle's reduction "
            f"(target >= 90%){spread}, {t['planner_violations']} limit violations, "
            f"{'beats' if t['planner_beats_reactive_every_period'] else 'does NOT beat'} reactive in every {period}; "
            f"decided by the forecast plan in {t['periods_decided_by']['forecast']} {period}s, by the reactive rule "
            f"in {t['periods_decided_by']['reactive']} (measured skill, models.peak_modes)")


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _time_ms(text: str) -> int:
    text = text.strip()
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int(t.timestamp() * 1000)


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="opsloop eval peaks")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
