"""The SunSpec register map opsloop's PCS speaks, and the scaling between kW and register values.

Holding registers from ``BASE`` (40000): the ``SunS`` marker, the common model
(1), an inverter model (103, for the measured AC power ``W``), the basic
storage controls model (124), the battery base model (802: the BMS's state of
charge and health, DC power and alarm bits), two wye-connected AC meters (203: the
grid meter, then the facility meter) and the end marker. The models after 124 were
added after the first three without moving them, so a client with fixed addresses
for 1/103/124 reads what it always read; live readers discover the chain instead. Model 124 carries what the
sink writes: ``StorCtl_Mod`` (bit 0 charge, bit 1 discharge), ``OutWRte`` /
``InWRte`` (discharge / charge rate in % of ``WChaMax``) and
``InOutWRte_RvrtTms`` (seconds after which the PCS reverts to idle by itself),
and what it reads: ``ChaState`` (state of charge), ``ChaSt``, ``MinRsvPct``.
Values with a scale factor are ``value x 10^SF``.

After the end marker, a vendor block (id 64901, outside the chain) holds a grid-limit
("peak-shaving", load-following) mode: ``GLimEna``, ``GLimW`` (grid import to hold, int32 W),
``GLimChaW`` (the import a recharge must stay under, int32 W). While it is on,
model 124's rates are caps, not setpoints: the PCS reads the site meter and discharges
just enough (at most ``OutWRte``) to keep import at or under ``GLimW``, and charges (at most
``InWRte``, when ``StorCtl_Mod`` allows it) while import stays under ``GLimChaW``. The revert
timeout ends the mode too. Real controllers offer this mode under their own registers:
Victron's ESS (the GX device's grid setpoint, Modbus register 2700), SMA's peak-load-shaving
operating mode, and the site controllers of utility-scale systems (Tesla's Megapack site
controller, Fluence's) as demand-charge management; SunSpec has no standard model for it.

>>> rates = setpoint_registers(2500.0, revert_s=600, wchamax_kw=5000)
>>> rates
{'StorCtl_Mod': 2, 'OutWRte': 5000, 'InWRte': 0, 'InOutWRte_RvrtTms': 600}
>>> setpoint_from(rates, wchamax_kw=5000)
2500.0
>>> setpoint_from(setpoint_registers(-1250.0, 60, 5000), 5000)
-1250.0
"""

from __future__ import annotations

from opsloop.models import sunspec_points

BASE = 40000
COMMON_ID, COMMON_LEN = 1, 66
INVERTER_ID, INVERTER_LEN = 103, 50
STORAGE_ID, STORAGE_LEN = 124, 24
BATTERY_ID, BATTERY_LEN = 802, 62
METER_ID, METER_LEN = 203, 105

COMMON_AT = BASE + 2  # model id register of the common model
INVERTER_AT = COMMON_AT + 2 + COMMON_LEN
STORAGE_AT = INVERTER_AT + 2 + INVERTER_LEN
BATTERY_AT = STORAGE_AT + 2 + STORAGE_LEN
GRID_METER_AT = BATTERY_AT + 2 + BATTERY_LEN
FACILITY_METER_AT = GRID_METER_AT + 2 + METER_LEN
END_AT = FACILITY_METER_AT + 2 + METER_LEN
# The vendor grid-limit block sits right after the end marker: outside the SunSpec model chain, as vendors
# keep their own control registers, so a SunSpec scan never meets a model it has no definition for.
GRID_LIMIT_AT = END_AT + 2
GRID_LIMIT_ID, GRID_LIMIT_LEN = 64_901, 5
REGISTER_COUNT = GRID_LIMIT_AT + 2 + GRID_LIMIT_LEN - BASE

#: Model 124 point offsets (after its id and length registers).
STORAGE_POINTS = ("WChaMax", "WChaGra", "WDisChaGra", "StorCtl_Mod", "VAChaMax", "MinRsvPct", "ChaState",
                  "StorAval", "InBatV", "ChaSt", "OutWRte", "InWRte", "InOutWRte_WinTms", "InOutWRte_RvrtTms",
                  "InOutWRte_RmpTms", "ChaGriSet", "WChaMax_SF", "WChaDisChaGra_SF", "VAChaMax_SF",
                  "MinRsvPct_SF", "ChaState_SF", "StorAval_SF", "InBatV_SF", "InOutWRte_SF")
SIGNED = {"OutWRte", "InWRte", "WChaMax_SF", "WChaDisChaGra_SF", "VAChaMax_SF", "MinRsvPct_SF", "ChaState_SF",
          "StorAval_SF", "InBatV_SF", "InOutWRte_SF", "W", "W_SF"}
