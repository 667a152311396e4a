"""The battery/ESS model of opsloop: the planner, the guard and the PCS simulator all integrate energy here.

``Battery`` holds an ESS's ratings (``Battery.from_spec`` takes them from the site's
``EssSpec``, so the defaults are the site file's). Positive power discharges into the
site, negative charges. Efficiency is split evenly: the square root of the round trip
each way, so delivering ``p`` kW for ``h`` hours draws ``p * h / eta`` kWh from storage
and charging stores ``p * h * eta``. State of charge is a percent of usable energy
(nameplate x state of health). ``soc_after`` is that integration, unbounded (the guard
checks where it ends); ``step`` is one planning step of a peak-shaving ``Command``, with
limit violations clipped and counted; ``holds`` and ``dispatch`` run the same
arithmetic over a whole forecast for the planner (inlined: its hot path).

``PcsBattery`` is the same battery as its PCS runs it, in time: the setpoint is clamped to
the ratings, discharging stops at ``min_soc_pct`` and charging at 100%, and a revert
timeout returns the PCS to idle when no new command arrives (a silent controller cannot
leave it discharging). ``follow`` puts it in grid-limit mode: a ``Command`` applied to the site
load it last measured (``measure``), so power follows the meter within the step, and discharge
stops at the battery's reserve (the PCS is the controller keeping it then).

>>> b = Battery(capacity_kwh=1000, pcs_charge_kw=500, pcs_discharge_kw=500, round_trip_efficiency=0.81,
...             reserve_soc_pct=10)
>>> round(b.soc_after(50, 90, 3600), 6)  # 90 kWh delivered at 90% one way = 100 kWh out of storage
40.0
>>> r = b.step(energy_kwh=900, command=Command(limit_kw=1000, max_discharge_kw=500), load_kw=1200, step_h=1.0)
>>> r.power_kw, r.grid_kw, round(r.energy_kwh), r.violations
(200, 1000, 678, 0)
>>> r = b.step(300, Command(limit_kw=1000, max_discharge_kw=500), load_kw=1600, step_h=1.0)  # asks for 500 kW
>>> round(r.power_kw), r.violations  # gets what the reserve allows, and it is counted
(180, 1)
>>> pcs = PcsBattery(Battery(1000, 500, 500, round_trip_efficiency=1.0), soc_pct=50, now_s=0)
>>> pcs.command(400, revert_s=1800, now_s=0)
400.0
>>> pcs.advance(900)  # a quarter hour at 400 kW = 100 kWh = 10% of 1000 kWh
>>> round(pcs.soc_pct, 6), pcs.power_kw
(40.0, 400.0)
>>> pcs.advance(3600)  # the revert timeout passed at 1800 s: idle since then
>>> round(pcs.soc_pct, 6), pcs.power_kw, pcs.reverted
(30.0, 0.0, True)
>>> pcs.follow(Command(limit_kw=1000, max_discharge_kw=300), revert_s=900, now_s=3600)
>>> pcs.measure(1200, now_s=3600); pcs.power_kw  # holds 1,000 kW of import
200.0
>>> pcs.measure(1500, now_s=3700); pcs.power_kw  # at its cap
300.0
>>> pcs.measure(900, now_s=3800); pcs.power_kw  # under the limit: no recharge asked
0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Sequence

from opsloop.config.site import EssSpec


@dataclass(frozen=True)
class Battery:
    """An ESS's ratings; the defaults are ``EssSpec``'s. ``ramp_kw_per_s``: the fastest allowed change of power."""

    capacity_kwh: float  # nameplate
    pcs_charge_kw: float
    pcs_discharge_kw: float
    round_trip_efficiency: float = EssSpec.round_trip_efficiency
    reserve_soc_pct: float = EssSpec.reserve_soc_pct  # never discharge below this state of charge
    soh_pct: float = EssSpec.soh_pct
    ramp_kw_per_s: float = math.inf
    max_soc_pct: float = 100.0  # never charge above this state of charge (a guard's maximum; the plant stops at 100)

    @classmethod
    def from_spec(cls, spec: EssSpec, **changes) -> "Battery":
        """The battery of a site's ESS entry; ``changes`` replace ratings (e.g. a resized battery)."""
        ratings = {f.name: getattr(spec, f.name) for f in fields(cls) if hasattr(spec, f.name)}
        return cls(**{**ratings, **changes})

    @property
    def full_kwh(self) -> float:
        """Usable energy: nameplate x state of health."""
        return self.capacity_kwh * self.soh_pct / 100.0

    @property
    def reserve_kwh(self) -> float:
        return self.full_kwh * self.reserve_soc_pct / 100.0

    @property
    def ceiling_kwh(self) -> float:
        """The most energy charging may store: usable energy at ``max_soc_pct``."""
        return self.full_kwh * self.max_soc_pct / 100.0

    @property
    def eta(self) -> float:
        """One-way efficiency."""
        return math.sqrt(self.round_trip_efficiency)

    def soc_pct(self, energy_kwh: float) -> float:
        return 100.0 * energy_kwh / self.full_kwh if self.full_kwh else 0.0

    def energy_kwh(self, soc_pct: float) -> float:
        return self.full_kwh * soc_pct / 100.0

    def drawn_kwh(self, power_kw: float, hours: float) -> float:
        """Energy that leaves storage while the PCS delivers ``power_kw`` for ``hours`` (negative: stored)."""
        return power_kw * hours / self.eta if power_kw > 0 else power_kw * hours * self.eta

    def soc_after(self, soc_pct: float, power_kw: float, seconds: float) -> float:
        """State of charge after holding ``power_kw`` for ``seconds``; not bounded, so a caller sees overshoot."""
        return soc_pct - self.drawn_kwh(power_kw, seconds / 3600) / self.full_kwh * 100

    def max_discharge_kw(self, energy_kwh: float, step_h: float) -> float:
        """Most power the battery can deliver for a whole step without passing its reserve."""
        return max(0.0, min(self.pcs_discharge_kw, (energy_kwh - self.reserve_kwh) * self.eta / step_h))

    def max_charge_kw(self, energy_kwh: float, step_h: float) -> float:
        """Most power the battery can take for a whole step without passing ``max_soc_pct``."""
        return max(0.0, min(self.pcs_charge_kw, (self.ceiling_kwh - energy_kwh) / (self.eta * step_h)))

    def step(self, energy_kwh: float, command: "Command", load_kw: float, step_h: float,
             previous_kw: float = 0.0) -> "StepResult":
        """One step of ``command`` against the load measured within it; past limits are clipped and counted."""
        wanted = command.power_for(load_kw)
        violations = 0
        if wanted > self.pcs_discharge_kw + 1e-6 or -wanted > self.pcs_charge_kw + 1e-6:
            violations += 1
            wanted = max(-self.pcs_charge_kw, min(self.pcs_discharge_kw, wanted))
        if wanted > 0 and wanted > self.max_discharge_kw(energy_kwh, step_h) + 1e-6:
            violations += 1  # would pass the reserve
            wanted = self.max_discharge_kw(energy_kwh, step_h)
        if wanted < 0 and -wanted > self.max_charge_kw(energy_kwh, step_h) + 1e-6:
            violations += 1  # would overfill
            wanted = -self.max_charge_kw(energy_kwh, step_h)
        if abs(wanted - previous_kw) > self.ramp_kw_per_s * step_h * 3600 + 1e-6:
            violations += 1
        energy = energy_kwh - self.drawn_kwh(wanted, step_h)
        energy = min(max(self.ceiling_kwh, energy_kwh), max(min(self.reserve_kwh, energy_kwh), energy))  # float dust
        return StepResult(power_kw=wanted, grid_kw=load_kw - wanted, energy_kwh=energy, violations=violations)

    # The planner's simulations over a forecast: ``drawn_kwh`` inlined, as they run inside its bisection.

    def holds(self, load: Sequence[float], charge_at: Sequence[bool], energy_kwh: float, step_h: float,
              limit_kw: float, ceiling_kw: float) -> bool:
        """Can the battery keep import at or under ``limit_kw`` at every step, recharging under ``ceiling_kw``
        in the ``charge_at`` steps?"""
        reserve, full, eta, energy = self.reserve_kwh, self.ceiling_kwh, self.eta, energy_kwh
        for kw, charge in zip(load, charge_at):
            if kw > limit_kw:
                need = kw - limit_kw
                if need > self.pcs_discharge_kw:
                    return False
                energy -= need * step_h / eta
                if energy < reserve - 1e-9:
                    return False
            elif charge and energy < full:
                energy += min(self.pcs_charge_kw, ceiling_kw - kw, (full - energy) / (eta * step_h)) * step_h * eta \
                    if ceiling_kw > kw else 0.0
        return True

    def dispatch(self, load: Sequence[float], charge_at: Sequence[bool], energy_kwh: float, step_h: float,
                 target_kw: float, ceiling_kw: float) -> list[float]:
        """Expected PCS power per step: what ``step`` does under the planner's commands."""
        reserve, full, eta, energy = self.reserve_kwh, self.ceiling_kwh, self.eta, energy_kwh
        out = []
        for kw, charge in zip(load, charge_at):
            if kw > target_kw:
                power = min(kw - target_kw, self.pcs_discharge_kw, max(0.0, (energy - reserve) * eta / step_h))
                energy -= power * step_h / eta
            elif charge and ceiling_kw > kw:
                power = -min(ceiling_kw - kw, self.pcs_charge_kw, max(0.0, (full - energy) / (eta * step_h)))
                energy -= power * step_h * eta
            else:
                power = 0.0
            out.append(power)
        return out


