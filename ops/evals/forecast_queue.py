"""`opsloop eval forecast-queue`: what the Slurm queue is worth to the load forecast, on the site twin.

On the twin, queued GPU jobs start when the queue says (``models.gpu_jobs``), so the queue's expected GPU kW
per step (``models.queue_covariate``) is a causal covariate of the load: a forecast that sees it should beat
one that does not, and this eval measures by how much. For each schedule seed it runs the pure site twin
(``models.twin.SiteTwin``, no processes, no broker) over the demand curve (default: the bundled Taylor file)
with the job schedule on, and takes the facility load (the ESS idle) as the 15-minute averages of 5-minute
readings. On that series it scores, with the queue and without it:

- the peaks loop's forecaster (``SitePeakLoop.learn``, the very path the agent runs, with the queue snapshot
  the twin's slurm-queue view gives at each step's close): MAE and MASE (over the seasonal-naive forecast, the
  same step a day before) at 1 h, 4 h and 24 h, after ``--warmup-days``;
- the planner (``ops.evals.peaks.planner_controller``) on the site's battery: the billed peak of every week and
  every month (UTC), summed, beside no control.

The setup is fixed before scoring (``--seeds``, ``--jobs-per-day`` and the schedule's other sizes, as
``models.gpu_jobs.JobSchedule`` states them); nothing here is tuned on what it prints.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from opsloop.models.gpu_jobs import JobSchedule
from opsloop.models.peak_loop import LoopConfig, SitePeakLoop
from opsloop.models.peak_planner import billing_period
from opsloop.models.twin import SiteTwin
from opsloop.ops.evals.peak_baselines import no_control, simulate
from opsloop.ops.evals.peaks import _iso, planner_controller

STEP_S = 900
SAMPLE_S = 300
HORIZONS = {"1h": 4, "4h": 16, "24h": 96}  # steps of STEP_S
ARMS = ("without_queue", "with_queue")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_twin_arguments(p, "job schedule seeds")
    p.add_argument("--jobs-per-day", type=float, default=JobSchedule.jobs_per_day,
                   help=f"jobs submitted per partition a day (default {JobSchedule.jobs_per_day:g})")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def add_twin_arguments(p: argparse.ArgumentParser, seeds: str) -> None:
    """The arguments every covariate eval on the twin takes (this one's and forecast-weather's)."""
    p.add_argument("--data", type=Path, help="demand curve (default: the bundled Taylor file, ops/data)")
    p.add_argument("--site", type=Path, help="site file (default: OPSLOOP_TOPOLOGY, the demo site)")
    p.add_argument("--days", type=float, help="days to run the twin (default: the curve's length)")
    p.add_argument("--warmup-days", type=float, default=7.0, help="days learned before scoring (default 7)")
    p.add_argument("--seeds", default="1,2,3", help=f"{seeds}, comma-separated (default 1,2,3)")


@dataclass(frozen=True)
class TwinInputs:
    """What ``add_twin_arguments`` named, read: the site and its file, the curve and its file, days and seeds."""

    site: object
    site_file: Path
    data: Path
    curve: list
    days: float
    seeds: list[int]

    def described(self, warmup_days: float) -> dict:
        """The report's ``input``: what it was judged on."""
        return {"data": str(self.data), "site": str(self.site_file), "days": self.days, "warmup_days": warmup_days,
                "step_s": STEP_S, "first": _iso(self.curve[0][0])}


def twin_inputs(args: argparse.Namespace) -> TwinInputs:
    from opsloop.config.site import load_site
    from opsloop.ops.twin import DEFAULT_DATA, read_curve

    settings = getattr(args, "settings", None)
    site_file = args.site or (settings.topology if settings else None)
    if site_file is None:
        from opsloop.config.settings import Settings
        site_file = Settings.from_env().topology
    data = args.data or DEFAULT_DATA
    curve = read_curve(data)
    days = args.days or math.floor((curve[-1][0] - curve[0][0]) / 86_400_000)
    return TwinInputs(load_site(site_file), site_file, data, curve, days,
                      [int(s) for s in str(args.seeds).split(",") if s.strip()])


def main(args: argparse.Namespace) -> int:
    i = twin_inputs(args)
    report = {"input": {**i.described(args.warmup_days), "jobs_per_day": args.jobs_per_day},
              "seeds": [evaluate_seed(i.site, i.curve, seed, i.days, args.warmup_days, args.jobs_per_day)
                        for seed in i.seeds]}
    report["summary"] = summarise(report["seeds"])
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def twin_run(site, curve, seed: int, days: float, jobs_per_day: float) -> tuple[list[int], list[float], SiteTwin]:
    """The twin with the seeded job schedule: each step's start and facility kW (the mean of its readings)."""
    start = curve[0][0] // 86_400_000 * 86_400_000
    twin = SiteTwin(site, curve, jobs=JobSchedule.for_site(site, seed=seed, epoch_ms=start, jobs_per_day=jobs_per_day))
    return (*facility_steps(twin, start, days), twin)