#: The points a controller writes; the rest of model 124 is status and rejects writes.
CONTROL_POINTS = ("StorCtl_Mod", "OutWRte", "InWRte", "InOutWRte_WinTms", "InOutWRte_RvrtTms", "InOutWRte_RmpTms")
#: Vendor grid-limit registers (after the block's id and length): enable (0/1), then the grid import limit and
#: the charge ceiling, each an int32 in W over two registers (high word first): a site's import passes int16.
GRID_LIMIT_POINTS = ("GLimEna", "GLimW", "GLimW_lo", "GLimChaW", "GLimChaW_lo")
INVERTER_W = INVERTER_AT + 2 + 12  # W and W_SF in model 103
CHARGE, DISCHARGE = 1, 2  # StorCtl_Mod bits
CHA_ST = {"off": 1, "empty": 2, "discharging": 3, "charging": 4, "full": 5, "holding": 6}
# W x 100, % x 0.01, % x 0.1, W x 1000 (int16: up to 32.7 MW; x 100 wrapped above 3.27 MW)
WCHAMAX_SF, RATE_SF, SOC_SF, W_SF = 2, -2, -1, 3


def address(point: str) -> int:
    return STORAGE_AT + 2 + STORAGE_POINTS.index(point)


def to_u16(value: int) -> int:
    return value & 0xFFFF


def from_u16(point: str, raw: int) -> int:
    return raw - 0x10000 if point in SIGNED and raw >= 0x8000 else raw


def power_kw(w: int, w_sf: int) -> float:
    """The AC power of model 103's ``W`` and ``W_SF`` registers (raw), in kW (+ discharge, - charge).

    >>> power_kw(to_u16(-2500), to_u16(3)), power_kw(4200, 3)
    (-2500.0, 4200.0)
    """
    sf = w_sf - 0x10000 if w_sf >= 0x8000 else w_sf
    return from_u16("W", w) * 10 ** sf / 1000


def setpoint_registers(setpoint_kw: float, revert_s: int, wchamax_kw: float) -> dict[str, int]:
    """Model 124 control values for a setpoint (+ discharge, - charge, 0 idle) with a revert timeout."""
    pct = round(abs(setpoint_kw) / wchamax_kw * 100 / 10 ** RATE_SF)
    if pct == 0:
        return {"StorCtl_Mod": 0, "OutWRte": 0, "InWRte": 0, "InOutWRte_RvrtTms": int(revert_s)}
    if setpoint_kw > 0:
        return {"StorCtl_Mod": DISCHARGE, "OutWRte": pct, "InWRte": 0, "InOutWRte_RvrtTms": int(revert_s)}
    return {"StorCtl_Mod": CHARGE, "OutWRte": 0, "InWRte": pct, "InOutWRte_RvrtTms": int(revert_s)}


def setpoint_from(values: dict[str, int], wchamax_kw: float) -> float:
    """The setpoint in kW that model 124 control values command (the inverse of ``setpoint_registers``)."""
    mode = values["StorCtl_Mod"]
    scale = wchamax_kw / 100 * 10 ** RATE_SF
    if mode & DISCHARGE and not mode & CHARGE:
        return values["OutWRte"] * scale
    if mode & CHARGE and not mode & DISCHARGE:
        return -values["InWRte"] * scale
    return 0.0


def grid_limit_address(point: str) -> int:
    return GRID_LIMIT_AT + 2 + GRID_LIMIT_POINTS.index(point)


def _int32_words(value: int) -> list[int]:
    raw = value & 0xFFFFFFFF
    return [raw >> 16, raw & 0xFFFF]


def _int32(high: int, low: int) -> int:
    raw = (high << 16) | low
    return raw - 0x1_0000_0000 if raw >= 0x8000_0000 else raw


def grid_limit_registers(limit_kw: float, charge_ceiling_kw: float) -> list[int]:
    """The vendor block's five registers for a grid import limit (enable, limit W, ceiling W).

    >>> grid_limit_registers(37_795.8, 36_000.0)
    [1, 576, 47064, 549, 20736]
    >>> grid_limit_from(grid_limit_registers(37_795.8, 36_000.0))
    (37795.8, 36000.0)
    >>> grid_limit_from([0, 576, 47384, 549, 20736]) is None
    True
    """
    return [1, *_int32_words(round(limit_kw * 1000)), *_int32_words(round(charge_ceiling_kw * 1000))]


def grid_limit_from(values: list[int]) -> tuple[float, float] | None:
    """(limit kW, charge ceiling kW) that the vendor block's registers command, or None when it is off."""
    if values[0] != 1:
        return None
    return _int32(values[1], values[2]) / 1000, _int32(values[3], values[4]) / 1000


def storage_values(registers: list[int], start: int = BASE) -> dict[str, int]:
    """Decode model 124 from a register list that starts at address ``start``."""
    at = STORAGE_AT + 2 - start
    return {p: from_u16(p, registers[at + i]) for i, p in enumerate(STORAGE_POINTS)}


