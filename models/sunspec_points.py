"""SunSpec model bodies to telemetry: the points opsloop reads from meters (201-204), inverters (103),
storage controls (124) and batteries (802), scaled and in opsloop's units. Pure: it takes the
registers a reader fetched after discovering the model chain, never addresses.

Each point sits at a fixed offset in its model's body (after the id and length registers) and
most carry a scale factor point (``value x 10^SF``). A register holding its type's
not-implemented sentinel (int16 0x8000, uint16/enum16 0xFFFF, acc32 0, uint32/bitfield32
0xFFFFFFFF) is no reading: no point. A value whose scale factor is unimplemented or outside
-10..10 is bad data: a problem named in words (the reader dead-letters it).

Metric names take the device's prefix (``grid`` for a grid meter, ``facility``, ``ess``...):

>>> body = unimplemented_body(203, METER_LEN)
>>> body[16], body[20], body[14], body[15] = 1234, 1, 5000, 0xFFFE  # W = 1234 x 10^1, Hz = 5000 x 10^-2
>>> decode(203, body, "grid")
([('grid_hz', 50.0, 'Hz'), ('grid_kw', 12.34, 'kW')], [], None)
>>> body[20] = 0x8000  # W implemented, its scale factor not
>>> decode(203, body, "grid")[1]
['W = 1234 has no usable scale factor W_SF (0x8000)']
"""

from __future__ import annotations

from dataclasses import dataclass

METER_MODELS = (201, 202, 203, 204)  # single, split, wye and delta three-phase: one layout
METER_LEN = 105
NOT_IMPLEMENTED = {"int16": 0x8000, "uint16": 0xFFFF, "enum16": 0xFFFF, "sunssf": 0x8000, "acc32": 0,
                   "uint32": 0xFFFFFFFF, "bitfield32": 0xFFFFFFFF}
SIZE = {"acc32": 2, "uint32": 2, "bitfield32": 2}


@dataclass(frozen=True)
class Point:
    name: str
    offset: int  # in the model body (0: the register after the length)
    type: str
    sf: str | None = None  # the scale factor point
    metric: str | None = None  # suffix after the device prefix; None: read for its SF or events only
    unit: str = ""
    factor: float = 1.0  # to opsloop's unit (W -> kW: 0.001)


def _meter() -> tuple[Point, ...]:
    kw = dict(unit="kW", factor=0.001)
    return (Point("A", 0, "int16", "A_SF", "a", "A"), Point("A_SF", 4, "sunssf"),
            Point("PhV", 5, "int16", "V_SF", "v", "V"), Point("V_SF", 13, "sunssf"),
            Point("Hz", 14, "int16", "Hz_SF", "hz", "Hz"), Point("Hz_SF", 15, "sunssf"),
            Point("W", 16, "int16", "W_SF", "kw", **kw), Point("WphA", 17, "int16", "W_SF", "kw_a", **kw),
            Point("WphB", 18, "int16", "W_SF", "kw_b", **kw), Point("WphC", 19, "int16", "W_SF", "kw_c", **kw),
            Point("W_SF", 20, "sunssf"),
            Point("VA", 21, "int16", "VA_SF", "kva", "kVA", 0.001), Point("VA_SF", 25, "sunssf"),
            Point("VAR", 26, "int16", "VAR_SF", "kvar", "kvar", 0.001), Point("VAR_SF", 30, "sunssf"),
            Point("PF", 31, "int16", "PF_SF", "pf_pct", "%"), Point("PF_SF", 35, "sunssf"),
            Point("TotWhExp", 36, "acc32", "TotWh_SF", "export_kwh", "kWh", 0.001),
            Point("TotWhImp", 44, "acc32", "TotWh_SF", "import_kwh", "kWh", 0.001), Point("TotWh_SF", 52, "sunssf"),
            Point("Evt", 103, "bitfield32"))


POINTS: dict[int, tuple[Point, ...]] = {
    **{model: _meter() for model in METER_MODELS},
    103: (Point("W", 12, "int16", "W_SF", "kw", "kW", 0.001), Point("W_SF", 13, "sunssf")),
    124: (Point("WChaMax", 0, "uint16", "WChaMax_SF", "charge_max_kw", "kW", 0.001),
          Point("MinRsvPct", 5, "uint16", "MinRsvPct_SF", "reserve_pct", "%"),
          Point("ChaState", 6, "uint16", "ChaState_SF", "soc_pct", "%"),
          Point("WChaMax_SF", 16, "sunssf"), Point("MinRsvPct_SF", 19, "sunssf"), Point("ChaState_SF", 20, "sunssf")),
    802: (Point("SoC", 9, "uint16", "SoC_SF", "soc_pct", "%"), Point("SoH", 11, "uint16", "SoH_SF", "soh_pct", "%"),
          Point("NCyc", 12, "uint32", None, "cycles", "count"), Point("Evt1", 24, "bitfield32"),
          Point("V", 32, "uint16", "V_SF", "dc_v", "V"), Point("A", 42, "int16", "A_SF", "dc_a", "A"),
          Point("W", 45, "int16", "W_SF", "dc_kw", "kW", 0.001), Point("SoC_SF", 54, "sunssf"),
          Point("SoH_SF", 56, "sunssf"), Point("V_SF", 57, "sunssf"), Point("A_SF", 59, "sunssf"),
          Point("W_SF", 61, "sunssf")),
}
#: The models whose state-of-charge wins when a device has both (the BMS's own over the PCS's view).
PREFERENCE = (802, 124, 103)

