"""`opsloop eval forecast-weather`: what the outside-temperature forecast is worth to the load forecast, on the twin.

On the twin the chiller plant draws IT / COP and the COP falls as it warms outside (``models.twin``), so with
warm and cool spells from day to day (``models.weather.SyntheticWeather``, ``--day-sd``) the facility load
moves with the weather beyond what the time of day says, and the temperature forecast (issued every 6 h, its
error growing with lead time: ``--forecast-sd`` at lead 0 plus ``--forecast-sd-per-day``) is a causal
covariate: a load forecast that sees it should beat one that does not, and this eval measures by how much.
For each weather seed it runs the pure twin (no processes, no broker, no job schedule, so the weather is all
that moves the load beside the curve) and scores, with the forecast and without it, as
``opsloop eval forecast-queue`` does: the peaks loop's forecaster (MAE and MASE at 1 h, 4 h and 24 h after
``--warmup-days``) and the planner's billed peaks, weekly and monthly, summed.

The setup is fixed before scoring; nothing here is tuned on what it prints.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from opsloop.models.peak_loop import LoopConfig
from opsloop.models.twin import SiteTwin
from opsloop.models.weather import SyntheticWeather
from opsloop.ops.evals.forecast_queue import HORIZONS, STEP_S, billed_peaks, facility_steps, score_forecasts, summarise
from opsloop.ops.evals.peaks import _iso

ARMS = ("without_weather", "with_weather")
BETTER = "weather_better_seeds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="demand curve (default: the bundled Taylor file, ops/data)")
    p.add_argument("--site", type=Path, help="site file (default: OPSLOOP_TOPOLOGY, the demo site)")
    p.add_argument("--days", type=float, help="days to run the twin (default: the curve's length)")
    p.add_argument("--warmup-days", type=float, default=7.0, help="days learned before scoring (default 7)")
    p.add_argument("--seeds", default="1,2,3", help="weather seeds, comma-separated (default 1,2,3)")
    p.add_argument("--day-sd", type=float, default=3.0,
                   help="standard deviation of the daily mean temperature, degC (default 3)")
    p.add_argument("--forecast-sd", type=float, default=SyntheticWeather.forecast_sd_c,
                   help=f"forecast error at lead 0, degC (default {SyntheticWeather.forecast_sd_c:g})")
    p.add_argument("--forecast-sd-per-day", type=float, default=SyntheticWeather.forecast_sd_per_day_c,
                   help=f"forecast error added per day of lead, degC (default "
                        f"{SyntheticWeather.forecast_sd_per_day_c:g})")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def main(args: argparse.Namespace) -> int:
    from opsloop.config.site import load_site
    from opsloop.ops.twin import DEFAULT_DATA, read_curve

    settings = getattr(args, "settings", None)
    site_file = args.site or (settings.topology if settings else None)
    if site_file is None:
        from opsloop.config.settings import Settings
        site_file = Settings.from_env().topology
    data = args.data or DEFAULT_DATA
    site, curve = load_site(site_file), read_curve(data)
    days = args.days or math.floor((curve[-1][0] - curve[0][0]) / 86_400_000)
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    weather = {"day_sd_c": args.day_sd, "forecast_sd_c": args.forecast_sd,
               "forecast_sd_per_day_c": args.forecast_sd_per_day}
    report = {"input": {"data": str(data), "site": str(site_file), "days": days, "warmup_days": args.warmup_days,
                        "step_s": STEP_S, "first": _iso(curve[0][0]), **weather},
              "seeds": [evaluate_seed(site, curve, seed, days, args.warmup_days, **weather) for seed in seeds]}
    report["summary"] = summarise(report["seeds"], ARMS, BETTER)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def evaluate_seed(site, curve, seed: int, days: float, warmup_days: float, **weather) -> dict:
    """One weather seed: how much the weather moves the load, and the forecaster and planner without and with
    the temperature forecast."""
    start = curve[0][0] // 86_400_000 * 86_400_000
    twin = SiteTwin(site, curve, weather=SyntheticWeather(seed=seed, **weather))
    times, loads = facility_steps(twin, start, days)
    config = LoopConfig.from_site(site, step_s=STEP_S)
    cooling = [twin.measure(ts).cooling_kw for ts in times]
    moves = {k: [abs(cooling[i + h] - cooling[i]) for i in range(len(cooling) - h)] for k, h in HORIZONS.items()}
    row = {"seed": seed, "load_kw_mean": round(sum(loads) / len(loads), 1),
           "cooling_kw_mean": round(sum(cooling) / len(cooling), 1),
           "cooling_kw_mean_change": {k: round(sum(m) / len(m), 1) if m else None for k, m in moves.items()}}
    for arm in ARMS:
        weather_at = twin.weather_forecast if arm == "with_weather" else None
        row[arm] = {"forecast": score_forecasts(times, loads, config, warmup_days, weather_at=weather_at),
                    "billed": billed_peaks(times, loads, config, warmup_days, weather_at=weather_at)}
    return row


def render(report: dict) -> str:
    i = report["input"]
    lines = [f"forecast-weather: the site twin of {i['site']} over {i['data']}, {i['days']:g} days "
             f"({i['warmup_days']:g} warm-up), {STEP_S // 60}-minute steps; daily mean temperature sd "
             f"{i['day_sd_c']:g} degC, forecast error {i['forecast_sd_c']:g} degC + {i['forecast_sd_per_day_c']:g} "
             f"degC per day of lead",
             f"{'seed':>4} {'cooling kW':>10} {'arm':<16} {'MAE 1h/4h/24h kW':>22} {'MASE 1h/4h/24h':>18} "
             f"{'billed wk/mo kW (none)':>34}"]
    for r in report["seeds"]:
        for arm in ARMS:
            f, b = r[arm]["forecast"], r[arm]["billed"]
            mae = "/".join(f"{f['mae_kw'][k]:,.0f}" for k in HORIZONS)
            mase = "/".join(f"{f['mase'][k]:.3f}" for k in HORIZONS)
            billed = (f"{b['week']['planner_billed_kw']:,.0f}/{b['month']['planner_billed_kw']:,.0f} "
                      f"({b['week']['none_billed_kw']:,.0f}/{b['month']['none_billed_kw']:,.0f})")
            lines.append(f"{r['seed']:>4} {r['cooling_kw_mean']:>10,.0f} {arm:<16} {mae:>22} {mase:>18} {billed:>34}")
    s = report["summary"]
    lines.append("the cooling's kW moves on average by " + ", ".join(
        f"{k} {sum(r['cooling_kw_mean_change'][k] for r in report['seeds']) / len(report['seeds']):,.0f}"
        for k in HORIZONS))
    lines.append(f"mean over {s['seeds']} seeds (the forecast better on n seeds):")
    for k in HORIZONS:
        m, q = s["mae_kw"][k], s["mase"][k]
        lines.append(f"  {k:>3}: MAE {m[ARMS[0]]:,.0f} -> {m[ARMS[1]]:,.0f} kW ({m[BETTER]}/{s['seeds']}), "
                     f"MASE {q[ARMS[0]]:.3f} -> {q[ARMS[1]]:.3f}")
    for period in ("week", "month"):
        b = s["billed_kw"][period]
        lines.append(f"  billed peaks, {period}ly billing, summed: {b[ARMS[0]]:,.0f} -> {b[ARMS[1]]:,.0f} kW "
                     f"({b[BETTER]}/{s['seeds']})")
    return "\n".join(lines)