def initial_registers(wchamax_kw: float, min_reserve_pct: float, manufacturer: str = "opsloop",
                      model: str = "pcs-sim", serial: str = "0001") -> list[int]:
    """A full register image from ``BASE``: markers, common model, zeroed inverter, model 124 at idle."""
    regs = [0] * REGISTER_COUNT
    regs[0:2] = [0x5375, 0x6E53]  # "SunS"
    regs[COMMON_AT - BASE:COMMON_AT - BASE + 2 + COMMON_LEN] = common_model(manufacturer, model, serial)
    regs[INVERTER_AT - BASE:INVERTER_AT - BASE + 2] = [INVERTER_ID, INVERTER_LEN]
    regs[INVERTER_W + 1 - BASE] = to_u16(W_SF)
    regs[STORAGE_AT - BASE:STORAGE_AT - BASE + 2] = [STORAGE_ID, STORAGE_LEN]
    fixed = {"WChaMax": round(wchamax_kw * 1000 / 10 ** WCHAMAX_SF), "MinRsvPct": round(min_reserve_pct),
             "ChaSt": CHA_ST["holding"], "WChaMax_SF": WCHAMAX_SF, "InOutWRte_SF": RATE_SF, "ChaState_SF": SOC_SF,
             "MinRsvPct_SF": 0}
    for point, value in fixed.items():
        regs[address(point) - BASE] = to_u16(value)
    for at, model, length in ((BATTERY_AT, BATTERY_ID, BATTERY_LEN), (GRID_METER_AT, METER_ID, METER_LEN),
                              (FACILITY_METER_AT, METER_ID, METER_LEN)):
        regs[at - BASE:at + 2 + length - BASE] = [model, length, *sunspec_points.unimplemented_body(model, length)]
    regs[END_AT - BASE:END_AT - BASE + 2] = [0xFFFF, 0]
    regs[GRID_LIMIT_AT - BASE:GRID_LIMIT_AT + 2 - BASE] = [GRID_LIMIT_ID, GRID_LIMIT_LEN]
    return regs


def common_model(manufacturer: str, model: str, serial: str) -> list[int]:
    """Model 1's id, length and body: manufacturer, model and serial as the text points they are."""
    regs = [COMMON_ID, COMMON_LEN] + [0] * COMMON_LEN
    for offset, text, size in ((2, manufacturer, 16), (18, model, 16), (50, serial, 16)):
        raw = text.encode()[:size * 2].ljust(size * 2, b"\0")
        regs[offset:offset + size] = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, size * 2, 2)]
    return regs


def meter_values(kw: float, events: int = 0, volts: float = 230.0, pf: float = 0.98) -> dict[str, int]:
    """Raw model 203 points of a wye meter reading ``kw`` (balanced phases at ``volts`` and power factor ``pf``).

    >>> v = meter_values(38_000.0)
    >>> v["W"] * 10 ** v["W_SF"], v["A"] * 10 ** v["A_SF"]
    (38000000, 56200)
    """
    w = kw * 1000.0
    amps = w / (3 * volts * pf)
    w_sf, a_sf = scale_for(w), scale_for(amps, digits=1)
    phase = round(w / 3 / 10 ** w_sf)
    return {"W": round(w / 10 ** w_sf), "WphA": phase, "WphB": phase, "WphC": phase, "W_SF": w_sf,
            "A": round(amps / 10 ** a_sf), "A_SF": a_sf, "PhV": round(volts * 10), "V_SF": -1,
            "Hz": 5000, "Hz_SF": -2, "PF": round(pf * 100), "PF_SF": 0, "Evt": events}


def meter_image(meters: int, manufacturer: str = "opsloop", model: str = "twin-meter",
                serial: str = "0001") -> list[int]:
    """A meter device's register image from ``BASE``: the marker, model 1, ``meters`` models 203, the end marker.

    Each meter's id register is at ``meter_at(i)``; fill it with ``put(image, meter_at(i), METER_ID, ...)``.
    """
    regs = [0x5375, 0x6E53, *common_model(manufacturer, model, serial)]
    for _ in range(meters):
        regs += [METER_ID, METER_LEN, *sunspec_points.unimplemented_body(METER_ID, METER_LEN)]
    return regs + [0xFFFF, 0]


def meter_at(index: int) -> int:
    """The id register of the ``index``-th (from 0) model 203 of a ``meter_image``."""
    return COMMON_AT + 2 + COMMON_LEN + index * (2 + METER_LEN)


def body(registers: list[int], at: int, length: int, start: int = BASE) -> list[int]:
    """The body of the model whose id register is at ``at`` (a view copy)."""
    return registers[at + 2 - start:at + 2 + length - start]


def put(registers: list[int], at: int, model: int, values: dict[str, float], start: int = BASE) -> None:
    """Write raw point values into the model at ``at`` of a register list."""
    length = registers[at + 1 - start]
    part = body(registers, at, length, start)
    sunspec_points.encode(model, values, part)
    registers[at + 2 - start:at + 2 + length - start] = part


def scale_for(*values: float, digits: int = 0) -> int:
    """The smallest scale factor (>= -digits) at which every value fits an int16."""
    sf = -digits
    while any(abs(v) / 10.0 ** sf > 32767 for v in values):
        sf += 1
    return sf
