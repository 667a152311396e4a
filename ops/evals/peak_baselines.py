"""Peak-shaving strategies on one battery model, and the simulation that scores them.

Every strategy is a controller: at step ``t`` it sees the loads up to ``t - 1``
and the battery's energy, and returns a ``Command`` that the battery executes
against the real load of step ``t`` (``models.battery``). Baselines:

* no control: the battery stays idle;
* reactive threshold: discharge ``grid - T`` above ``T``, recharge below it at
  full power (never lifting import over ``T``), as open-source EMS peak-shaving
  controllers do. ``T`` is what an operator would set without hindsight: the
  ``percentile`` (default 95th) of the measured load of the previous
  ``lookback_days`` (default 28), re-set at the start of each day from the days
  before it (none on the first day, which has no history);
* oracle: the lowest billed peak any dispatch within the same limits can reach,
  month by month: bisection on the peak with an exact simulation (discharge
  what exceeds it, recharge whenever below it), which is feasible exactly when
  some dispatch is (keeping the battery as full as possible is never worse for
  the single constraint "import <= peak"). Each month starts from the energy the
  oracle's own dispatch left.

>>> from opsloop.models.battery import Battery
>>> b = Battery(capacity_kwh=100, pcs_charge_kw=50, pcs_discharge_kw=50, round_trip_efficiency=1.0, reserve_soc_pct=0)
>>> loads = [10, 10, 90, 90, 10, 10]
>>> {m: round(kw) for m, kw in oracle_limits(loads, ["m"] * 6, 3600, b, energy_kwh=0).items()}  # charge 2 x 40 kWh, shave 80
{'m': 50}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from opsloop.models.battery import IDLE, Battery, Command

# (step index, battery energy kWh, the simulation so far) -> command for that step
Controller = Callable[[int, float, "Simulation"], Command]


@dataclass
class Simulation:
    grid_kw: list[float] = field(default_factory=list)
    power_kw: list[float] = field(default_factory=list)
    energy_kwh: list[float] = field(default_factory=list)  # after each step
    violations: list[int] = field(default_factory=list)


def simulate(loads: Sequence[float], step_s: int, battery: Battery, energy_kwh: float,
             controller: Controller, shed: Sequence[dict] | None = None) -> Simulation:
    """``shed[t]`` (lever -> kW), when given, is taken off step ``t``'s load after the controller has filled it."""
    step_h, out, previous = step_s / 3600, Simulation(), 0.0
    for t, load in enumerate(loads):
        command = controller(t, energy_kwh, out)
        result = battery.step(energy_kwh, command, load - sum(shed[t].values()) if shed else load, step_h, previous)
        energy_kwh, previous = result.energy_kwh, result.power_kw
        out.grid_kw.append(result.grid_kw)
        out.power_kw.append(result.power_kw)
        out.energy_kwh.append(energy_kwh)
        out.violations.append(result.violations)
    return out


def no_control(t: int, energy_kwh: float, sim: Simulation) -> Command:
    return IDLE


class ReactiveThreshold:
    """The reactive baseline's controller (see the module doc); ``day_of[t]`` numbers each step's day."""

    def __init__(self, loads: Sequence[float], day_of: Sequence[int], step_s: int, battery: Battery,
                 percentile: float = 95.0, lookback_days: int = 28):
        self.loads, self.day_of, self.step_h, self.battery = loads, day_of, step_s / 3600, battery
        self.percentile = percentile
        self.lookback_days = lookback_days
        self._day, self.limit_kw = None, math.inf
        self.limits: dict[int, float] = {}  # day -> T, for the report

    def __call__(self, t: int, energy_kwh: float, sim: Simulation) -> Command:
        if self.day_of[t] != self._day:
            self._day = self.day_of[t]
            seen = [x for x, d in zip(self.loads[:t], self.day_of[:t]) if d >= self._day - self.lookback_days]
            self.limit_kw = percentile(seen, self.percentile) if seen else math.inf
            self.limits[self._day] = self.limit_kw
        if math.isinf(self.limit_kw):
            return IDLE
        b = self.battery
        return Command(self.limit_kw, b.max_discharge_kw(energy_kwh, self.step_h), b.max_charge_kw(energy_kwh, self.step_h))


def percentile(values: Sequence[float], q: float) -> float:
    ranked = sorted(values)
    pos = (len(ranked) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ranked) - 1)
    return ranked[lo] + (ranked[hi] - ranked[lo]) * (pos - lo)


def _greedy(limit: float, battery: Battery, step_h: float) -> Controller:
    def controller(t: int, energy_kwh: float, sim: Simulation) -> Command:
        return Command(limit, battery.max_discharge_kw(energy_kwh, step_h), battery.max_charge_kw(energy_kwh, step_h))
    return controller


def oracle_limits(loads: Sequence[float], month_of: Sequence[str], step_s: int, battery: Battery,
                  energy_kwh: float, tolerance_kw: float = 0.5) -> dict[str, float]:
    """The lowest peak each month can reach, months in order, each from the oracle's energy at its start."""
    step_h, limits = step_s / 3600, {}
    months = list(dict.fromkeys(month_of))
    for month in months:
        first = month_of.index(month)
        last = len(month_of) - month_of[::-1].index(month)
        chunk = loads[first:last]

        def holds(limit: float) -> bool:
            sim = simulate(chunk, step_s, battery, energy_kwh, _greedy(limit, battery, step_h))
            return max(sim.grid_kw) <= limit + 1e-6

        hi = max(chunk)
        lo = max(0.0, hi - battery.pcs_discharge_kw)
        if not holds(lo):
            while hi - lo > tolerance_kw:
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if holds(mid) else (mid, hi)
        else:
            hi = lo
        limits[month] = hi
        energy_kwh = simulate(chunk, step_s, battery, energy_kwh, _greedy(hi, battery, step_h)).energy_kwh[-1]
    return limits


def oracle_controller(limits: dict[str, float], month_of: Sequence[str], step_s: int, battery: Battery) -> Controller:
    step_h = step_s / 3600

    def controller(t: int, energy_kwh: float, sim: Simulation) -> Command:
        return _greedy(limits[month_of[t]], battery, step_h)(t, energy_kwh, sim)
    return controller
