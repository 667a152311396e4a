"""Which SNMP objects become which metrics and alarms: the ``snmp`` source kind's mapping, pure.

A PDU's values sit in tables (one row per phase, outlet, breaker, sensor) under a vendor's
subtree. The config names each column once; the reader walks it and every row it finds
becomes a point: the row index fills ``{index}`` in the metric name, the raw integer times
``scale`` is the value in ``unit``. Alarm columns name the values that mean trouble
(``raise_on``): a row entering one raises the alarm, leaving it clears it.

>>> m = SnmpMap.parse({"metrics": [{"oid": "1.3.6.1.4.1.32473.14.1.1.3", "metric": "phase{index}_kw",
...                                 "scale": 0.001, "unit": "kW"}],
...                    "alarms": [{"oid": "1.3.6.1.4.1.32473.14.3.1.2", "raise_on": [2], "code": "PDU_BREAKER_OPEN",
...                                "text": "breaker {index} open"}]})
>>> m.point("1.3.6.1.4.1.32473.14.1.1.3.2", 1830)
('phase2_kw', 1.83, 'kW')
>>> states = {}
>>> m.alarm_changes("1.3.6.1.4.1.32473.14.3.1.2.1", 2, states)
[('PDU_BREAKER_OPEN', 'major', 'raise', 'breaker 1 open')]
>>> m.alarm_changes("1.3.6.1.4.1.32473.14.3.1.2.1", 2, states)  # still open: raised once
[]
>>> m.alarm_changes("1.3.6.1.4.1.32473.14.3.1.2.1", 1, states)
[('PDU_BREAKER_OPEN', 'major', 'clear', 'breaker 1 open')]
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

_OID = re.compile(r"^\.?(\d+)(\.\d+)+$")
SEVERITIES = ("info", "minor", "major", "critical")


class SnmpMapError(ValueError):
    """An snmp mapping that cannot work, with the entry named."""


class BadValue(ValueError):
    """A value that is no reading: ``kind`` is the DeadLetterKind (decode or invalid)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class MetricRule:
    oid: str  # the column (or scalar) walked
    metric: str  # may hold {index}
    scale: float
    unit: str


@dataclass(frozen=True)
class AlarmRule:
    oid: str
    raise_on: frozenset[int]
    code: str
    severity: str
    text: str  # may hold {index}


def _oid(value: Any, where: str) -> str:
    text = str(value)
    if not _OID.match(text):
        raise SnmpMapError(f"{where}: oid {text!r} is not a dotted numeric OID")
    return text.lstrip(".")


@dataclass(frozen=True)
class SnmpMap:
    metrics: tuple[MetricRule, ...]
    alarms: tuple[AlarmRule, ...]

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> "SnmpMap":
        metrics, alarms = [], []
        for i, entry in enumerate(options.get("metrics") or ()):
            where = f"options.metrics[{i}]"
            if not isinstance(entry, Mapping) or not entry.get("metric") or not entry.get("unit"):
                raise SnmpMapError(f"{where}: needs oid, metric and unit")
            scale = entry.get("scale", 1)
            if not isinstance(scale, (int, float)) or not math.isfinite(scale):
                raise SnmpMapError(f"{where}: scale must be a number")
            metrics.append(MetricRule(_oid(entry.get("oid"), where), str(entry["metric"]), float(scale),
                                      str(entry["unit"])))
        for i, entry in enumerate(options.get("alarms") or ()):
            where = f"options.alarms[{i}]"
            if not isinstance(entry, Mapping) or not entry.get("code") or not entry.get("raise_on"):
                raise SnmpMapError(f"{where}: needs oid, raise_on (values) and code")
            severity = str(entry.get("severity", "major"))
            if severity not in SEVERITIES:
                raise SnmpMapError(f"{where}: severity must be one of {', '.join(SEVERITIES)}")
            alarms.append(AlarmRule(_oid(entry.get("oid"), where), frozenset(int(v) for v in entry["raise_on"]),
                                    str(entry["code"]), severity, str(entry.get("text") or entry["code"])))
        if not metrics and not alarms:
            raise SnmpMapError("options: no metrics and no alarms: nothing to read")
        return cls(tuple(metrics), tuple(alarms))

    def columns(self) -> list[str]:
        """Every OID to walk, once each."""
        return list(dict.fromkeys([r.oid for r in self.metrics] + [r.oid for r in self.alarms]))

    @staticmethod
    def _index(rule_oid: str, oid: str) -> str | None:
        return oid[len(rule_oid) + 1:] if oid.startswith(rule_oid + ".") else None

    def point(self, oid: str, value: Any) -> tuple[str, float, str] | None:
        """(metric, value, unit) for a walked object, None when no metric rule covers it."""
        for rule in self.metrics:
            index = self._index(rule.oid, oid)
            if index is not None:
                return rule.metric.format(index=index), number(oid, value) * rule.scale, rule.unit
        return None

    def alarm_changes(self, oid: str, value: Any, active: dict[tuple[str, str], bool]) -> list[tuple[str, str, str, str]]:
        """(code, severity, state, text) when a row enters or leaves a ``raise_on`` value; ``active`` is the state."""
        out = []
        for rule in self.alarms:
            index = self._index(rule.oid, oid)
            if index is None:
                continue
            now = int(number(oid, value)) in rule.raise_on
            key = (rule.code, index)
            if now != active.get(key, False):
                active[key] = now
                out.append((rule.code, rule.severity, "raise" if now else "clear", rule.text.format(index=index)))
        return out

    def covers(self, oid: str) -> bool:
        return any(self._index(r.oid, oid) is not None for r in (*self.metrics, *self.alarms))


