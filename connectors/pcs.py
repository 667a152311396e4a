"""PCS client over Modbus TCP (pymodbus): writes SunSpec model 124 setpoints and reads them back.

A setpoint is two writes: the rates and the revert timeout
(``OutWRte``..``InOutWRte_RvrtTms``), then ``StorCtl_Mod``, so the PCS never
sees a new mode with old rates. ``write_setpoint`` reads model 124 back and
returns what the PCS holds; the caller compares it with what it asked for.

A grid limit (``write_grid_limit``, the vendor block of ``models.sunspec``) is three writes:
the limit and charge ceiling with the enable, then the caps as model 124 rates, then
``StorCtl_Mod``; every state in between is safe (old rates become caps, never more power).
A plain setpoint written while a grid limit is on switches the limit off last, for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from opsloop.models import sunspec


class PcsError(RuntimeError):
    pass


@dataclass(frozen=True)
class PcsReading:
    setpoint_kw: float
    revert_s: int
    soc_pct: float
    charge_state: int
    values: dict
    grid_limit: tuple[float, float] | None = None  # (limit kW, charge ceiling kW) while grid-limit mode is on

    def describe(self) -> str:
        rates = (f"StorCtl_Mod={self.values['StorCtl_Mod']} OutWRte={self.values['OutWRte'] / 100:.2f}% "
                 f"InWRte={self.values['InWRte'] / 100:.2f}%")
        if self.grid_limit is not None:
            return (f"grid limit {self.grid_limit[0]:g} kW (charge under {self.grid_limit[1]:g} kW), {rates} as caps, "
                    f"revert {self.revert_s} s, SoC {self.soc_pct:.1f}%")
        return f"{rates} ({self.setpoint_kw:g} kW), revert {self.revert_s} s, SoC {self.soc_pct:.1f}%"

    def caps_kw(self, wchamax_kw: float) -> tuple[float, float]:
        """(discharge cap, charge cap) in kW that model 124 allows, each only with its StorCtl_Mod bit."""
        scale, mode = wchamax_kw / 100 * 10 ** sunspec.RATE_SF, self.values["StorCtl_Mod"]
        return (self.values["OutWRte"] * scale if mode & sunspec.DISCHARGE else 0.0,
                self.values["InWRte"] * scale if mode & sunspec.CHARGE else 0.0)


def parse_endpoint(endpoint: str, default_port: int = 502) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":") if ":" in endpoint else (endpoint, "", "")
    return host or "127.0.0.1", int(port) if port else default_port


class PcsClient:
    def __init__(self, host: str, port: int, unit: int = 1, timeout_s: float = 2.0):
        from pymodbus.client import ModbusTcpClient

        self.unit = unit
        self.client = ModbusTcpClient(host, port=port, timeout=timeout_s, retries=1)
        self.endpoint = f"{host}:{port}"
        self.wchamax_kw: float | None = None

    def _check(self, response, what: str):
        if response.isError():
            raise PcsError(f"PCS {self.endpoint}: {what} failed: {response}")
        return response

    def connect(self) -> None:
        if not self.client.connected and not self.client.connect():
            raise PcsError(f"PCS {self.endpoint}: cannot connect")
        if self.wchamax_kw is None:
            marker = self._check(self.client.read_holding_registers(sunspec.BASE, count=2, device_id=self.unit),
                                 "reading the SunSpec marker").registers
            if marker != [0x5375, 0x6E53]:
                raise PcsError(f"PCS {self.endpoint}: no SunSpec marker at {sunspec.BASE}")
            values = self.read().values
            if values.get("WChaMax", 0) <= 0:
                raise PcsError(f"PCS {self.endpoint}: WChaMax is not set")
            self.wchamax_kw = values["WChaMax"] * 10 ** values["WChaMax_SF"] / 1000

    def read(self) -> PcsReading:
        regs = self._check(self.client.read_holding_registers(sunspec.STORAGE_AT, count=2 + sunspec.STORAGE_LEN,
                                                              device_id=self.unit), "reading model 124").registers
        if regs[0] != sunspec.STORAGE_ID:
            raise PcsError(f"PCS {self.endpoint}: model {regs[0]} where model 124 was expected")
        values = sunspec.storage_values(regs, sunspec.STORAGE_AT)
        wchamax = self.wchamax_kw or values["WChaMax"] * 10 ** values["WChaMax_SF"] / 1000
        vendor = self._check(self.client.read_holding_registers(sunspec.GRID_LIMIT_AT, count=2 + sunspec.GRID_LIMIT_LEN,
                                                                device_id=self.unit), "reading the grid limit").registers
        limit = sunspec.grid_limit_from(vendor[2:]) if vendor[0] == sunspec.GRID_LIMIT_ID else None
        setpoint = 0.0 if limit is not None else sunspec.setpoint_from(values, wchamax)
        return PcsReading(setpoint, values["InOutWRte_RvrtTms"], values["ChaState"] * 10 ** values["ChaState_SF"],
                          values["ChaSt"], values, limit)

    def power_kw(self) -> float:
        """The AC power the PCS measures (model 103 W), in kW: + discharge, - charge."""
        self.connect()
        w, w_sf = self._check(self.client.read_holding_registers(sunspec.INVERTER_W, count=2, device_id=self.unit),
                              "reading model 103 W").registers
        return sunspec.power_kw(w, w_sf)

    def write_setpoint(self, setpoint_kw: float, revert_s: int) -> PcsReading:
        """Command a setpoint (+ discharge, - charge, 0 idle) with a revert timeout; returns the read-back."""
        self.connect()
        if not math.isfinite(setpoint_kw) or abs(setpoint_kw) > self.wchamax_kw:
            raise PcsError(f"setpoint {setpoint_kw} kW is outside the PCS rating of {self.wchamax_kw:g} kW")
        values = sunspec.setpoint_registers(setpoint_kw, revert_s, self.wchamax_kw)
        rates = [sunspec.to_u16(values["OutWRte"]), sunspec.to_u16(values["InWRte"]), 0, values["InOutWRte_RvrtTms"]]
        self._check(self.client.write_registers(sunspec.address("OutWRte"), rates, device_id=self.unit),
                    "writing the rates")
        self._check(self.client.write_register(sunspec.address("StorCtl_Mod"), values["StorCtl_Mod"],
                                               device_id=self.unit), "writing StorCtl_Mod")
        reading = self.read()
        if reading.grid_limit is not None:  # a grid limit was on: the rates just written were caps until now
            self._check(self.client.write_register(sunspec.grid_limit_address("GLimEna"), 0, device_id=self.unit),
                        "switching the grid limit off")
            reading = self.read()
        return reading

    def write_grid_limit(self, limit_kw: float, max_discharge_kw: float, charge_kw: float, charge_ceiling_kw: float,
                         revert_s: int) -> PcsReading:
        """Hold grid import at or under ``limit_kw`` (discharging at most ``max_discharge_kw``) and recharge at
        most ``charge_kw`` while import stays under ``charge_ceiling_kw``, with a revert timeout."""
        self.connect()
        for name, kw in (("max_discharge_kw", max_discharge_kw), ("charge_kw", charge_kw)):
            if not math.isfinite(kw) or not 0 <= kw <= self.wchamax_kw:
                raise PcsError(f"{name} {kw} kW is outside 0..{self.wchamax_kw:g} kW (the PCS rating)")
        if not (math.isfinite(limit_kw) and math.isfinite(charge_ceiling_kw)):
            raise PcsError(f"grid limit {limit_kw} / charge ceiling {charge_ceiling_kw} kW must be finite")
        self._check(self.client.write_registers(sunspec.grid_limit_address("GLimEna"),
                                                sunspec.grid_limit_registers(limit_kw, charge_ceiling_kw),
                                                device_id=self.unit), "writing the grid limit")
        out = sunspec.setpoint_registers(max_discharge_kw, revert_s, self.wchamax_kw)
        into = sunspec.setpoint_registers(-charge_kw, revert_s, self.wchamax_kw)
        rates = [sunspec.to_u16(out["OutWRte"]), sunspec.to_u16(into["InWRte"]), 0, int(revert_s)]
        self._check(self.client.write_registers(sunspec.address("OutWRte"), rates, device_id=self.unit),
                    "writing the caps")
        self._check(self.client.write_register(sunspec.address("StorCtl_Mod"), out["StorCtl_Mod"] | into["StorCtl_Mod"],
                                               device_id=self.unit), "writing StorCtl_Mod")
        return self.read()

    def holds_grid_limit(self, reading: PcsReading, limit_kw: float, max_discharge_kw: float, charge_kw: float,
                         charge_ceiling_kw: float) -> bool:
        """Whether the PCS holds this grid limit and these caps (to the registers' resolution)."""
        if reading.grid_limit is None:
            return False
        step = self.wchamax_kw * 1e-4 + 1e-9
        out, into = reading.caps_kw(self.wchamax_kw)
        return (abs(reading.grid_limit[0] - limit_kw) <= 0.5 + 1e-9 and abs(reading.grid_limit[1] - charge_ceiling_kw)
                <= 0.5 + 1e-9 and abs(out - max_discharge_kw) <= step and abs(into - charge_kw) <= step)

    def matches(self, reading: PcsReading, setpoint_kw: float) -> bool:
        """Whether the PCS holds ``setpoint_kw`` (to the register's 0.01% resolution), not a grid limit."""
        return reading.grid_limit is None and abs(reading.setpoint_kw - setpoint_kw) <= self.wchamax_kw * 1e-4 + 1e-9

    def close(self) -> None:
        self.client.close()
