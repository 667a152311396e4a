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

from opsloop.models.peak_loop import LoopConfig
from opsloop.models.twin import SiteTwin
from opsloop.models.weather import SyntheticWeather
from opsloop.ops.evals.forecast_queue import (HORIZONS, STEP_S, add_twin_arguments, arm_cells, billed_peaks,
                                              facility_steps, score_forecasts, summarise, summary_lines, twin_inputs)

ARMS = ("without_weather", "with_weather")
BETTER = "weather_better_seeds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_twin_arguments(p, "weather seeds")
    p.add_argument("--day-sd", type=float, default=3.0,
                   help="standard deviation of the daily mean temperature, degC (default 3)")
    p.add_argument("--forecast-sd", type=float, default=SyntheticWeather.forecast_sd_c,
                   help=f"forecast error at lead 0, degC (default {SyntheticWeather.forecast_sd_c:g})")
    p.add_argument("--forecast-sd-per-day", type=float, default=SyntheticWeather.forecast_sd_per_day_c,
                   help=f"forecast error added per day of lead, degC (default "
                        f"{SyntheticWeather.forecast_sd_per_day_c:g})")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def main(args: argparse.Namespace) -> int:
    i = twin_inputs(args)
    weather = {"day_sd_c": args.day_sd, "forecast_sd_c": args.forecast_sd,
               "forecast_sd_per_day_c": args.forecast_sd_per_day}
    report = {"input": {**i.described(args.warmup_days), **weather},
              "seeds": [evaluate_seed(i.site, i.curve, seed, i.days, args.warmup_days, **weather) for seed in i.seeds]}
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
            lines.append(f"{r['seed']:>4} {r['cooling_kw_mean']:>10,.0f} {arm:<16} {arm_cells(r[arm])}")
    lines.append("the cooling's kW moves on average by " + ", ".join(
        f"{k} {sum(r['cooling_kw_mean_change'][k] for r in report['seeds']) / len(report['seeds']):,.0f}"
        for k in HORIZONS))
    return "\n".join(lines + summary_lines(report["summary"], ARMS, BETTER, "the forecast"))
