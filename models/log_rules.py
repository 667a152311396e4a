"""Kernel and service log lines as Alarms, by rules that are data (the shipped set: config/log_rules).

Pure: a line arrives as text (a syslog file line) or as a parsed journald entry; ``LogLine``
holds its time, host, program and message. ``LogRules`` finds the first rule that matches and
``LogAlarms`` builds the Alarm, its device mapped through the source's ``devices``, with the
raw line kept in ``attributes["log_line"]`` (the narration shows it as evidence). A line no rule
matches is ignored and counted.

>>> rules = parse_rules({"rules": [{"name": "xid", "pattern": r"NVRM: Xid \\((?P<pci>PCI:[0-9a-f:]+)\\): (?P<xid>\\d+),",
...     "code": "XID_{xid}", "device_type": "gpu", "device_key": "pci", "severity": "major",
...     "severity_by": {"group": "xid", "critical": ["79"]}, "text": "GPU {pci}: Xid {xid}"}]})
>>> logs = LogAlarms(rules, {"node1": "rack-a01-n1"}, "demo", "kernel-log")
>>> a = logs.alarm(parse_syslog("2026-12-05T18:00:01.5+00:00 node1 kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=1"), 0)
>>> a["code"], a["severity"], a["device"], a["ts_ms"], a["attributes"]["log_line"].endswith("79, pid=1")
('XID_79', 'critical', 'rack-a01-n1', 1796493601500, True)
>>> logs.alarm(parse_syslog("node1 sshd[4]: Accepted publickey for root"), 0) is None, logs.ignored
(True, 1)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from opsloop.models.records import alarm

SEVERITIES = ("info", "minor", "major", "critical")
STATES = ("raise", "clear")
RULE_KEYS = {"name", "program", "pattern", "code", "device_type", "device_key", "severity", "severity_by", "state",
             "text"}
_RFC3339 = re.compile(r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d))\s+(?P<rest>.*)", re.S)
_RFC3164 = re.compile(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\s+(?P<rest>.*)", re.S)
_HOST_PROGRAM = re.compile(r"(?P<host>[^\s:\[]+)\s+(?P<program>[^\s:\[]+)(?:\[(?P<pid>\d+)\])?:\s?(?P<message>.*)", re.S)
_PROGRAM = re.compile(r"(?P<program>[A-Za-z][\w.-]*)(?:\[(?P<pid>\d+)\])?:\s(?P<message>.*)", re.S)


class LogRuleError(ValueError):
    """A rule that cannot be used; the message names it."""


@dataclass(frozen=True)
class LogLine:
    raw: str  # what is kept as evidence
    message: str
    ts_ms: int | None = None  # None: the line carries no full time (read time is used)
    host: str | None = None
    program: str | None = None


@dataclass(frozen=True)
class LogRule:
    name: str
    pattern: re.Pattern
    code: str
    device_type: str
    severity: str = "major"
    program: re.Pattern | None = None
    device_key: str | None = None
    severity_group: str | None = None
    severity_values: Mapping[str, str] = field(default_factory=dict)  # group value -> severity
    state: str = "raise"
    text: str = "{message}"


def _time_ms(text: str) -> int | None:
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def parse_syslog(line: str, host: str | None = None, program: str | None = None) -> LogLine:
    """A file line: RFC 3339 or RFC 3164 syslog (``time host program[pid]: message``), ``program[pid]:
    message`` (dmesg-like), or a bare line of a daemon's own log file, whose ``host`` and ``program`` are
    the file's."""
    raw = line.rstrip("\r\n")
    ts_ms, rest, header = None, raw, False
    if m := _RFC3339.fullmatch(raw):
        ts_ms, rest, header = _time_ms(m["ts"]), m["rest"], True
    elif m := _RFC3164.fullmatch(raw):
        rest, header = m["rest"], True  # no year and no zone: the read time stands in
    if header and (m := _HOST_PROGRAM.fullmatch(rest)):
        return LogLine(raw, m["message"], ts_ms, m["host"], m["program"])
    if program is None and (m := _PROGRAM.fullmatch(rest)):
        return LogLine(raw, m["message"], ts_ms, host, m["program"])
    return LogLine(raw, rest, ts_ms, host, program)


