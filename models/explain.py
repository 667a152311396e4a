"""Plain-language one-liners for the NOC: the interpreter (forecasts) and the advisor (actions).

Each line is built from the record's own fields only (the same facts the
planner used), so it can be shown next to the numbers without contradicting
them. Times are UTC; durations are relative to the record's own time
(``issued_ms``, ``created_ms``), never to the wall clock. Beside each line comes
a ``reason_code``: the interpreter's own (``FORECAST_CODES``), or the action's, as
its proposer gave it.

>>> f = {"site": "demo", "issued_ms": 0, "horizon_s": 14400, "step_s": 900, "predicted_peak_kw": 31400.0,
...      "predicted_peak_ms": 8_100_000, "threshold_kw": 28000.0, "model": "snarimax", "explanation": "",
...      "points": [{"ts_ms": 8_100_000, "kw": 31400.0, "lower_kw": 30100.0, "upper_kw": 32800.0}]}
>>> line = ForecastInterpreter().run(f)
>>> line["text"]
'demo: peak of 31.4 MW expected at 02:15 UTC (in 2 h 15 min), 3.4 MW above the 28.0 MW threshold (likely 30.1-32.8 MW).'
>>> line["reason_code"]
'peak_above_threshold'
>>> a = {"action_id": "a1", "kind": "pcs_discharge", "target": "pcs-1", "site": "demo", "setpoint_kw": 3200.0,
...      "shed_kw": None, "job_ids": [], "params": {}, "reason": "forecast peak 31.4 MW exceeds 28.0 MW",
...      "expected_effect": "", "expected_delta_kw": -3200.0, "created_ms": 0, "expires_ms": 5_400_000,
...      "risk": "low", "proposer": "peaks", "reason_code": "shave_peak"}
>>> line = ActionAdvisor().run(a)
>>> line["text"]
'Discharge battery pcs-1 at 3.2 MW until 01:30 UTC (1 h 30 min): grid import down 3.2 MW. Why: forecast peak 31.4 MW exceeds 28.0 MW. Low risk, proposed by peaks.'
>>> line["reason_code"]
'shave_peak'
"""

from __future__ import annotations

from haystack import component

from opsloop.models.event_time import format_ms

# Reason codes of a forecast's line:
PEAK_ABOVE_THRESHOLD = "peak_above_threshold"
PEAK_UNDER_THRESHOLD = "peak_under_threshold"  # no action needed
FORECAST_CODES = frozenset({PEAK_ABOVE_THRESHOLD, PEAK_UNDER_THRESHOLD})


def power(kw: float) -> str:
    """``850 kW`` below a megawatt, ``31.4 MW`` above."""
    return f"{kw / 1000:.1f} MW" if abs(kw) >= 1000 else f"{kw:.0f} kW"


def power_range(low_kw: float, high_kw: float) -> str:
    """``30.1-32.8 MW`` or ``850-900 kW``: one unit, that of the upper bound."""
    if abs(high_kw) >= 1000:
        return f"{low_kw / 1000:.1f}-{high_kw / 1000:.1f} MW"
    return f"{low_kw:.0f}-{high_kw:.0f} kW"


def clock(ms: int) -> str:
    return format_ms(ms, "%H:%M UTC")


def duration(ms: int) -> str:
    minutes = max(0, round(ms / 60_000))
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


@component
class ForecastInterpreter:
    """One line on a ``PeakForecast``: when the peak comes, how big, against the threshold, how sure."""

    @component.output_types(text=str, reason_code=str)
    def run(self, forecast: dict) -> dict:
        peak, threshold = forecast["predicted_peak_kw"], forecast["threshold_kw"]
        when = forecast["predicted_peak_ms"]
        line = (f"{forecast['site']}: peak of {power(peak)} expected at {clock(when)}"
                f" (in {duration(when - forecast['issued_ms'])}), ")
        gap = peak - threshold
        line += (f"{power(gap)} above the {power(threshold)} threshold" if gap > 0
                 else f"{power(-gap)} under the {power(threshold)} threshold, no action needed")
        points = forecast.get("points") or []
        if points:
            at_peak = min(points, key=lambda p: abs(p["ts_ms"] - when))
            line += f" (likely {power_range(at_peak['lower_kw'], at_peak['upper_kw'])})"
        return {"text": line + ".", "reason_code": PEAK_ABOVE_THRESHOLD if gap > 0 else PEAK_UNDER_THRESHOLD}