def facility_steps(twin: SiteTwin, start_ms: int, days: float) -> tuple[list[int], list[float]]:
    """Each step's start and the twin's facility kW over it (the mean of its readings), the ESS idle."""
    times, loads = [], []
    per_step = STEP_S // SAMPLE_S
    for i in range(int(days * 86_400 // STEP_S)):
        ts = start_ms + i * STEP_S * 1000
        readings = [twin.measure(ts + k * SAMPLE_S * 1000).facility_kw for k in range(per_step)]
        times.append(ts)
        loads.append(sum(readings) / per_step)
    return times, loads


def score_forecasts(times: list[int], loads: list[float], config: LoopConfig, warmup_days: float,
                    queue_at=None, weather_at=None) -> dict:
    """MAE and MASE at 1 h, 4 h and 24 h of the loop's forecaster, with the queue when ``queue_at`` is given and
    the temperature forecast when ``weather_at`` is (as ``ops.evals.peaks.planner_controller`` takes them)."""
    loop = SitePeakLoop(config)
    day = config.day_steps
    start = times[0] + warmup_days * 86_400_000
    errors = {k: [0.0, 0.0, 0] for k in HORIZONS}  # forecast error, naive error, count
    predicted: list[float] = []
    for i, (ts, y) in enumerate(zip(times, loads)):
        if ts >= start and predicted:
            for k, h in HORIZONS.items():
                target = i - 1 + h
                if target < len(loads) and len(predicted) >= h:
                    errors[k][0] += abs(predicted[h - 1] - loads[target])
                    errors[k][1] += abs(loads[target - day * math.ceil(h / day)] - loads[target])
                    errors[k][2] += 1
        step_end = ts + config.step_s * 1000
        if queue_at is not None:
            loop.on_queue(queue_at(step_end))
        if weather_at is not None:
            loop.on_weather(*weather_at(step_end))
        xs = loop.learn(ts, y)
        predicted = loop.forecaster.forecast(day, xs) if xs is not None else loop.forecaster.forecast(day)
    return {"mae_kw": {k: round(e / n, 1) if n else None for k, (e, _, n) in errors.items()},
            "mase": {k: round(e / naive, 3) if naive else None for k, (e, naive, _) in errors.items()}}


def billed_peaks(times: list[int], loads: list[float], config: LoopConfig, warmup_days: float,
                 queue_at=None, weather_at=None) -> dict:
    """The planner's billed peaks (weekly and monthly billing) after the warm-up, and no control's."""
    s0 = next(i for i, ts in enumerate(times) if ts >= times[0] + warmup_days * 86_400_000)
    history, scored_times, scored = (times[:s0], loads[:s0]), times[s0:], loads[s0:]
    battery = config.battery
    energy = battery.energy_kwh(80.0)
    out = {}
    for period in ("week", "month"):
        cfg = replace(config, billing_period=period)
        planner, _ = planner_controller(scored_times, scored, cfg, history, queue_at, weather_at)
        sims = {"planner": simulate(scored, cfg.step_s, battery, energy, planner),
                "none": simulate(scored, cfg.step_s, battery, energy, no_control)}
        keys = [billing_period(ts, period)[0] for ts in scored_times]
        peaks = {name: {} for name in sims}
        for name, sim in sims.items():
            for key, grid in zip(keys, sim.grid_kw):
                peaks[name][key] = max(peaks[name].get(key, -math.inf), grid)
        out[period] = {"periods": len(peaks["planner"]),
                       "planner_billed_kw": round(sum(peaks["planner"].values()), 1),
                       "none_billed_kw": round(sum(peaks["none"].values()), 1),
                       "violations": sum(sims["planner"].violations)}
    return out


def evaluate_seed(site, curve, seed: int, days: float, warmup_days: float, jobs_per_day: float) -> dict:
    times, loads, twin = twin_run(site, curve, seed, days, jobs_per_day)
    config = LoopConfig.from_site(site, step_s=STEP_S)
    jobs = twin.jobs.jobs(times[-1] + STEP_S * 1000)
    job_kw = [sum(twin.jobs.running_kw(ts).values()) for ts in times]
    # how far the jobs' own power moves over each horizon: the most the queue can explain of a blind forecast's error
    moves = {k: [abs(job_kw[i + h] - job_kw[i]) for i in range(len(job_kw) - h)] for k, h in HORIZONS.items()}
    row = {"seed": seed, "jobs": len(jobs), "job_kw_mean": round(sum(job_kw) / len(job_kw), 1),
           "job_kw_max": round(max(job_kw), 1), "load_kw_mean": round(sum(loads) / len(loads), 1),
           "job_kw_mean_change": {k: round(sum(m) / len(m), 1) if m else None for k, m in moves.items()}}
    for arm in ARMS:
        queue_at = twin.queue_records if arm == "with_queue" else None
        row[arm] = {"forecast": score_forecasts(times, loads, config, warmup_days, queue_at),
                    "billed": billed_peaks(times, loads, config, warmup_days, queue_at)}
    return row


def summarise(rows: list[dict], arms: tuple[str, str] = ARMS, better: str = "queue_better_seeds") -> dict:
    """Per horizon and billing: the mean over seeds of each arm (without, with), and on how many seeds the second
    was better (under ``better``)."""
    out = {"seeds": len(rows), "mae_kw": {}, "mase": {}, "billed_kw": {}}
    for k in HORIZONS:
        for metric in ("mae_kw", "mase"):
            values = {arm: [r[arm]["forecast"][metric][k] for r in rows] for arm in arms}
            out[metric][k] = {**{arm: round(sum(v) / len(v), 3) for arm, v in values.items()},
                              better: sum(w < wo for wo, w in zip(*values.values()))}
    for period in ("week", "month"):
        values = {arm: [r[arm]["billed"][period]["planner_billed_kw"] for r in rows] for arm in arms}
        out["billed_kw"][period] = {**{arm: round(sum(v) / len(v), 1) for arm, v in values.items()},
                                    better: sum(w < wo for wo, w in zip(*values.values()))}
    return out


def render(report: dict) -> str:
    i = report["input"]
    lines = [f"forecast-queue: the site twin of {i['site']} over {i['data']}, {i['days']:g} days "
             f"({i['warmup_days']:g} warm-up), {STEP_S // 60}-minute steps, {i['jobs_per_day']:g} jobs per "
             f"partition a day",
             f"{'seed':>4} {'jobs':>5} {'job kW':>13} {'arm':<14} {'MAE 1h/4h/24h kW':>22} {'MASE 1h/4h/24h':>18} "
             f"{'billed wk/mo kW (none)':>34}"]
    for r in report["seeds"]:
        for arm in ARMS:
            lines.append(f"{r['seed']:>4} {r['jobs']:>5} {r['job_kw_mean']:>6,.0f}/{r['job_kw_max']:<6,.0f} "
                         f"{arm:<14} {arm_cells(r[arm])}")
    lines.append("the jobs' own kW moves on average by " + ", ".join(
        f"{k} {sum(r['job_kw_mean_change'][k] for r in report['seeds']) / len(report['seeds']):,.0f}"
        for k in HORIZONS) + " (at the GPUs; the facility adds their cooling)")
    return "\n".join(lines + summary_lines(report["summary"], ARMS, "queue_better_seeds", "queue"))


def arm_cells(arm: dict) -> str:
    """One arm of one seed: MAE and MASE at each horizon, billed peaks weekly/monthly (no control's)."""
    f, b = arm["forecast"], arm["billed"]
    mae = "/".join(f"{f['mae_kw'][k]:,.0f}" for k in HORIZONS)
    mase = "/".join(f"{f['mase'][k]:.3f}" for k in HORIZONS)
    billed = (f"{b['week']['planner_billed_kw']:,.0f}/{b['month']['planner_billed_kw']:,.0f} "
              f"({b['week']['none_billed_kw']:,.0f}/{b['month']['none_billed_kw']:,.0f})")
    return f"{mae:>22} {mase:>18} {billed:>34}"


def summary_lines(s: dict, arms: tuple[str, str], better: str, who: str) -> list[str]:
    """``summarise``'s means, without -> with, and on how many seeds ``who`` did better."""
    without, with_ = arms
    lines = [f"mean over {s['seeds']} seeds ({who} better on n seeds):"]
    for k in HORIZONS:
        m, q = s["mae_kw"][k], s["mase"][k]
        lines.append(f"  {k:>3}: MAE {m[without]:,.0f} -> {m[with_]:,.0f} kW ({m[better]}/{s['seeds']}), "
                     f"MASE {q[without]:.3f} -> {q[with_]:.3f}")
    for period in ("week", "month"):
        b = s["billed_kw"][period]
        lines.append(f"  billed peaks, {period}ly billing, summed: {b[without]:,.0f} -> {b[with_]:,.0f} kW "
                     f"({b[better]}/{s['seeds']})")
    return lines
