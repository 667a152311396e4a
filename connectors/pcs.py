"""PCS client over Modbus TCP (pymodbus): writes SunSpec model 124 setpoints and reads them back.

A setpoint is two writes: the rates and the revert timeout
(``OutWRte``..``InOutWRte_RvrtTms``), then ``StorCtl_Mod``, so the PCS never
sees a new mode with old rates. ``write_setpoint`` reads model 124 back and
returns what the PCS holds; the caller compares it with what it asked for.
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

    def describe(self) -> str:
        return (f"StorCtl_Mod={self.values['StorCtl_Mod']} OutWRte={self.values['OutWRte'] / 100:.2f}% "
                f"InWRte={self.values['InWRte'] / 100:.2f}% ({self.setpoint_kw:g} kW), revert {self.revert_s} s, "
                f"SoC {self.soc_pct:.1f}%")


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
        return PcsReading(sunspec.setpoint_from(values, wchamax), values["InOutWRte_RvrtTms"],
                          values["ChaState"] * 10 ** values["ChaState_SF"], values["ChaSt"], values)

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
        return self.read()

    def matches(self, reading: PcsReading, setpoint_kw: float) -> bool:
        """Whether the PCS holds ``setpoint_kw`` (to the register's 0.01% resolution)."""
        return abs(reading.setpoint_kw - setpoint_kw) <= self.wchamax_kw * 1e-4 + 1e-9

    def close(self) -> None:
        self.client.close()
