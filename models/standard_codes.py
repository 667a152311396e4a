"""What public standard identifiers in alarm codes and texts mean, in words.

Vendors' controllers word many faults as numbers from a public standard, not as
words: a genset controller sends "SPN 110 FMI 16" (SAE J1939: engine coolant
temperature, above normal), a protection relay "50/51 trip" (IEEE C37.2 device
numbers: overcurrent), a BMC "SEL 0x08 0x6f 03" (IPMI: power supply, input
lost), a subnet manager "trap 129" (InfiniBand: local link integrity), a GPU driver
"Xid 92" (NVIDIA: a high single-bit ECC error rate). A reader
of words alone sees digits there. ``meanings`` gives the words each one stands
for, to be read beside the alarm's own.

The tables hold the meanings of the standards' numbers (facts, not a site's
settings); they list the numbers a data centre's power, cooling and compute
gear raise, not every one the standards define.

>>> meanings("DTC SPN 110 FMI 16")
['genset engine coolant temperature high']
>>> meanings("J1939_SPN100_FMI17")
['genset engine oil pressure low']
>>> meanings("50/51 I>> trip  52-Q2 open")
['switchgear protection relay overcurrent trip', 'circuit breaker']
>>> meanings("SEL_0x08_0x6f_03")
['power supply input lost']
>>> meanings("Rack 27 inlet 24 C")
[]
"""

from __future__ import annotations

import re
from functools import lru_cache

# SAE J1939-71 suspect parameter numbers raised by generator engine controllers.
J1939_SPN = {
    94: "fuel delivery pressure", 96: "fuel level", 97: "water in fuel", 98: "engine oil level",
    100: "engine oil pressure", 101: "crankcase pressure", 102: "boost pressure", 105: "intake manifold temperature",
    107: "air filter differential pressure", 110: "engine coolant temperature", 111: "engine coolant level",
    158: "starting battery voltage", 167: "charging alternator voltage", 168: "starting battery voltage",
    171: "ambient air temperature", 172: "air inlet temperature", 173: "exhaust gas temperature",
    174: "fuel temperature", 175: "engine oil temperature", 190: "engine speed", 513: "engine load",
    636: "crankshaft position sensor", 723: "camshaft speed sensor", 1136: "engine control unit temperature",
}
# J1939 failure mode identifiers: above or below the normal range, or a fault of the sensor or its circuit.
J1939_FMI = {
    0: "high", 1: "low", 2: "erratic", 3: "sensor voltage high", 4: "sensor voltage low", 5: "open circuit",
    6: "short circuit", 7: "mechanical fault", 8: "abnormal frequency", 9: "abnormal update rate",
    10: "abnormal rate of change", 11: "fault", 12: "bad device", 13: "out of calibration", 15: "high", 16: "high",
    17: "low", 18: "low", 19: "network data error", 31: "condition exists",
}
# An engine speed above or below its range is an overspeed or an underspeed.
_SPEED = {"high": "overspeed", "low": "underspeed"}
_SPN_FMI = re.compile(r"spn[\s_:=#-]*(\d{2,5})\D{0,12}?fmi[\s_:=#-]*(\d{1,2})(?!\d)", re.IGNORECASE)

# IEEE C37.2 device numbers (and their IEC symbols) of switchgear protection relays.
ANSI_DEVICES = {
    "25": "synchronism check", "27": "undervoltage", "32": "reverse power", "46": "phase imbalance current",
    "47": "phase sequence voltage", "49": "thermal overload", "50": "switchgear protection relay overcurrent trip",
    "51": "switchgear protection relay overcurrent trip", "52": "circuit breaker",
    "59": "overvoltage", "64": "switchgear protection relay earth fault trip",
    "67": "switchgear protection relay directional overcurrent trip", "81": "frequency deviation",
    "86": "lockout relay trip", "87": "switchgear differential protection trip",
}
_ANSI_SUFFIX = {"N": "switchgear protection relay earth fault trip",
                "G": "switchgear protection relay earth fault trip",
                "T": "transformer fault differential protection trip", "U": "underfrequency", "O": "overfrequency",
                "B": "switchgear bus differential protection trip"}
# A device number only where a relay's context says so: "ANSI 27", "50/51", "27/59", "51N", "87T", "52-Q2".
_ANSI = re.compile(r"(?<![a-z0-9.])(?:ansi[\s_-]*(\d{2})([ngtuob])?|(\d{2})([ngtuob])?[/_](\d{2})([ngtuob])?"
                   r"|(\d{2})([ngtuob])|(52)-[a-z]+\d+)(?![a-z0-9.])", re.IGNORECASE)