def number(oid: str, value: Any) -> float:
    """An SNMP value as a number: integers as they are, numeric strings parsed; else ``BadValue``."""
    if isinstance(value, bool):
        raise BadValue("decode", f"{oid}: {value!r} is not a number")
    if isinstance(value, (int, float)):
        result = float(value)
    else:
        try:
            result = float(str(value).strip())
        except ValueError:
            raise BadValue("decode", f"{oid}: {str(value)[:64]!r} is not a number") from None
    if not math.isfinite(result):
        raise BadValue("invalid", f"{oid}: {result} is not a finite number")
    return result


@dataclass(frozen=True)
class TrapRule:
    trap: str  # the notification's snmpTrapOID.0
    code: str
    severity: str
    state: str  # raise or clear
    text: str  # may hold {index}
    index_from: str | None  # the column whose varbind's row index fills {index}


@dataclass(frozen=True)
class TrapMap:
    """The ``snmp-trap`` kind's mapping: which notifications raise or clear which alarms.

    >>> traps = TrapMap.parse({"traps": [{"trap": "1.3.6.1.4.1.32473.14.0.1", "code": "PDU_BREAKER_OPEN",
    ...     "index_from": "1.3.6.1.4.1.32473.14.3.1.2", "text": "breaker {index} open"}]})
    >>> traps.alarm("1.3.6.1.4.1.32473.14.0.1", [("1.3.6.1.4.1.32473.14.3.1.2.2", 2)])
    ('PDU_BREAKER_OPEN', 'major', 'raise', 'breaker 2 open')
    >>> traps.alarm("1.3.6.1.4.1.32473.14.0.9", []) is None
    True
    """

    rules: tuple[TrapRule, ...]

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> "TrapMap":
        rules = []
        for i, entry in enumerate(options.get("traps") or ()):
            where = f"options.traps[{i}]"
            if not isinstance(entry, Mapping) or not entry.get("code"):
                raise SnmpMapError(f"{where}: needs trap (an OID) and code")
            severity, state = str(entry.get("severity", "major")), str(entry.get("state", "raise"))
            if severity not in SEVERITIES or state not in ("raise", "clear"):
                raise SnmpMapError(f"{where}: severity one of {', '.join(SEVERITIES)}, state raise or clear")
            index_from = _oid(entry["index_from"], where) if entry.get("index_from") else None
            rules.append(TrapRule(_oid(entry.get("trap"), where), str(entry["code"]), severity, state,
                                  str(entry.get("text") or entry["code"]), index_from))
        if not rules:
            raise SnmpMapError("options.traps: no trap is mapped")
        return cls(tuple(rules))

    def alarm(self, trap: str, varbinds: list[tuple[str, Any]]) -> tuple[str, str, str, str] | None:
        """(code, severity, state, text) of a received notification; None when no rule names it."""
        trap = trap.lstrip(".")
        for rule in self.rules:
            if rule.trap != trap:
                continue
            index = next((oid[len(rule.index_from) + 1:] for oid, _ in varbinds
                          if rule.index_from and oid.startswith(rule.index_from + ".")), "?")
            return rule.code, rule.severity, rule.state, rule.text.format(index=index)
        return None