@dataclass(frozen=True)
class Command:
    """Hold grid import at ``limit_kw`` for one step, as peak-shaving EMS controllers do.

    The PCS follows the site meter within the step: it discharges ``load - limit`` (at most
    ``max_discharge_kw``) when the load is above the limit, and charges up to ``charge_kw``
    (never lifting import above ``charge_ceiling_kw``) when it is below.
    """

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


class PcsBattery:
    """A battery behind its PCS, in time (passed in): setpoint, state of charge and revert timer."""

    def __init__(self, battery: Battery, soc_pct: float = 50.0, min_soc_pct: float = 0.0, now_s: float = 0.0):
        self.battery = battery
        self.soc_pct = soc_pct
        self.min_soc_pct = min_soc_pct  # the plant stops here; the reserve is the controller's to keep
        self.now_s = now_s
        self.setpoint_kw = 0.0  # what the PCS was told, clamped to its ratings
        self.revert_at_s: float | None = None
        self.reverted = False
        self.grid_limit: Command | None = None  # grid-limit mode: what it holds, or None for a fixed setpoint
        self.site_kw = 0.0  # the site load behind the grid meter, as last measured

    @property
    def power_kw(self) -> float:
        """Power actually flowing now: the setpoint (or the grid limit's), 0 at an empty or full battery."""
        power, floor = self.setpoint_kw, self.min_soc_pct
        if self.grid_limit is not None:
            power = float(self.grid_limit.power_for(self.site_kw)) + 0.0  # never -0.0
            floor = max(floor, self.battery.reserve_soc_pct)
        if power > 0 and self.soc_pct <= floor:
            return 0.0
        if power < 0 and self.soc_pct >= 100.0:
            return 0.0
        return power

    def follow(self, command: "Command", revert_s: float | None, now_s: float) -> None:
        """Hold ``command``'s grid limit from ``now_s`` on, its power caps clamped to the ratings."""
        self.advance(now_s)
        b = self.battery
        self.grid_limit = replace(command, max_discharge_kw=min(b.pcs_discharge_kw, max(0.0, command.max_discharge_kw)),
                                  charge_kw=min(b.pcs_charge_kw, max(0.0, command.charge_kw)))
        self.setpoint_kw = 0.0
        self.revert_at_s = now_s + revert_s if revert_s else None
        self.reverted = False

    def measure(self, site_kw: float, now_s: float) -> None:
        """The site meter reads ``site_kw`` at ``now_s`` (integrating up to then at the power before)."""
        self.advance(now_s)
        self.site_kw = float(site_kw)

    def command(self, setpoint_kw: float, revert_s: float | None, now_s: float) -> float:
        """Apply a new setpoint at ``now_s`` (integrating up to then first); returns the clamped setpoint."""
        self.advance(now_s)
        b = self.battery
        self.setpoint_kw = float(min(b.pcs_discharge_kw, max(-b.pcs_charge_kw, setpoint_kw)))
        self.grid_limit = None
        self.revert_at_s = now_s + revert_s if revert_s and self.setpoint_kw != 0 else None
        self.reverted = False
        return self.setpoint_kw

    def advance(self, now_s: float) -> None:
        """Integrate to ``now_s``, reverting to idle at the revert deadline; time never runs backwards."""
        if now_s <= self.now_s:
            return
        if self.revert_at_s is not None and self.revert_at_s <= now_s:
            self._integrate(max(self.revert_at_s, self.now_s))
            self.setpoint_kw, self.grid_limit, self.revert_at_s, self.reverted = 0.0, None, None, True
        self._integrate(now_s)

    def _integrate(self, until_s: float) -> None:
        seconds = until_s - self.now_s
        self.now_s = until_s
        power = self.power_kw
        if power == 0 or seconds <= 0:
            return
        soc = self.battery.soc_after(self.soc_pct, power, seconds)
        floor = self.min_soc_pct if self.grid_limit is None else max(self.min_soc_pct, self.battery.reserve_soc_pct)
        self.soc_pct = min(100.0, max(min(floor, self.soc_pct), soc))  # the PCS stops at the bounds