#: Event bit -> (alarm code, severity); bits not named here are ignored.
METER_EVENTS = {2: ("METER_POWER_FAILURE", "critical"), 3: ("METER_UNDER_VOLTAGE", "major"),
                4: ("METER_LOW_PF", "minor"), 5: ("METER_OVER_CURRENT", "major"), 6: ("METER_OVER_VOLTAGE", "major"),
                7: ("METER_MISSING_SENSOR", "major")}
_BMS = ("COMMUNICATION_ERROR OVER_TEMP_ALARM OVER_TEMP_WARNING UNDER_TEMP_ALARM UNDER_TEMP_WARNING "
        "OVER_CHARGE_CURRENT_ALARM OVER_CHARGE_CURRENT_WARNING OVER_DISCHARGE_CURRENT_ALARM "
        "OVER_DISCHARGE_CURRENT_WARNING OVER_VOLT_ALARM OVER_VOLT_WARNING UNDER_VOLT_ALARM UNDER_VOLT_WARNING "
        "UNDER_SOC_MIN_ALARM UNDER_SOC_MIN_WARNING OVER_SOC_MAX_ALARM OVER_SOC_MAX_WARNING VOLTAGE_IMBALANCE_WARNING "
        "TEMPERATURE_IMBALANCE_ALARM TEMPERATURE_IMBALANCE_WARNING CONTACTOR_ERROR FAN_ERROR GROUND_FAULT "
        "OPEN_DOOR_ERROR CURRENT_IMBALANCE_WARNING OTHER_ALARM OTHER_WARNING").split()
BMS_EVENTS = {bit: (f"BMS_{name}", "minor" if name.endswith("WARNING") else "major") for bit, name in enumerate(_BMS)}
EVENTS = {**{model: ("Evt", METER_EVENTS) for model in METER_MODELS}, 802: ("Evt1", BMS_EVENTS)}

PREFIXES = {"grid_meter": "grid", "facility_meter": "facility", "ess": "ess"}


def prefix_of(device_type: str) -> str:
    """The metric prefix of a device type (grid_meter -> grid; others keep their type)."""
    return PREFIXES.get(device_type, device_type)


def raw_value(point: Point, body: list[int]) -> int | None:
    """The point's integer (signed where its type is), or None for the not-implemented sentinel."""
    if point.offset + SIZE.get(point.type, 1) > len(body):
        return None
    raw = body[point.offset]
    if point.type in SIZE:
        raw = (raw << 16) | body[point.offset + 1]
    if raw == NOT_IMPLEMENTED[point.type]:
        return None
    if point.type in ("int16", "sunssf") and raw >= 0x8000:
        raw -= 0x10000
    return raw


def decode(model: int, body: list[int], prefix: str) -> tuple[list[tuple[str, float, str]], list[str], int | None]:
    """(metric, value, unit) of every implemented point, the problems (bad data), and the event bits."""
    points = POINTS.get(model, ())
    needed = max((p.offset + SIZE.get(p.type, 1) for p in points), default=0)
    if len(body) < needed:  # a device whose model is shorter than the standard's: nothing it says is placed
        return [], [f"model {model} is {len(body)} registers long, shorter than the {needed} it must have"], None
    by_name = {p.name: p for p in points}
    values, problems = [], []
    for point in points:
        if point.metric is None:
            continue
        raw = raw_value(point, body)
        if raw is None:
            continue
        scale = 0
        if point.sf is not None:
            sf = raw_value(by_name[point.sf], body)
            if sf is None or not -10 <= sf <= 10:
                shown = "0x8000" if sf is None else str(sf)
                problems.append(f"{point.name} = {raw} has no usable scale factor {point.sf} ({shown})")
                continue
            scale = sf
        values.append((f"{prefix}_{point.metric}", round(raw * 10.0 ** scale * point.factor, 9), point.unit))
    events = None
    if model in EVENTS:
        events = raw_value(by_name[EVENTS[model][0]], body)
    return values, problems, events


def event_changes(model: int, before: int, now: int) -> list[tuple[str, str, str]]:
    """(code, severity, state) for each named event bit that rose ('raise') or fell ('clear')."""
    names = EVENTS[model][1] if model in EVENTS else {}
    out = []
    for bit, (code, severity) in sorted(names.items()):
        was, is_ = before >> bit & 1, now >> bit & 1
        if is_ and not was:
            out.append((code, severity, "raise"))
        elif was and not is_:
            out.append((code, severity, "clear"))
    return out


def encode(model: int, values: dict[str, float], body: list[int]) -> None:
    """Write raw point values (already scaled to register integers) into a body: the simulator's side."""
    by_name = {p.name: p for p in POINTS[model]}
    for name, value in values.items():
        point = by_name[name]
        raw = int(value) & (0xFFFFFFFF if point.type in SIZE else 0xFFFF)
        if point.type in SIZE:
            body[point.offset:point.offset + 2] = [raw >> 16, raw & 0xFFFF]
        else:
            body[point.offset] = raw


def unimplemented_body(model: int, length: int) -> list[int]:
    """A body whose every point opsloop reads says 'not implemented' (others zero)."""
    body = [0] * length
    for point in POINTS[model]:
        encode(model, {point.name: NOT_IMPLEMENTED[point.type]}, body)
    return body
