"""One battery model for every peak-shaving strategy: limits, one step of dispatch, limit checks.

A command holds grid import at ``limit_kw`` for one step: the PCS follows the
site meter within the step, as peak-shaving EMS controllers do, discharging
``load - limit`` (at most ``max_discharge_kw``) when the load is above the
limit and charging up to ``charge_kw`` (never lifting import above
``charge_ceiling_kw``) when it is below. Efficiency is split evenly between
charge and discharge (sqrt of the round trip each way). State of charge is a
percent of usable capacity (nameplate x state of health).

Limit violations are counted, never hidden: a command that would take the
battery past its reserve or past full, ask the PCS for more than its rating, or
change power faster than the ramp limit is clipped to the limit and counted.

>>> b = Battery(capacity_kwh=1000, charge_kw=500, discharge_kw=500, efficiency=0.81, reserve_pct=10)
>>> r = b.step(energy_kwh=900, command=Command(limit_kw=1000, max_discharge_kw=500), load_kw=1200, step_h=1.0)
>>> r.power_kw, r.grid_kw, round(r.energy_kwh), r.violations
(200, 1000, 678, 0)
>>> r = b.step(300, Command(limit_kw=1000, max_discharge_kw=500), load_kw=1600, step_h=1.0)  # asks for 500 kW
>>> round(r.power_kw), r.violations  # gets what the reserve allows, and it is counted
(180, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Battery:
    """ESS and PCS limits. ``ramp_kw_per_s``: the fastest allowed change of PCS power."""

    capacity_kwh: float
    charge_kw: float
    discharge_kw: float
    efficiency: float = 0.90  # round trip
    reserve_pct: float = 10.0  # never discharge below this state of charge
    soh_pct: float = 100.0
    ramp_kw_per_s: float = math.inf

    @property
    def full_kwh(self) -> float:
        return self.capacity_kwh * self.soh_pct / 100.0

    @property
    def reserve_kwh(self) -> float:
        return self.full_kwh * self.reserve_pct / 100.0

    @property
    def eta(self) -> float:
        """One-way efficiency."""
        return math.sqrt(self.efficiency)

    def soc_pct(self, energy_kwh: float) -> float:
        return 100.0 * energy_kwh / self.full_kwh if self.full_kwh else 0.0

    def energy_kwh(self, soc_pct: float) -> float:
        return self.full_kwh * soc_pct / 100.0

    def max_discharge_kw(self, energy_kwh: float, step_h: float) -> float:
        """Most power the battery can deliver for a whole step without passing its reserve."""
        return max(0.0, min(self.discharge_kw, (energy_kwh - self.reserve_kwh) * self.eta / step_h))

    def max_charge_kw(self, energy_kwh: float, step_h: float) -> float:
        """Most power the battery can take for a whole step without passing full."""
        return max(0.0, min(self.charge_kw, (self.full_kwh - energy_kwh) / (self.eta * step_h)))

    def step(self, energy_kwh: float, command: "Command", load_kw: float, step_h: float,
             previous_kw: float = 0.0) -> "StepResult":
        wanted = command.power_for(load_kw)
        violations = 0
        if wanted > self.discharge_kw + 1e-6 or -wanted > self.charge_kw + 1e-6:
            violations += 1
            wanted = max(-self.charge_kw, min(self.discharge_kw, wanted))
        if wanted > 0 and wanted > self.max_discharge_kw(energy_kwh, step_h) + 1e-6:
            violations += 1  # would pass the reserve
            wanted = self.max_discharge_kw(energy_kwh, step_h)
        if wanted < 0 and -wanted > self.max_charge_kw(energy_kwh, step_h) + 1e-6:
            violations += 1  # would overfill
            wanted = -self.max_charge_kw(energy_kwh, step_h)
        if abs(wanted - previous_kw) > self.ramp_kw_per_s * step_h * 3600 + 1e-6:
            violations += 1
        if wanted >= 0:
            energy = energy_kwh - wanted * step_h / self.eta
        else:
            energy = energy_kwh - wanted * step_h * self.eta
        energy = min(self.full_kwh, max(min(self.reserve_kwh, energy_kwh), energy))  # float dust only
        return StepResult(power_kw=wanted, grid_kw=load_kw - wanted, energy_kwh=energy, violations=violations)


@dataclass(frozen=True)
class Command:
    """Hold grid import at ``limit_kw`` for one step (see the module doc)."""

    limit_kw: float
    max_discharge_kw: float = 0.0
    charge_kw: float = 0.0
    charge_ceiling_kw: float | None = None  # default: limit_kw

    def power_for(self, load_kw: float) -> float:
        """PCS power (positive = discharge) for a load measured within the step."""
        if load_kw > self.limit_kw:
            return min(load_kw - self.limit_kw, self.max_discharge_kw)
        ceiling = self.limit_kw if self.charge_ceiling_kw is None else self.charge_ceiling_kw
        return -max(0.0, min(self.charge_kw, ceiling - load_kw))


IDLE = Command(limit_kw=math.inf)


@dataclass(frozen=True)
class StepResult:
    power_kw: float
    grid_kw: float
    energy_kwh: float
    violations: int
