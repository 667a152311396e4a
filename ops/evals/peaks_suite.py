"""`opsloop eval peaks-suite`: the planner against the reactive rule and the oracle on every curve we have.

Every curve (``ops.evals.peak_curves``: Taylor, NAB series with a daily shape,
BDEW standard profiles with holidays) is scaled to the site (its maximum at 90%
of the import cap), scored with weekly and with monthly billing by ``peaks.evaluate``
(the same code as ``opsloop eval peaks``), and its forecaster is scored against a
seasonal-naive forecast (MASE: the forecaster's mean absolute error over the
seasonal-naive one's, same steps, at 1 h, 4 h and 24 h; under 1 beats it). On a perfectly
periodic curve seasonal naive is exact and MASE has no value: the report gives the forecaster's
own MAE as a share of the curve's mean load there, and counts the horizon as a tie when that
share is within ``NAIVE_EXACT_TIE`` (no forecaster beats an exact one), never as a silent pass or failure.

Per curve it reports what the targets ask: the share of weekly periods where the
planner beats or ties reactive, whether it does in every month, both mean shares
of the oracle's reduction, violations. One configuration is used everywhere
(the site's); ``--leave-one-out`` takes this command's JSON reports for a few
candidate configurations (e.g. ``--skill-periods 0, 2, 4``), picks for each curve the
candidate best on all the *other* curves and reports its figures on the one left
out: an estimate of what to expect on curves never seen.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

from opsloop.models.peak_forecast import PeakForecaster
from opsloop.models.peak_loop import LoopConfig
from opsloop.ops.evals import peak_curves
from opsloop.ops.evals.peaks import AUTO_PEAK_SHARE, evaluate, planner_controller

TIE_KW = 0.5  # billed peaks this close count as a tie (the oracle's bisection tolerance)
SHORT_WARMUP_DAYS = 4  # curves under four weeks long learn from 4 days instead of 7
NAIVE_EXACT_TIE = 0.01  # where seasonal naive is exact, a forecaster MAE within 1% of the mean load ties it


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--families", default=",".join(peak_curves.FAMILIES),
                   help=f"comma-separated curve families (default {','.join(peak_curves.FAMILIES)})")
    p.add_argument("--curve", action="append", help="only curves whose name contains this (repeatable)")
    p.add_argument("--site", help="site file (default: OPSLOOP_TOPOLOGY, the demo site)")
    p.add_argument("--skill-periods", type=int,
                   help="closed billing periods the mode arbiter measures (default: the loop's; 0: the plan always)")
    p.add_argument("--skill-days", type=int,
                   help="before two billing periods close, the arbiter decides each day on this many closed days "
                        "(default: the loop's; 0: the plan until two periods close)")
    p.add_argument("--reactive-floor", choices=("on", "off"),
                   help="the plan never discharges less than the reactive rule would once the load passes the "
                        "period's billed peak (default: the loop's)")
    p.add_argument("--floor-skill-days", type=int,
                   help="lift the reactive floor while, over this many closed days, the plan without it cut the "
                        "billed peak so far by more than with it, both shadowed (default: the loop's, 7; 0: never)")
    p.add_argument("--start-mode", choices=("forecast", "reactive"),
                   help="the arbiter's mode until skill is measured (default: the loop's; reactive wants "
                        "--skill-days)")
    p.add_argument("--band-weight", type=float,
                   help="how far toward its forecast band's upper edge the plan sizes the battery's energy, 0 to 1 "
                        "(default: the policy's)")
    p.add_argument("--band-memory", type=float, metavar="STEPS",
                   help="over how many steps the forecaster's band averages each horizon's error (default: the "
                        "forecaster's, 16; 0.7: about the latest error alone, as before it was mended)")
    p.add_argument("--mase", choices=("on", "off"), default="on",
                   help="score the forecaster against seasonal naive (off: faster, for comparing arbiter "
                        "settings, which share the forecaster); default on")
    p.add_argument("--holidays", choices=("on", "off"), default="on",
                   help="forecast with each family's public holidays as a site file's country gives them (Taylor: "
                        "England, BDEW: Germany, NAB: none known); default on")
    p.add_argument("--leave-one-out", nargs="+", metavar="REPORT",
                   help="instead of scoring: JSON reports of this command, one per candidate configuration; per "
                        "curve, the candidate best on the other curves is scored on it")
    p.add_argument("--levers", action="store_true",
                   help="instead of scoring the planner: the battery alone against the battery with the site "
                        "file's flexible_load levers (as opsloop eval peaks --levers), monthly billing, per curve")
    p.add_argument("--policy", help="policy file for --levers (default: OPSLOOP_POLICY, the shipped one)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def main(args: argparse.Namespace, settings=None) -> int:
    from opsloop.config.site import load_site

    site_file = args.site or (settings.topology if settings else None)
    if site_file is None:
        from opsloop.config.settings import Settings
        site_file = Settings.from_env().topology
    if args.leave_one_out:
        reports = {Path(path).stem: json.loads(Path(path).read_text()) for path in args.leave_one_out}
        result = leave_one_out(reports)
        print(json.dumps(result, indent=2) if args.json else render_leave_one_out(result))
        return 0
    if args.band_memory is not None and args.band_memory <= 0:
        raise ValueError(f"--band-memory {args.band_memory:g}: a number of steps over 0")
    site = load_site(site_file)
    chosen = select_curves(tuple(args.families.split(",")), args.curve)
    if args.levers:
        return _levers(args, settings, site, site_file, chosen)
    report = {"site": str(site_file), "data": [{"curve": c[0], "family": c[1], "steps": len(c[2]), "step_s": c[4]}
                                               for c in chosen], "curves": []}
    # the arbiter's settings the command line gives; the loop's own where it gives none
    arbiter = {"skill_periods": args.skill_periods, "skill_days": args.skill_days,
               "reactive_floor": None if args.reactive_floor is None else args.reactive_floor == "on",
               "floor_skill_days": args.floor_skill_days, "start_mode": args.start_mode}
    given = {k: v for k, v in arbiter.items() if v is not None}
    for name, family, times, values, step_s in chosen:
        country = peak_curves.COUNTRIES.get(family) if args.holidays == "on" else None
        config = LoopConfig.from_site(replace(site, country=country), step_s=step_s, **given)
        if args.band_weight is not None:
            config = replace(config, policy=replace(config.policy, band_weight=args.band_weight))
        if args.band_memory is not None:
            config = replace(config, band_memory_steps=args.band_memory)
        report["config"] = {**{k: getattr(config, k) for k in arbiter}, "holidays": args.holidays,
                            "band_weight": config.policy.band_weight,
                            "band_memory_steps": config.band_memory_steps or PeakForecaster().error_halflife}
        report["curves"].append(score_curve(name, family, times, values, step_s, config, args.mase == "on"))
    report["summary"] = summarise(report["curves"])
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _levers(args, settings, site, site_file, chosen) -> int:
    from opsloop.config.assets import POLICY_FILE
    from opsloop.config.policy import load_policy
    from opsloop.ops.evals import peak_levers

    policy_file = args.policy or (settings.policy if settings else POLICY_FILE)
    costs = load_policy(policy_file).levers
    if costs is None:
        raise ValueError(f"{policy_file}: --levers needs the policy's levers section (policy version 4)")
    out = {"site": str(site_file), "policy": str(policy_file), "curves": []}
    for name, family, times, values, step_s in chosen:
        config = LoopConfig.from_site(site, step_s=step_s, lever_costs=costs)
        loads = [v * AUTO_PEAK_SHARE * config.policy.import_cap_kw / max(values) for v in values]
        warmup = 7.0 if (times[-1] - times[0]) >= 28 * 86_400_000 else SHORT_WARMUP_DAYS
        report = peak_levers.evaluate_levers(times, loads, step_s, config, 80.0, warmup, planner_controller)
        out["curves"].append({"curve": name, "family": family, **report})
        if not args.json:
            print(f"== {name} ==\n{peak_levers.render(report)}\n", flush=True)
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


def families_for(families: tuple[str, ...], keys: list[str] | None) -> tuple[str, ...]:
    """The families to make for ``--curve`` keys: those the keys name (``bdew/g3``, ``nab``), every one when a key
    names none (a bare curve name such as ``rds_cpu_utilization_e47b3b`` may be in any)."""
    if not keys:
        return families
    named = set()
    for key in keys:
        head = key.split("/")[0]
        found = [f for f in families if key.startswith(f) or f.startswith(head)]
        if not found:
            return families
        named.update(found)
    return tuple(f for f in families if f in named)


def select_curves(families: tuple[str, ...], keys: list[str] | None, make=None) -> list:
    """The curves of ``families`` whose name contains a ``--curve`` key (all without keys); a key no curve's name
    contains is an error, not a silently shorter report."""
    chosen = (make or peak_curves.curves)(families_for(families, keys))
    if keys:
        unmatched = [k for k in keys if not any(k in c[0] for c in chosen)]
        if unmatched:
            raise ValueError(f"--curve {', '.join(unmatched)}: no curve of {', '.join(families)} is named so "
                             f"(names look like taylor, bdew/g3, nab/realAWSCloudwatch/rds_cpu_utilization_e47b3b)")
        chosen = [c for c in chosen if any(k in c[0] for k in keys)]
    return chosen


def score_curve(name, family, times, values, step_s, config: LoopConfig, with_mase: bool = True) -> dict:
    cap = config.policy.import_cap_kw
    loads = [v * AUTO_PEAK_SHARE * cap / max(values) for v in values]
    warmup = 7.0 if (times[-1] - times[0]) >= 28 * 86_400_000 else SHORT_WARMUP_DAYS
    out = {"curve": name, "family": family, "warmup_days": warmup}
    for billing in ("week", "month"):
        report = evaluate(times, loads, step_s, replace(config, billing_period=billing), 80.0, warmup_days=warmup)
        rows = [r["strategies"] for r in report["periods"]]
        beats = [s["planner"]["billed_peak_kw"] <= s["reactive"]["billed_peak_kw"] + TIE_KW for s in rows]
        shares = {k: [s[k]["share_of_oracle"] for s in rows if s[k]["share_of_oracle"] is not None]
                  for k in ("planner", "reactive")}
        out[billing] = {
            "periods": len(rows), "beats_or_ties": sum(beats),
            "beats_or_ties_share": round(sum(beats) / len(beats), 4) if beats else None,
            "planner_mean_share": _mean(shares["planner"]), "reactive_mean_share": _mean(shares["reactive"]),
            "violations": sum(s["planner"]["violations"] for s in rows),
            "modes": [r["strategies"]["planner"].get("modes") for r in report["periods"]]}
    scores = forecast_scores(times, loads, step_s, warmup, config.holidays) if with_mase else {}
    out["mase"] = scores.get("mase", {})
    out["naive_exact"] = scores.get("naive_exact", {})
    return out


def mase(times, loads, step_s, warmup_days, holidays=None) -> dict:
    """The forecaster's MAE over the seasonal-naive forecast's (the same step a day before the target, from the
    latest day observed), at 1 h, 4 h and 24 h, after the warm-up; None where seasonal naive is exact."""
    return forecast_scores(times, loads, step_s, warmup_days, holidays)["mase"]


def forecast_scores(times, loads, step_s, warmup_days, holidays=None) -> dict:
    """``mase`` per horizon, and ``naive_exact``: for each horizon where the seasonal-naive error is exactly 0
    (a perfectly periodic curve, MASE None), the forecaster's own MAE as a share of the mean absolute load."""
    day = max(1, 86_400 // step_s)
    horizons = {"1h": max(1, round(3600 / step_s)), "4h": max(1, round(4 * 3600 / step_s)), "24h": day}
    f = PeakForecaster(step_s=step_s, season_steps=day, holidays=holidays)
    start = times[0] + warmup_days * 86_400_000
    errors = horizon_errors(times, loads, day, horizons, start, lambda ts, y: f.learn_one(y, {"ts_ms": ts}),
                            lambda: f.forecast(day))
    scored = [abs(y) for ts, y in zip(times, loads) if ts >= start]
    mean_load = sum(scored) / len(scored) if scored else 0.0
    return {"mase": {k: round(e / n, 3) if n > 0 else None for k, (e, n, _) in errors.items()},
            "naive_exact": {k: round(e / count / mean_load, 5) for k, (e, n, count) in errors.items()
                            if n == 0 and count and mean_load > 0}}


def horizon_errors(times, loads, day: int, horizons: dict[str, int], start_ms: int, learn, forecast) -> dict:
    """Per horizon (name -> steps ahead): [the forecaster's absolute error, seasonal naive's (the same step a day
    before the target, from the latest day observed), steps scored], summed over the forecasts issued from
    ``start_ms`` on. ``learn(ts_ms, y)`` folds a step in; ``forecast()`` gives the next ``day`` steps' values."""
    errors = {k: [0.0, 0.0, 0] for k in horizons}
    for i, (ts, y) in enumerate(zip(times, loads)):
        if ts >= start_ms:
            predicted = forecast()
            for k, h in horizons.items():
                target = i - 1 + h
                if target < len(loads) and len(predicted) >= h:
                    naive = loads[target - day * math.ceil(h / day)]
                    errors[k][0] += abs(predicted[h - 1] - loads[target])
                    errors[k][1] += abs(naive - loads[target])
                    errors[k][2] += 1
        learn(ts, y)
    return errors


def passes_mase(row: dict) -> bool:
    """Every horizon's MASE under 1, none where seasonal naive is exact."""
    return bool(row.get("mase")) and all(v is not None and v < 1 for v in row["mase"].values())


def ties_exact_naive(row: dict) -> bool:
    """Seasonal naive exact at some horizon, the forecaster within ``NAIVE_EXACT_TIE`` of the mean load there, and
    MASE under 1 at every other horizon."""
    exact = row.get("naive_exact") or {}
    return bool(exact) and all(v is not None and v < 1 or k in exact and exact[k] <= NAIVE_EXACT_TIE
                               for k, v in row["mase"].items())


def summarise(rows: list[dict]) -> dict:
    weekly_ok = [r["curve"] for r in rows if (r["week"]["beats_or_ties_share"] or 0) >= 0.9]
    monthly_ok = [r["curve"] for r in rows if r["month"]["beats_or_ties"] == r["month"]["periods"]]
    lift = [r["curve"] for r in rows if r["week"]["planner_mean_share"] is not None
            and r["week"]["planner_mean_share"] >= (r["week"]["reactive_mean_share"] or 0) + 0.15]
    mase_ok = [r["curve"] for r in rows if passes_mase(r)]
    mase_tie = [r["curve"] for r in rows if ties_exact_naive(r)]
    exact = [r for r in rows if r.get("naive_exact")]
    n = len(rows)
    return {"curves": n, "weekly_beats_or_ties_90pct": len(weekly_ok), "every_month_beats_or_ties": len(monthly_ok),
            "mean_share_lift_15pt": len(lift), "mase_under_1": len(mase_ok),
            "mase_naive_exact": len(exact), "mase_naive_exact_ties": len(mase_tie),
            "mase_naive_exact_worst_mae_share": max((v for r in exact for v in r["naive_exact"].values()),
                                                    default=None),
            "violations": sum(r["week"]["violations"] + r["month"]["violations"] for r in rows),
            "planner_weekly_mean_share": _mean([r["week"]["planner_mean_share"] for r in rows
                                                if r["week"]["planner_mean_share"] is not None]),
            "reactive_weekly_mean_share": _mean([r["week"]["reactive_mean_share"] for r in rows
                                                 if r["week"]["reactive_mean_share"] is not None])}


def leave_one_out(reports: dict[str, dict]) -> dict:
    """Per curve: the candidate (one report each) with the best mean weekly score on the *other* curves, and its
    figures on the curve left out. Score: weeks beating or tying reactive (capped at the 90% target) plus the
    planner's mean share of the oracle."""
    rows = {name: {r["curve"]: r for r in report["curves"]} for name, report in reports.items()}
    curves = list(next(iter(rows.values())))

    def score(r: dict) -> float:
        return min(r["week"]["beats_or_ties_share"] or 0.0, 0.9) + (r["week"]["planner_mean_share"] or 0.0)

    out = {}
    for left in curves:
        best = max(rows, key=lambda cand: sum(score(rows[cand][c]) for c in curves if c != left))
        out[left] = {"candidate": best, "week": rows[best][left]["week"], "month": rows[best][left]["month"]}
    summary = summarise([{"curve": c, **r, "mase": {}} for c, r in out.items()])
    for key in ("mase_under_1", "mase_naive_exact", "mase_naive_exact_ties", "mase_naive_exact_worst_mae_share"):
        summary.pop(key)  # the forecaster is the same in every candidate: see the reports themselves
    return {"candidates": list(reports), "curves": out, "summary": summary}


def render_leave_one_out(result: dict) -> str:
    lines = [f"leave-one-curve-out over candidates {', '.join(result['candidates'])}:"]
    for name, r in result["curves"].items():
        w, m = r["week"], r["month"]
        lines.append(f"  {name:<48} chosen {r['candidate']}: weeks >= reactive {_pct(w['beats_or_ties_share'])}, "
                     f"weekly mean {_pct(w['planner_mean_share'])} (reactive {_pct(w['reactive_mean_share'])}), "
                     f"months >= reactive {m['beats_or_ties']}/{m['periods']}")
    s = result["summary"]
    lines.append(f"held-out curves with >= 90% of weeks beating or tying reactive: {s['weekly_beats_or_ties_90pct']}/"
                 f"{s['curves']}; every month: {s['every_month_beats_or_ties']}/{s['curves']}; weekly mean "
                 f"planner {_pct(s['planner_weekly_mean_share'])} vs reactive {_pct(s['reactive_weekly_mean_share'])}")
    return "\n".join(lines)


def render(report: dict) -> str:
    lines = [f"opsloop eval peaks-suite: {len(report['data'])} curves, site {report['site']}, each scaled so its "
             f"maximum is {AUTO_PEAK_SHARE:.0%} of the import cap; judged on:"]
    lines += [f"  {d['curve']} ({d['family']}, {d['steps']:,} steps of {d['step_s'] // 60} min)" for d in report["data"]]
    lines += ["", f"{'curve':<48} {'weeks':>5} {'>=react':>8} {'plan wk':>8} {'react wk':>8} {'months':>6} "
                  f"{'>=react':>7} {'plan mo':>8} {'viol':>4} {'MASE 1h/4h/24h':>16}"]
    for r in report["curves"]:
        w, m, e, exact = r["week"], r["month"], r["mase"], r.get("naive_exact") or {}
        lines.append(f"{r['curve']:<48} {w['periods']:>5} {_pct(w['beats_or_ties_share']):>8} "
                     f"{_pct(w['planner_mean_share']):>8} {_pct(w['reactive_mean_share']):>8} {m['periods']:>6} "
                     f"{m['beats_or_ties']:>4}/{m['periods']:<2} {_pct(m['planner_mean_share']):>8} "
                     f"{w['violations'] + m['violations']:>4} "
                     f"{'/'.join(_mase_cell(v, exact.get(k)) for k, v in e.items()):>16}")
    s = report["summary"]
    lines += ["", f"curves where the planner beats or ties reactive in >= 90% of weeks: {s['weekly_beats_or_ties_90pct']}"
                  f"/{s['curves']}; in every month: {s['every_month_beats_or_ties']}/{s['curves']}; "
                  f"weekly mean share >= reactive + 15 points: {s['mean_share_lift_15pt']}/{s['curves']}; "
                  f"MASE < 1 at 1 h, 4 h and 24 h: {s['mase_under_1']}/{s['curves']}{_exact_note(s)}; "
                  f"violations: {s['violations']}",
              f"weekly mean share of the oracle over all curves: planner {_pct(s['planner_weekly_mean_share'])}, "
              f"reactive {_pct(s['reactive_weekly_mean_share'])}"]
    return "\n".join(lines)


def _mase_cell(value, exact_share) -> str:
    """A horizon's MASE; ``=x%`` where seasonal naive is exact (x: the forecaster's MAE, share of the mean load)."""
    if value is not None:
        return f"{value:.2f}"
    return "-" if exact_share is None else f"={100 * exact_share:.1f}%"


def _exact_note(s: dict) -> str:
    if not s.get("mase_naive_exact"):
        return ""
    return (f" (seasonal naive exact, MASE undefined, on {s['mase_naive_exact']}: the forecaster's MAE at most "
            f"{100 * s['mase_naive_exact_worst_mae_share']:.1f}% of the mean load there, a tie on "
            f"{s['mase_naive_exact_ties']} within {100 * NAIVE_EXACT_TIE:.0f}%; \"=x%\" in the MASE column)")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