_ANSI_PAIRS = {frozenset(p) for p in (("50", "51"), ("27", "59"), ("81", "27"), ("81", "59"), ("50", "87"))}
# Suffixes read only on the relays they qualify ("51N", "87T", "81U"): "25G" or "50G" is a port's speed.
_SUFFIXED = frozenset(("50", "51", "64", "67", "87", "81"))
_IEC = [(re.compile(r"(?<![\w>])i[oe]>{1,2}(?!\w)", re.IGNORECASE), "switchgear protection relay earth fault trip"),
        (re.compile(r"(?<![\w>])i>{1,3}(?![\w>])", re.IGNORECASE), "switchgear protection relay overcurrent trip"),
        (re.compile(r"(?<![\w<])u<{1,2}(?![\w<])", re.IGNORECASE), "undervoltage"),
        (re.compile(r"(?<![\w<])3u<{1,2}(?![\w<])", re.IGNORECASE), "undervoltage all phases"),
        (re.compile(r"(?<![\w>])u>{1,2}(?![\w>])", re.IGNORECASE), "overvoltage"),
        (re.compile(r"(?<![\w<>])f[<>]{1,2}(?![\w<>])", re.IGNORECASE), "frequency deviation")]

OS_CRASHED = "operating system crashed kernel panic"
OS_HUNG = "heartbeat lost"  # the OS stopped feeding the BMC's watchdog
# IPMI 2.0 sensor types, and the sensor-specific (event type 6Fh) offsets of those a node's faults raise.
IPMI_SENSOR_TYPES = {
    0x01: "temperature", 0x02: "voltage", 0x03: "current", 0x04: "fan", 0x05: "chassis intrusion",
    0x07: "processor", 0x08: "power supply", 0x09: "power unit", 0x0A: "cooling device", 0x0C: "memory",
    0x0D: "drive", 0x13: "critical interrupt", 0x19: "chipset", 0x1B: "cable interconnect",
    0x20: "operating system critical stop", 0x23: "watchdog", 0x28: "management controller health",
}
IPMI_OFFSETS = {
    0x07: {0: "processor internal error", 1: "processor thermal trip", 8: "processor disabled",
           0xA: "processor throttled", 0xB: "processor uncorrectable machine check"},
    0x08: {1: "power supply failure", 2: "power supply predictive failure", 3: "power supply input lost",
           4: "power supply input lost", 5: "power supply input out of range", 6: "power supply configuration error"},
    0x09: {0: "power off", 4: "power unit input lost", 6: "power unit failure"},
    0x0C: {0: "memory correctable ecc", 1: "memory uncorrectable ecc", 2: "memory parity error",
           4: "memory device disabled", 5: "memory correctable ecc logging limit", 0xA: "memory overtemperature"},
    0x0D: {1: "drive fault", 2: "drive predictive failure"},
    0x13: {4: "pci parity error", 5: "pci system error", 8: "bus uncorrectable error", 9: "fatal interrupt",
           0xA: "bus fatal error"},
    0x20: {0: OS_CRASHED, 1: OS_CRASHED},  # a critical stop during the OS load, at run time (a crash dump)
    0x23: {0: OS_HUNG, 1: OS_HUNG, 2: OS_HUNG, 3: OS_HUNG},  # watchdog 2 expired: a timeout, a reset, a power-off
}
_SEL = re.compile(r"(?:sel|sensor[\s_-]*type)[\s_:|#-]*(?:0x)?([0-9a-f]{2})h?(?![0-9a-f])"
                  r"(?:[\s_:|-]+(?:0x)?6fh?[\s_:|-]+(?:0x)?([0-9a-f]{1,2})h?(?![0-9a-f]))?", re.IGNORECASE)

# InfiniBand subnet management traps (IBA vol. 1, 14.2.5).
IB_TRAPS = {
    64: "port in service", 65: "port out of service link down", 128: "port state change link",
    129: "local link integrity errors", 130: "buffer overrun errors", 131: "flow control watchdog errors",
    144: "capability mask change", 256: "bad management key", 257: "bad partition key", 258: "bad queue key",
}
_IB_TRAP = re.compile(r"(?<![a-z])trap[\s_:#-]*(\d{2,3})(?!\d)", re.IGNORECASE)


