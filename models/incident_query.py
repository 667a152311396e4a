"""From an incident to a retrieval query: root device type, alarm codes and symptoms in one vocabulary.

Alarm codes come in every spelling (``UPS_ON_BATTERY``, ``ups.onBattery``,
``Xid79``); ``terms`` splits them into words, expands the abbreviations
vendors use and stems, so the query and the SOP text meet on the same tokens
whatever the phrasing. Stemming is Snowball's English stemmer (a well-kept
library rather than our own suffix rules).

>>> terms("UPS_OnBatt")
['ups', 'batteri']
>>> terms("GPU Xid79 fell off bus")
['gpu', 'xid', '79', 'fell', 'off', 'bus']
>>> code_key("ups.on-battery"), code_key("UPS_ON_BATTERY")
('UPS_ON_BATTERY', 'UPS_ON_BATTERY')
"""

from __future__ import annotations

import re
from functools import lru_cache

import snowballstemmer
from haystack import component

# Abbreviations seen in vendor alarm codes and device names → the words our SOPs use.
ABBREVIATIONS = {
    "batt": "battery", "bat": "battery", "temp": "temperature", "tmp": "temperature", "hi": "high",
    "lo": "low", "oc": "overcurrent", "ovc": "overcurrent", "ocp": "overcurrent", "brkr": "breaker",
    "cb": "breaker", "gen": "generator", "genset": "generator", "util": "utility", "pwr": "power",
    "comm": "communication", "comms": "communication", "soc": "state of charge", "soh": "state of health", "psu": "power supply",
    "ib": "infiniband", "hca": "infiniband adapter", "fs": "file system", "chw": "chilled water",
    "cw": "chilled water", "flt": "fault", "fail": "failure", "err": "error", "errs": "errors",
    "ovt": "overtemperature", "overtemp": "overtemperature", "ot": "overtemperature", "uv": "undervoltage",
    "ov": "overvoltage", "volt": "voltage", "freq": "frequency", "byp": "bypass", "inv": "inverter",
    "rect": "rectifier", "xfer": "transfer", "xfr": "transfer", "sw": "switch", "sync": "synchronisation",
    "dbe": "uncorrectable double bit ecc", "sbe": "correctable single bit ecc", "rx": "receive",
    "tx": "transmit", "dp": "differential pressure", "lvl": "level", "eod": "end of discharge",
    "ahu": "air handler crah", "rh": "humidity", "bess": "ess battery", "ups": "ups", "mgmt": "management",
    "ctld": "controller", "dn": "down", "nvl": "nvlink", "hbm": "gpu memory", "mem": "memory",
    "thr": "throttle", "throttling": "throttle", "ovld": "overload", "ol": "overload",
}
STOPWORDS = frozenset("a an the of on in at to for and or is are was were be by with from as it its this that "
                      "than then there their into per".split())
# Equipment acronyms the stemmer would mangle ("ups" → "up").
UNSTEMMED = frozenset("ups ats sts pdu pdus bms ess pcs ecc xid cdu crah crac rpp hca vesda".split())
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")
_WORD = re.compile(r"[a-z0-9]+")
_stemmer = snowballstemmer.stemmer("english")


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _stemmer.stemWord(word)


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` with camelCase and letter-digit runs split, abbreviations expanded."""
    out: list[str] = []
    for word in _WORD.findall(_CAMEL.sub(" ", text).lower()):
        out.extend(ABBREVIATIONS.get(word, word).split())
    return out


def terms(text: str) -> list[str]:
    """Stemmed, stopword-free retrieval terms of ``text``."""
    return [w if w in UNSTEMMED else _stem(w) for w in words(text) if w not in STOPWORDS]


def code_key(code: str) -> str:
    """One spelling of an alarm code, for exact comparison: upper-case words joined by ``_``."""
    return "_".join(w.upper() for w in _WORD.findall(_CAMEL.sub(" ", code).lower()))


@component
class IncidentQueryBuilder:
    """Builds the retrieval query of an incident (a dict of the ``Incident`` schema).

    The root device type and root code weigh most (repeated ``root_weight``
    times), then the summary, then the other members' codes and device types,
    each distinct one once, so a storm of 300 PDU alarms does not drown the root.
    """

    def __init__(self, root_weight: int = 3, max_members: int = 20):
        self.root_weight = root_weight
        self.max_members = max_members

    @component.output_types(query=str, root_code=str, device_type=str, member_codes=list[str])
    def run(self, incident: dict) -> dict:
        root_code = incident.get("root_code") or ""
        device_type = incident.get("root_device_type") or ""
        members = sorted(incident.get("members") or [], key=lambda m: -int(m.get("count", 1)))
        member_codes = list(dict.fromkeys(m["code"] for m in members if m.get("code") and m["code"] != root_code))
        member_types = list(dict.fromkeys(m["device_type"] for m in members
                                          if m.get("device_type") and m["device_type"] != device_type))
        parts = [device_type, root_code] * self.root_weight
        parts += [incident.get("summary") or ""]
        parts += member_codes[: self.max_members] + member_types[: self.max_members]
        query = " ".join(terms(" ".join(parts)))
        return {"query": query, "root_code": root_code, "device_type": device_type,
                "member_codes": member_codes[: self.max_members]}