def parse_journal(entry: Any) -> LogLine:
    """A ``journalctl -o json`` entry; ValueError when it is not one (no MESSAGE, a binary MESSAGE)."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"a journal entry is a JSON object, got {type(entry).__name__}")
    message = entry.get("MESSAGE")
    if isinstance(message, list):  # journald writes non-UTF-8 messages as byte arrays
        try:
            message = bytes(message).decode("utf-8", "replace")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"MESSAGE is neither text nor bytes: {exc}") from None
    if not isinstance(message, str):
        raise ValueError("no MESSAGE")
    stamp = entry.get("__REALTIME_TIMESTAMP")
    ts_ms = int(stamp) // 1000 if isinstance(stamp, str) and stamp.isdecimal() else None
    host = entry.get("_HOSTNAME") if isinstance(entry.get("_HOSTNAME"), str) else None
    program = next((entry[k] for k in ("SYSLOG_IDENTIFIER", "_COMM") if isinstance(entry.get(k), str)), None)
    pid = entry.get("_PID") or entry.get("SYSLOG_PID")
    when = datetime.fromtimestamp(ts_ms / 1000, timezone.utc).isoformat() if ts_ms is not None else "-"
    raw = f"{when} {host or '-'} {program or '-'}{f'[{pid}]' if pid else ''}: {message}"
    return LogLine(raw, message, ts_ms, host, program)


def parse_rules(doc: Any, source: str = "<rules>") -> tuple[LogRule, ...]:
    """Rules from a parsed rules document (``{rules: [...]}``) or a list of rule mappings."""
    entries = doc.get("rules") if isinstance(doc, Mapping) else doc
    if not isinstance(entries, list):
        raise LogRuleError(f"{source}: expected a 'rules' list")
    return tuple(_rule(entry, f"{source}: rules[{i}]") for i, entry in enumerate(entries))


def _rule(entry: Any, where: str) -> LogRule:
    if not isinstance(entry, Mapping):
        raise LogRuleError(f"{where}: expected a mapping")
    unknown = set(entry) - RULE_KEYS
    if unknown:
        raise LogRuleError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("name", "pattern", "code", "device_type"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise LogRuleError(f"{where}: '{key}' is required (text)")
    where = f"{where} ({entry['name']})"
    severity, state = entry.get("severity", "major"), entry.get("state", "raise")
    if severity not in SEVERITIES or state not in STATES:
        raise LogRuleError(f"{where}: severity must be one of {SEVERITIES} and state one of {STATES}")
    try:
        pattern = re.compile(entry["pattern"])
        program = re.compile(entry["program"]) if entry.get("program") else None
    except re.error as exc:
        raise LogRuleError(f"{where}: bad regex: {exc}") from None
    by, values = entry.get("severity_by"), {}
    if by is not None:
        if not isinstance(by, Mapping) or by.get("group") not in pattern.groupindex:
            raise LogRuleError(f"{where}: severity_by needs a 'group' that the pattern names")
        for level, listed in by.items():
            if level == "group":
                continue
            if level not in SEVERITIES or not isinstance(listed, list):
                raise LogRuleError(f"{where}: severity_by.{level}: expected a severity and a list of values")
            values.update({str(v): level for v in listed})
    key = entry.get("device_key")
    if key is not None and key not in pattern.groupindex:
        raise LogRuleError(f"{where}: device_key {key!r} is not a group of the pattern")
    return LogRule(entry["name"], pattern, entry["code"], entry["device_type"], severity, program, key,
                   by["group"] if by else None, values, state, entry.get("text", "{message}"))


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        return "?"


class LogAlarms:
    """Lines to Alarms; ``matched``/``ignored``/``unmapped`` count what happened to them."""

    def __init__(self, rules: tuple[LogRule, ...], devices: Mapping[str, str], site: str, source: str,
                 default_host: str | None = None):
        self.rules = rules
        self.devices = devices
        self.site = site
        self.source = source
        self.default_host = default_host
        self.matched = 0
        self.ignored = 0
        self.unmapped = 0
        self.last_unmapped = ""  # why the last matched line found no device

    def alarm(self, line: LogLine, now_ms: int) -> dict | None:
        """The Alarm of a line, or None (no rule matched, or no device: see ``last_unmapped``)."""
        for rule in self.rules:
            if rule.program is not None and not rule.program.fullmatch(line.program or ""):
                continue
            found = rule.pattern.search(line.message)
            if found:
                return self._alarm(rule, found, line, now_ms)
        self.ignored += 1
        return None

    def _alarm(self, rule: LogRule, found: re.Match, line: LogLine, now_ms: int) -> dict | None:
        groups = {k: v for k, v in found.groupdict().items() if v is not None}
        host = line.host or self.default_host or "-"
        part = groups.get(rule.device_key) if rule.device_key else None
        keys = ([f"{host}/{part}", part] if part else []) + [host, "*"]
        device = next((self.devices[k] for k in keys if k in self.devices), None)
        if device is None:
            self.unmapped += 1
            self.last_unmapped = (f"rule {rule.name} matched, but the devices map has none of "
                                  f"{', '.join(keys)}")
            return None
        self.matched += 1
        fields = _Fields(groups, host=host, program=line.program or "-", message=line.message)
        severity = rule.severity_values.get(groups.get(rule.severity_group or "", ""), rule.severity)
        attributes = {"log_line": line.raw, "rule": rule.name, "host": host, **groups}
        if line.program:
            attributes["program"] = line.program
        return alarm(line.ts_ms if line.ts_ms is not None else now_ms, self.site, device, rule.device_type,
                     f"opsloop.source.logs:{self.source}", rule.code.format_map(fields), rule.text.format_map(fields),
                     severity, rule.state, attributes)