_VERBS = {
    "pcs_discharge": "Discharge battery {target} at {setpoint}",
    "pcs_charge": "Charge battery {target} at {setpoint}",
    "pcs_idle": "Set battery {target} to idle",
    "slurm_hold": "Hold {jobs} on {target}",
    "slurm_release": "Release {jobs} on {target}",
    "slurm_requeue": "Requeue {jobs} on {target}",
    "slurm_suspend": "Suspend {jobs} on {target}",
    "slurm_resume": "Resume {jobs} on {target}",
    "llm_shift": "Shift LLM traffic on {target} from the large model to the small one",
    "llm_cap": "Cap concurrent LLM requests per server on {target}",
    "slurm_reserve": "Reserve {nodes} on {target} for maintenance",
    "cooling_setpoint": "Set the supply-air setpoint {target} to {setpoint_c} degC",
    "slurm_shrink": "Shrink {jobs} on {target} to {nodes} node(s)",
    "gpu_clock_lock": "Lock the SM clocks of partition {partition}'s GPUs at {sm_mhz} MHz",
    "gpu_power_limit": "Limit each GPU of partition {partition} to {watts} W",
}


def _jobs(job_ids: list[str]) -> str:
    if not job_ids:
        return "the selected jobs"
    shown = ", ".join(job_ids[:3]) + (f" and {len(job_ids) - 3} more" if len(job_ids) > 3 else "")
    return f"{len(job_ids)} job(s) ({shown})"


@component
class ActionAdvisor:
    """One line on an ``Action``: what it does, until when, the expected effect, why, its risk; and the
    action's own reason code (None when its proposer gave none)."""

    @component.output_types(text=str, reason_code=str | None)
    def run(self, action: dict) -> dict:
        setpoint, params = action.get("setpoint_kw"), action.get("params") or {}
        verb = _VERBS[action["kind"]]
        if action["kind"] == "slurm_shrink" and not action.get("job_ids"):  # names a partition: the sink picks jobs
            verb = "Release up to {gpus} GPUs of opsloop:dp jobs in {partitions} on {target}"
        line = verb.format(target=action["target"], jobs=_jobs(action.get("job_ids") or []),
                                             setpoint=power(abs(setpoint)) if setpoint is not None else "",
                                             nodes=params.get("nodes", "nodes"),
                                             setpoint_c=params.get("setpoint_c", "?"),
                                             partition=params.get("partition", "?"), sm_mhz=params.get("sm_mhz", "?"),
                                             watts=params.get("watts", "?"), gpus=params.get("gpus", "?"),
                                             partitions=params.get("partitions", "?"))
        window = (params.get("start_ms", ""), params.get("end_ms", ""))
        if action["kind"] == "slurm_reserve" and all(edge.isdigit() for edge in window):
            start, end = int(params["start_ms"]), int(params["end_ms"])  # the window, not the proposal's life
            line += f" from {format_ms(start, '%Y-%m-%d %H:%M UTC')} ({duration(end - start)})"
        else:
            line += (f" until {clock(action['expires_ms'])}"
                     f" ({duration(action['expires_ms'] - action['created_ms'])})")
        effects = []
        if action.get("shed_kw"):
            effects.append(f"sheds {power(action['shed_kw'])} of GPU load")
        delta = action.get("expected_delta_kw")
        if delta:
            effects.append(f"grid import {'down' if delta < 0 else 'up'} {power(abs(delta))}")
        elif action.get("expected_effect"):
            effects.append(action["expected_effect"].strip().rstrip("."))
        if effects:
            line += ": " + ", ".join(effects)
        line += "."
        if action.get("reason"):
            line += f" Why: {action['reason'].strip().rstrip('.')}."
        return {"text": line + f" {action.get('risk', 'high').capitalize()} risk, proposed by {action['proposer']}.",
                "reason_code": action.get("reason_code")}
