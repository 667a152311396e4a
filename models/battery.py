"""A battery behind its PCS: integrates state of charge from the commanded power, with the time passed in.

Positive power discharges into the site, negative charges. The PCS clamps the
command to its ratings, stops discharging at ``min_soc_pct`` and charging at
100%, and falls back to idle by itself when a revert timeout passes without a
new command (so a silent controller cannot leave it discharging). One-way
losses are the square root of the round-trip efficiency; usable energy is the
nameplate capacity times the state of health.

>>> b = Battery(capacity_kwh=1000, max_charge_kw=500, max_discharge_kw=500, soc_pct=50, now_s=0)
>>> b.command(400, revert_s=1800, now_s=0)
400.0
>>> b.advance(900)  # a quarter hour at 400 kW = 100 kWh = 10% of 1000 kWh
>>> round(b.soc_pct, 6), b.power_kw
(40.0, 400.0)
>>> b.advance(3600)  # the revert timeout passed at 1800 s: idle since then
>>> round(b.soc_pct, 6), b.power_kw, b.reverted
(30.0, 0.0, True)
"""

from __future__ import annotations

import math


class Battery:
    def __init__(self, capacity_kwh: float, max_charge_kw: float, max_discharge_kw: float,
                 round_trip_efficiency: float = 1.0, soc_pct: float = 50.0, soh_pct: float = 100.0,
                 min_soc_pct: float = 0.0, now_s: float = 0.0):
        self.capacity_kwh = capacity_kwh
        self.max_charge_kw = max_charge_kw
        self.max_discharge_kw = max_discharge_kw
        self.round_trip_efficiency = round_trip_efficiency
        self.soc_pct = soc_pct
        self.soh_pct = soh_pct
        self.min_soc_pct = min_soc_pct
        self.now_s = now_s
        self.setpoint_kw = 0.0  # what the PCS was told, clamped to its ratings
        self.revert_at_s: float | None = None
        self.reverted = False

    @property
    def usable_kwh(self) -> float:
        return self.capacity_kwh * self.soh_pct / 100

    @property
    def power_kw(self) -> float:
        """Power actually flowing now: the setpoint, or 0 at an empty or full battery."""
        if self.setpoint_kw > 0 and self.soc_pct <= self.min_soc_pct:
            return 0.0
        if self.setpoint_kw < 0 and self.soc_pct >= 100.0:
            return 0.0
        return self.setpoint_kw

    def command(self, setpoint_kw: float, revert_s: float | None, now_s: float) -> float:
        """Apply a new setpoint at ``now_s`` (integrating up to then first); returns the clamped setpoint."""
        self.advance(now_s)
        self.setpoint_kw = float(min(self.max_discharge_kw, max(-self.max_charge_kw, setpoint_kw)))
        self.revert_at_s = now_s + revert_s if revert_s and self.setpoint_kw != 0 else None
        self.reverted = False
        return self.setpoint_kw

    def advance(self, now_s: float) -> None:
        """Integrate to ``now_s``, reverting to idle at the revert deadline; time never runs backwards."""
        if now_s <= self.now_s:
            return
        if self.revert_at_s is not None and self.revert_at_s <= now_s:
            self._integrate(max(self.revert_at_s, self.now_s))
            self.setpoint_kw, self.revert_at_s, self.reverted = 0.0, None, True
        self._integrate(now_s)

    def _integrate(self, until_s: float) -> None:
        dt_h = (until_s - self.now_s) / 3600
        self.now_s = until_s
        power = self.power_kw
        if power == 0 or dt_h <= 0:
            return
        one_way = math.sqrt(self.round_trip_efficiency)
        stored_kwh = power * dt_h / one_way if power > 0 else power * dt_h * one_way
        soc = self.soc_pct - stored_kwh / self.usable_kwh * 100
        self.soc_pct = min(100.0, max(self.min_soc_pct, soc))  # the PCS stops at the bounds
