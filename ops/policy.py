"""`opsloop policy check FILE`: a verdict on a guard-rail policy file."""

from __future__ import annotations

from pathlib import Path

from opsloop.config.policy import Policy, PolicyError, load_policy


def _budget_span(policy: Policy) -> str:
    window = policy.slurm.budget_window_s
    return f"per {window:g} s per site" if window > 0 else "per action (no slurm.budget_window_s)"


def _gpu(policy: Policy) -> str:
    gpu = policy.gpu
    if gpu is None:
        return "GPU lever off (no gpu section)"
    return (f"GPU lever: SM clock locked no lower than {gpu.min_sm_clock_mhz} MHz, power limit no lower than "
            f"{gpu.min_power_limit_w:g} W, for at most {gpu.max_duration_s:g} s")


def _llm(policy: Policy) -> str:
    llm = policy.llm
    if llm is None:
        return "LLM lever off (no llm section)"
    return (f"LLM lever: shift up to {llm.max_shift_pct:g}%, maxconn at least {llm.min_maxconn}, "
            f"SLO first byte {llm.slo_ttfb_s:g} s and queue {llm.slo_queue}")


def _cooling(policy: Policy) -> str:
    c = policy.cooling
    if c is None:
        return "cooling lever off (no cooling section)"
    return (f"cooling lever: inlets {c.inlet_min_c:g}-{c.inlet_max_c:g} degC, setpoint {c.setpoint_min_c:g}-"
            f"{c.setpoint_max_c:g} degC, {c.max_step_c:g} degC a change and {c.max_change_c_per_h:g} an hour, "
            f"reverted unless verified within {c.revert_timeout_s:g} s")


def _levers(policy: Policy) -> str:
    costs = policy.levers
    if costs is None:
        return "peak levers off (no levers section: the battery alone)"
    return (f"peak levers priced: demand charge {costs.demand_charge_per_kw_month:g} per kW-month, a GPU-hour "
            f"{costs.gpu_hour:g}, battery wear {costs.battery_wear_per_kwh:g} per kWh")


def check(path: Path | str) -> int:
    """Print a verdict on a policy file; 0 when valid, 1 otherwise."""
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        print(exc)
        return 1
    modes = ", ".join(f"{kind}={rule.mode}" for kind, rule in policy.rules.items())
    print(f"{path}: valid policy {policy.label}; modes: {modes}; "
          f"protected partitions: {', '.join(policy.slurm.protected_partitions) or 'none'}; "
          f"Slurm budgets {_budget_span(policy)}; {_llm(policy)}; {_gpu(policy)}; {_cooling(policy)}; "
          f"{_levers(policy)}")
    return 0
