"""Verification: does what we observe after an action match what it was meant to do, within its window?

>>> judge_power(2000.0, [0.0, 1990.0], now_ms=5_000, deadline_ms=30_000)
Outcome(status='verified', text='ESS power 1990 kW matches the 2000 kW setpoint (tolerance 100 kW)')
>>> judge_power(2000.0, [0.0], now_ms=31_000, deadline_ms=30_000).status
'failed'
>>> judge_grid_limit(1000.0, 500.0, 0.0, 900.0, [(0.0, 1400.0), (390.0, 1010.0)], now_ms=5_000, deadline_ms=30_000)
Outcome(status='verified', text='ESS power 390 kW holds grid import at 1,010 kW against the 1,000 kW limit (expected 400 kW, tolerance 50 kW)')
>>> judge_jobs({"7": {"SUSPENDED"}}, {"7": "RUNNING"}, now_ms=1, deadline_ms=2).status
'pending'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from opsloop.models.battery import Command

VERIFIED, FAILED, PENDING = "verified", "failed", "pending"


@dataclass(frozen=True)
class Outcome:
    status: str
    text: str


def power_tolerance_kw(expected_kw: float) -> float:
    return max(50.0, 0.05 * abs(expected_kw))


def pending_or_failed(now_ms: int, deadline_ms: int, waiting: str, failed: str) -> Outcome:
    """What is not verified yet: pending while the window is open, failed from its deadline on."""
    return Outcome(PENDING, waiting) if now_ms < deadline_ms else Outcome(FAILED, failed)


def judge_power(expected_kw: float, observed_kw: Iterable[float], now_ms: int, deadline_ms: int) -> Outcome:
    """Verified once any observation after execution is within tolerance; failed at the deadline otherwise."""
    tolerance = power_tolerance_kw(expected_kw)
    seen = list(observed_kw)
    for value in seen:
        if abs(value - expected_kw) <= tolerance:
            return Outcome(VERIFIED, f"ESS power {value:g} kW matches the {expected_kw:g} kW setpoint "
                                     f"(tolerance {tolerance:g} kW)")
    last = f"last seen {seen[-1]:g} kW" if seen else "no ESS telemetry arrived"
    return pending_or_failed(now_ms, deadline_ms, f"waiting for ESS power near {expected_kw:g} kW",
                             f"ESS power never reached the {expected_kw:g} kW setpoint within the window ({last})")


def judge_grid_limit(limit_kw: float, max_discharge_kw: float, charge_kw: float, charge_ceiling_kw: float,
                     observed: Iterable[tuple[float, float]], now_ms: int, deadline_ms: int) -> Outcome:
    """``observed``: (ESS kW, grid kW) windows after execution. Verified once the ESS gives, within tolerance,
    the power the grid limit calls for at that window's site load (grid + ESS); failed at the deadline otherwise."""
    command = Command(limit_kw, max_discharge_kw, charge_kw, charge_ceiling_kw)  # what the PCS itself runs
    seen = [(float(ess), float(grid)) for ess, grid in observed]
    for ess, grid in seen:
        expected = command.power_for(grid + ess)
        tolerance = power_tolerance_kw(expected)
        if abs(ess - expected) <= tolerance:
            return Outcome(VERIFIED, f"ESS power {ess:g} kW holds grid import at {grid:,.0f} kW against the "
                                     f"{limit_kw:,.0f} kW limit (expected {expected:g} kW, tolerance {tolerance:g} kW)")
    last = f"last seen {seen[-1][0]:g} kW at {seen[-1][1]:,.0f} kW import" if seen else "no ESS telemetry arrived"
    return pending_or_failed(now_ms, deadline_ms,
                             f"waiting for ESS power that holds grid import at {limit_kw:,.0f} kW",
                             f"the ESS never held grid import at the {limit_kw:,.0f} kW limit within the window ({last})")


def judge_jobs(expected: Mapping[str, set[str]], observed: Mapping[str, str], now_ms: int,
               deadline_ms: int) -> Outcome:
    """Every job in one of its expected states → verified; a job missing from the queue counts as done."""
    wrong = {job: observed[job] for job, states in expected.items() if job in observed and observed[job] not in states}
    if not wrong:
        return Outcome(VERIFIED, f"{len(expected)} job(s) in the expected state")
    listing = ", ".join(f"{job} is {state} (expected {'/'.join(sorted(expected[job]))})" for job, state in wrong.items())
    return pending_or_failed(now_ms, deadline_ms, f"{len(wrong)} job(s) not yet in the expected state",
                             f"within the window: {listing}")