# NVIDIA Xid numbers that no procedure lists by number, read as the fault they report (NVIDIA's Xid catalog).
XIDS = {92: "gpu memory single bit ecc error rate high", 140: "gpu memory uncorrectable ecc error",
        **{n: "nvlink error" for n in range(144, 151)}}
# "Xid 79", "XID_79", "NVRM: Xid (PCI:0000:3b:00): 79": the number is the fault (``incident_query.log_codes`` too).
XID_NUMBER = re.compile(r"(?<![a-z])xid[\s_:=-]*(?:\([^)]*\))?[\s:,=]*(\d{1,3})(?!\d)", re.IGNORECASE)

# Messages of the PCIe error reporting (AER) and of NVIDIA's driver and tools that say a GPU is gone, in words: a
# "Surprise Down" is a link that went down unannounced; "RmInitAdapter failed" a GPU the driver could not bring up;
# "Unable to determine the device handle" a GPU nvidia-smi no longer finds.
GPU_GONE = [(re.compile(r"surprise[\s_-]*down", re.IGNORECASE), "pcie link down"),
            (re.compile(r"rminitadapter[\s_-]*failed", re.IGNORECASE), "gpu not detected"),
            (re.compile(r"unable to determine the device handle", re.IGNORECASE), "gpu lost")]
# The same in words for the IPMI events whose numbers say a node's operating system stopped: its "OS Critical Stop"
# (a crash) and its watchdog expiring (the OS stopped feeding it).
NODE_STOPPED = [(re.compile(r"\b(?:os|operating[\s_-]*system)[\s_-]*critical[\s_-]*stop|run[\s_-]*time[\s_-]*critical"
                            r"[\s_-]*stop", re.IGNORECASE), OS_CRASHED),
                (re.compile(r"\bwatchdog[\s_-]*2?\b.{0,30}?\b(?:timer[\s_-]*expired|hard[\s_-]*reset)", re.IGNORECASE),
                 OS_HUNG)]


def meanings(text: str) -> list[str]:
    """The words each standard identifier in ``text`` stands for, in the order found (none: an empty list)."""
    return list(_meanings(text))


@lru_cache(maxsize=65536)  # alarm texts repeat: every version of an incident brings its members again
def _meanings(text: str) -> tuple[str, ...]:
    found: list[str] = []
    for spn, fmi in _SPN_FMI.findall(text):
        name, mode = J1939_SPN.get(int(spn)), J1939_FMI.get(int(fmi))
        if name and mode:
            found.append(f"genset {_SPEED[mode]}" if int(spn) == 190 and mode in _SPEED else f"genset {name} {mode}")
    for match in _ANSI.finditer(text):
        found += _ansi(match)
    for pattern, meaning in _IEC:
        if pattern.search(text):
            found.append(meaning)
    for sensor, offset in _SEL.findall(text):
        kind = int(sensor, 16)
        said = IPMI_OFFSETS.get(kind, {}).get(int(offset, 16)) if offset else None
        if said or kind in IPMI_SENSOR_TYPES:
            found.append(said or IPMI_SENSOR_TYPES[kind])
    for number in _IB_TRAP.findall(text):
        if int(number) in IB_TRAPS:
            found.append(f"infiniband {IB_TRAPS[int(number)]}")
    found += [XIDS[int(n)] for n in XID_NUMBER.findall(text) if int(n) in XIDS]
    found += [meaning for pattern, meaning in GPU_GONE + NODE_STOPPED if pattern.search(text)]
    return tuple(dict.fromkeys(found))


def _ansi(match: re.Match) -> list[str]:
    (named, named_suffix, first, first_suffix, second, second_suffix, alone, alone_suffix, breaker) = match.groups()
    if breaker:
        return [ANSI_DEVICES["52"]]
    if named:
        return [_device(named, named_suffix)]
    if alone:
        return [_device(alone, alone_suffix)] if alone in _SUFFIXED and not (alone == "50" and alone_suffix in "gG") \
            else []
    suffixed = (first_suffix and first in _SUFFIXED) or (second_suffix and second in _SUFFIXED)
    if frozenset((first, second)) in _ANSI_PAIRS or (suffixed and first in ANSI_DEVICES and second in ANSI_DEVICES):
        return [d for d in dict.fromkeys((_device(first, first_suffix), _device(second, second_suffix))) if d]
    return []


def _device(number: str, suffix: str | None) -> str:
    if number not in ANSI_DEVICES:
        return ""
    if suffix and suffix.upper() in _ANSI_SUFFIX and number in _SUFFIXED:
        return _ANSI_SUFFIX[suffix.upper()]
    return ANSI_DEVICES[number]
