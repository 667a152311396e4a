"""Topology correlation: clean alarms of one cause → one incident, rooted at the most upstream alarm.

Pure and Kafka-free; time is the alarms' event time. One ``SiteCorrelator`` holds a site's
open incidents as a JSON-able state (``to_state`` / ``from_state``), so the agent can keep
it in a table.

A raised alarm joins an open incident (touched within ``group_window_ms``) when, along the
alarm's chain (``Topology.chain_of``), one of the incident's alarming devices is upstream of
it, or it is upstream of one of them. An alarm related to several incidents merges them
into the oldest (the others are resolved with ``merged_into``). Otherwise it opens a new
incident. The root is the member that explains most of the others (upstream of them, not
reported long after them, at least as severe); ties go to the shallowest, then severity, age.

An incident resolves when all its alarms have cleared, or when none of them has been
seen for ``resolve_after_ms`` of the site's event time. That time is only believed within
bounds (``refuse``, models/event_time.py): an alarm dated far ahead would otherwise resolve
every open incident of the site at once. Changes are collected and
``flush`` returns one Incident record per changed incident (a batch of alarms makes one
update per incident, not one per alarm).

>>> from opsloop.models.topology import Topology
>>> topo = Topology.from_dict("s", {"power": [{"id": "ups-1", "type": "ups"},
...     {"id": "pdu-1", "type": "pdu", "fed_by": "ups-1"}], "racks": [{"id": "r1", "pdu": "pdu-1", "nodes": 2}]})
>>> corr = SiteCorrelator("s", topo)
>>> def clean(ts, device, code, state="raise"):
...     alarm = {"ts_ms": ts, "site": "s", "device": device, "device_type": topo.type_of(device), "source": "bms",
...              "code": code, "severity": "major", "state": state, "text": "", "attributes": {}}
...     return {"alarm": alarm, "fingerprint": f"{device}|{code}", "duplicate_count": 1, "flapping": False}
>>> for ts, dev in [(0, "r1-n1"), (1_000, "r1-n2"), (2_000, "pdu-1"), (4_000, "ups-1")]:
...     corr.on_alarm(clean(ts, dev, "PWR_INPUT_LOST"))
>>> [inc] = corr.flush()
>>> inc["state"], inc["root_device"], inc["member_count"]
('open', 'ups-1', 4)
>>> for ts, dev in [(9_000, "r1-n1"), (9_000, "r1-n2"), (9_500, "pdu-1"), (9_900, "ups-1")]:
...     corr.on_alarm(clean(ts, dev, "PWR_INPUT_LOST", "clear"))
>>> [(i["state"], i["resolved_ms"]) for i in corr.flush()]
[('resolved', 9900)]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

from opsloop.models.event_time import EventTimeBounds
from opsloop.models.topology import CHAINS, Topology

SEVERITY_RANK = {"critical": 0, "major": 1, "minor": 2, "warning": 3, "info": 4}
# Alarm attributes that carry the raw log line an alarm was raised from (syslog, kernel, vendor event log).
LOG_ATTRIBUTES = ("log_line", "log", "message")
MAX_WORDS_CHARS = 512  # an alarm's text or log line kept on its member: enough to name the fault


@dataclass(frozen=True)
class CorrelateConfig:
    group_window_ms: int = 300_000  # an alarm joins incidents touched this recently
    resolve_after_ms: int = 1_800_000  # resolve when no member alarm was seen for this long
    root_lag_ms: int = 120_000  # an upstream alarm explains a downstream one seen at most this much before it


class SiteCorrelator:
    def __init__(self, site: str, topology: Topology | None, config: CorrelateConfig = CorrelateConfig(),
                 state: Mapping | None = None):
        self.site = site
        self.topology = topology or Topology(site)
        self.config = config
        state = state or {}
        self.incidents: dict[str, dict] = {i: _copy_incident(inc) for i, inc in state.get("incidents", {}).items()}
        self.watermark: int = state.get("watermark", 0)
        self.offset: int = state.get("offset", -1)  # last source offset folded in (restart safety)
        # resolved by clears within group_window_ms: a member raised again reopens it (a flap, a late repeat)
        self.recent: dict[str, dict] = {i: _copy_incident(inc) for i, inc in state.get("recent", {}).items()}
        self.recent_by_fp = {fp: i for i, inc in self.recent.items() for fp in inc["members"]}
        self.changed: dict[str, dict | None] = {}  # incident id → final record, or None: build it at flush
        self.by_fp: dict[str, str] = {}
        self.at: dict[tuple[str, str], set[str]] = {}
        self.up: dict[tuple[str, str], set[str]] = {}
        for inc in self.incidents.values():
            for fp, member in inc["members"].items():
                self._index(inc["id"], fp, member)

    @classmethod
    def from_state(cls, site: str, topology: Topology | None, config: CorrelateConfig, state: Mapping | None):
        return cls(site, topology, config, state)

    def to_state(self) -> dict:
        return {"incidents": self.incidents, "recent": self.recent, "watermark": self.watermark, "offset": self.offset}

    # -- indexes -----------------------------------------------------------------------

    def _chains(self, member: Mapping) -> tuple[str, ...]:
        return (member["chain"],) if member["chain"] else CHAINS

    def _index(self, inc_id: str, fp: str, member: Mapping) -> None:
        self.by_fp[fp] = inc_id
        for chain in self._chains(member):
            self.at.setdefault((member["device"], chain), set()).add(inc_id)
            for ancestor in self.topology.ancestors(member["device"], chain):
                self.up.setdefault((ancestor, chain), set()).add(inc_id)

    def _unindex(self, inc: Mapping) -> None:
        for fp, member in inc["members"].items():
            self.by_fp.pop(fp, None)
            for chain in self._chains(member):
                self.at.get((member["device"], chain), set()).discard(inc["id"])
                for ancestor in self.topology.ancestors(member["device"], chain):
                    self.up.get((ancestor, chain), set()).discard(inc["id"])

    def related(self, device: str, chain: str | None, since_ms: int) -> list[str]:
        """Open incidents touched since ``since_ms`` with a member upstream or downstream of ``device``."""
        found: set[str] = set()
        for c in ((chain,) if chain else CHAINS):
            found |= self.at.get((device, c), set())
            found |= self.up.get((device, c), set())
            for ancestor in self.topology.ancestors(device, c):
                found |= self.at.get((ancestor, c), set())
        return sorted((i for i in found if self.incidents[i]["updated"] >= since_ms),
                      key=lambda i: (self.incidents[i]["opened"], i))

    # -- events ------------------------------------------------------------------------

    def refuse(self, clean: Mapping, bounds: EventTimeBounds, now_ms: int | None) -> str | None:
        """Why this alarm's time must not drive the site's state (it would expire or resolve real
        incidents), or None. The site's watermark is its reference; before any, the clock and the epoch."""
        mark = self.watermark if self.watermark > 0 else None
        return bounds.check(clean["alarm"]["ts_ms"], mark, mark, now_ms)

    def on_alarm(self, clean: Mapping) -> None:
        alarm, fp = clean["alarm"], clean["fingerprint"]
        t = alarm["ts_ms"]
        self.watermark = max(self.watermark, t)
        inc_id = self.by_fp.get(fp)
        if alarm["state"] == "clear" and not clean.get("flapping"):
            if inc_id is not None:
                inc = self.incidents[inc_id]
                inc["members"][fp]["active"] = False
                inc["updated"] = max(inc["updated"], t)
                if not any(m["active"] for m in inc["members"].values()):
                    self._resolve(inc, t, "all its alarms cleared", reopenable=True)
                else:
                    self._touch(inc)
            return
        if inc_id is not None:
            inc = self.incidents[inc_id]
            member = inc["members"][fp]
            if clean.get("first_seen_ms", t) != member["episode"]:  # a new raise episode of the same alarm
                member["before"] += member["episode_count"]
                member["episode"] = clean.get("first_seen_ms", t)
            member["episode_count"] = clean.get("duplicate_count", 1)
            member["count"] = member["before"] + member["episode_count"]
            member["active"] = True
            member.update(alarm_words(alarm))
            inc["updated"] = max(inc["updated"], t)
            self._touch(inc)
            return
        reopen = self.recent_by_fp.get(fp)
        if reopen is not None and t - self.recent[reopen]["resolved"] <= self.config.group_window_ms:
            inc = self._forget_recent(reopen)
            inc["members"][fp]["active"] = True
            inc["updated"] = max(inc["updated"], t)
            self.incidents[inc["id"]] = inc
            for member_fp, m in inc["members"].items():
                self._index(inc["id"], member_fp, m)
            self._touch(inc)
            return
        member = {"device": alarm["device"], "device_type": alarm["device_type"], "code": alarm["code"],
                  "chain": self.topology.chain_of(alarm), "severity": alarm["severity"], "first": t,
                  "active": True, "episode": clean.get("first_seen_ms", t),
                  "episode_count": clean.get("duplicate_count", 1), "before": 0, **alarm_words(alarm)}
        member["count"] = member["episode_count"]
        related = self.related(member["device"], member["chain"], t - self.config.group_window_ms)
        if not related:
            inc = {"id": _incident_id(self.site, t, fp), "opened": t, "updated": t,
                   "members": {fp: member}, "announced": False}
            self.incidents[inc["id"]] = inc
        else:
            inc = self.incidents[related[0]]
            for other_id in related[1:]:
                self._merge(self.incidents[other_id], into=inc, t=t)
            inc["members"][fp] = member
            inc["updated"] = max(inc["updated"], t)
        self._index(inc["id"], fp, member)
        self._touch(inc)

    def expire(self, now_ms: int | None = None) -> None:
        """Resolve incidents with no member alarm seen for ``resolve_after_ms`` (event time)."""
        now = self.watermark if now_ms is None else max(self.watermark, now_ms)
        self.watermark = now
        for inc in list(self.incidents.values()):
            if now - inc["updated"] >= self.config.resolve_after_ms:
                self._resolve(inc, now, f"no alarm for {self.config.resolve_after_ms // 1000} s")
        for inc in list(self.recent.values()):
            if now - inc["resolved"] > self.config.group_window_ms:
                self._forget_recent(inc["id"])

    def flush(self) -> list[dict]:
        """One Incident record per incident changed since the last flush."""
        out = []
        for inc_id, record in self.changed.items():
            if record is None:
                inc = self.incidents[inc_id]
                record = self._record(inc, "updated" if inc["announced"] else "open")
                inc["announced"] = True
            out.append(record)
        self.changed = {}
        return out

    # -- lifecycle ---------------------------------------------------------------------

    def root_of(self, inc: Mapping) -> str:
        """The member that explains most of the others: upstream of them, seen no later than
        ``root_lag_ms`` after them (a cause is rarely reported long after its effects) and at least
        as severe (a warning upstream does not explain a major alarm below it); then the shallowest
        in the topology, the most severe, the oldest."""
        members = inc["members"]
        at_device: dict[str, list[str]] = {}
        for fp, m in members.items():
            at_device.setdefault(m["device"], []).append(fp)
        explains = dict.fromkeys(members, 0)
        lag = self.config.root_lag_ms
        for m in members.values():
            upstream = {a for c in self._chains(m) for a in self.topology.ancestors(m["device"], c)}
            for device in upstream & at_device.keys():
                for fp in at_device[device]:
                    cause = members[fp]
                    if cause["first"] <= m["first"] + lag and _sev(cause) <= _sev(m):
                        explains[fp] += 1

        def rank(fp):
            m = members[fp]
            depth = self.topology.depth(m["device"]) if m["device"] in self.topology else 1_000
            return -explains[fp], depth, SEVERITY_RANK.get(m["severity"], 9), m["first"], fp

        return min(members, key=rank)

    def _merge(self, other: dict, into: dict, t: int) -> None:
        self._unindex(other)
        del self.incidents[other["id"]]
        for fp, member in other["members"].items():
            into["members"][fp] = member
            self._index(into["id"], fp, member)
        into["opened"] = min(into["opened"], other["opened"])
        into["updated"] = max(into["updated"], other["updated"])
        if other["announced"]:  # downstream knows it: tell them where it went
            self.changed[other["id"]] = self._record(other, "resolved", t, merged_into=into["id"],
                                                     why=f"merged into {into['id']}")
        else:
            self.changed.pop(other["id"], None)

    def _resolve(self, inc: dict, t: int, why: str, reopenable: bool = False) -> None:
        self.changed[inc["id"]] = self._record(inc, "resolved", t, why=why)
        self._unindex(inc)
        del self.incidents[inc["id"]]
        if not reopenable:  # timed out: a new raise is a new incident
            return
        inc["resolved"], inc["announced"] = t, True
        self.recent[inc["id"]] = inc
        for fp in inc["members"]:
            self.recent_by_fp[fp] = inc["id"]

    def _forget_recent(self, inc_id: str) -> dict:
        inc = self.recent.pop(inc_id)
        for fp in inc["members"]:
            if self.recent_by_fp.get(fp) == inc_id:
                del self.recent_by_fp[fp]
        return inc

    def _touch(self, inc: dict) -> None:
        self.changed[inc["id"]] = None

    def _record(self, inc: Mapping, state: str, resolved_ms: int | None = None, merged_into: str | None = None,
                why: str = "") -> dict:
        members = inc["members"]
        root = members[self.root_of(inc)]
        severity = min((m["severity"] for m in members.values()), key=lambda s: SEVERITY_RANK.get(s, 9))
        kinds: dict[str, int] = {}
        for m in members.values():
            kinds[m["device_type"]] = kinds.get(m["device_type"], 0) + 1
        devices = len({m["device"] for m in members.values()})
        summary = (f"{root['code']} on {root['device_type']} {root['device']}"
                   + (f" with {len(members) - 1} related alarm{'s' if len(members) != 2 else ''} on {devices} devices ("
                      + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])) + ")"
                      if len(members) > 1 else "")
                   + (f"; resolved: {why}" if why else ""))
        return {"incident_id": inc["id"], "site": self.site, "state": state, "opened_ms": inc["opened"],
                "updated_ms": inc["updated"], "resolved_ms": resolved_ms, "root_device": root["device"],
                "root_device_type": root["device_type"], "root_code": root["code"], "severity": severity,
                "member_count": len(members),
                "members": [{"fingerprint": fp, "device": m["device"], "device_type": m["device_type"],
                             "code": m["code"], "count": m["count"], "first_seen_ms": m["first"],
                             "text": m.get("text", ""), "log_line": m.get("log_line", "")}
                            for fp, m in members.items()],
                "summary": summary, "merged_into": merged_into}


def alarm_words(alarm: Mapping) -> dict:
    """What an alarm says, kept on its incident member for the narrator: its text and raw log line, bounded."""
    attributes = alarm.get("attributes") or {}
    log_line = next((attributes[k] for k in LOG_ATTRIBUTES if attributes.get(k)), "")
    return {"text": (alarm.get("text") or "")[:MAX_WORDS_CHARS], "log_line": log_line[:MAX_WORDS_CHARS]}


def _sev(member: Mapping) -> int:
    return SEVERITY_RANK.get(member["severity"], 9)


def _incident_id(site: str, ts_ms: int, fp: str) -> str:
    """Deterministic: the same first alarm gives the same id after a replay."""
    return f"{site}-{ts_ms}-{hashlib.blake2b(fp.encode(), digest_size=4).hexdigest()}"


def _copy_incident(inc: Mapping) -> dict:
    return {**inc, "members": {fp: dict(m) for fp, m in inc["members"].items()}}
