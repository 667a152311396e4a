"""From an incident to a retrieval query: root device type, alarm codes and symptoms in one vocabulary.

Alarm codes come in every spelling (``UPS_ON_BATTERY``, ``ups.onBattery``,
``Xid79``); ``terms`` splits them into words, expands the abbreviations
vendors use, reads the words of alarms in other languages as the SOPs' English
words (``models/alarm_glossary.py``; accents are folded first, so "Défaut" stays
one word) and stems, so the query and the SOP text meet on the same tokens
whatever the phrasing. Stemming is Snowball's English stemmer (a well-kept
library rather than our own suffix rules).

>>> terms("UPS_OnBatt"), terms("xupsOnBattery")
(['ups', 'batteri'], ['ups', 'batteri'])
>>> terms("GPU Xid79 fell off bus")
['gpu', 'xid', '79', 'fell', 'off', 'bus']
>>> code_key("ups.on-battery"), code_key("UPS_ON_BATTERY")
('UPS_ON_BATTERY', 'UPS_ON_BATTERY')

What a member's words report beside its code (a reading as normal, routine work, a fault stated outright) is
read by ``models/alarm_states.py``; the readings of the supply's phases and of counters are here, as they
rewrite the words the query searches with.

Log lines name the fault more precisely than many alarm codes: ``log_codes``
reads the codes a kernel or switch log line states.

>>> log_codes("NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus.")
['XID_79']
>>> log_codes("nvidia-nvswitch2: SXid (PCI:0000:86:00.0): 12028, Non-fatal")
['SXID']
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache

import snowballstemmer
from haystack import component

from opsloop.config.site import ONE_WORD
from opsloop.models import alarm_glossary
from opsloop.models.alarm_states import NORMAL_WORDS, normal_states, says_no_fault, states_a_fault, symptoms
from opsloop.models.standard_codes import XID_NUMBER, meanings

# Abbreviations seen in vendor alarm codes and device names → the words our SOPs use.
ABBREVIATIONS = {
    "batt": "battery", "bat": "battery", "temp": "temperature", "tmp": "temperature", "hi": "high",
    "lo": "low", "oc": "overcurrent", "ovc": "overcurrent", "ocp": "overcurrent", "brkr": "breaker",
    "cb": "breaker", "gen": "generator", "genset": "generator", "util": "utility", "pwr": "power",
    "comm": "communication", "comms": "communication", "soc": "state of charge", "soh": "state of health",
    "psu": "power supply",
    "ib": "infiniband", "hca": "infiniband adapter", "fs": "file system", "chw": "chilled water",
    "cw": "chilled water", "flt": "fault", "fail": "failure", "err": "error", "errs": "errors",
    "ovt": "overtemperature", "overtemp": "overtemperature", "ot": "overtemperature", "uv": "undervoltage",
    "ov": "overvoltage", "volt": "voltage", "freq": "frequency", "byp": "bypass", "inv": "inverter",
    "rect": "rectifier", "xfer": "transfer", "xfr": "transfer", "sw": "switch", "sync": "synchronisation",
    "dbe": "uncorrectable double bit ecc", "sbe": "correctable single bit ecc", "rx": "receive",
    "tx": "transmit", "dp": "differential pressure", "lvl": "level", "eod": "end of discharge",
    "ahu": "air handler crah", "rh": "humidity", "bess": "ess battery", "ups": "ups", "mgmt": "management",
    "ctld": "controller", "dn": "down", "nvl": "nvlink", "hbm": "gpu memory", "mem": "memory",
    "autonomy": "runtime", "aer": "pcie advanced error", "nvrm": "gpu driver", "thr": "throttle",
    "throttling": "throttle", "ovld": "overload", "ol": "overload", "thd": "total harmonic distortion",
    "thdv": "total harmonic distortion voltage", "thdi": "total harmonic distortion current",
    "dip": "sag", "dips": "sags", "vsag": "voltage sag",  # IEC 61000-4-30 says dip where IEEE 1159 says sag
    "unbalance": "imbalance", "unbalanced": "imbalance", "unbal": "imbalance",  # EN 50160 and IEC 61000 words
    # Compounds written as one word or two: one spelling, so "Loss of Air Flow" states AIRFLOW_LOSS.
    "airflow": "air flow", "dewpoint": "dew point",
}
# Alarm words in other languages -> the SOPs' words, every language at once.
FOREIGN_WORDS = alarm_glossary.every_language(alarm_glossary.WORDS)
# A phase unbalance of 30 % or more is a phase lost, not a power-quality event: a phase at 0 V gives 50 % (negative
# sequence) to 100 % (NEMA's deviation from the mean), while power-quality limits are 2-3 % and a one-phase sag to
# 60 % of nominal gives about 30 %. A current's unbalance is the load's, as large as single-phase loads make it.
LOST_PHASE_UNBALANCE_PCT = 30.0
_IMBALANCE = re.compile(r"\b(?:%s)\b" % "|".join(sorted(
    {"unbalance", "unbalanced", "unbal", "imbalance", "imbalanced"}
    | {word for word, meaning in FOREIGN_WORDS.items() if meaning == "imbalance"})))
_CURRENT = re.compile(r"\b(?:%s)\b" % "|".join(sorted(
    {"current", "i", "amps", "load"}
    | {word for word, meaning in FOREIGN_WORDS.items() if meaning in ("current", "load")})))
_UNBALANCE_PCT = re.compile(r"(\w+\W+)?(%s)(\D{0,30}?)(\d+(?:[.,]\d+)?)\s*%%" % _IMBALANCE.pattern)
STOPWORDS = frozenset("a an the of on in at to for and or is are was were be by with from as it its this that "
                      "than then there their into per".split())
# Stems that mean the same in alarm texts, folded into one ("Inverter Failure" is an inverter fault).
SAME_STEM = {"failur": "fault", "fail": "fault", "faulti": "fault", "lost": "loss", "lose": "loss", "outag": "loss",
             "restart": "reboot"}
# Words a device type may be that say nothing about the kind of device.
GENERIC_TYPES = frozenset("device unknown equipment asset other generic system none na n a item".split())
# "under voltage", "Over-Current": one word, as the SOPs and most codes write them.
_PREFIXED = re.compile(r"\b(under|over)[\s_-]+(voltage|current|temperature|load|pressure|frequency|speed)\b")
# A current read above its limit is an overcurrent ("rmsCurrent 27.4 A aboveUpperCritical", "L1 current 30.8 A
# exceeds critical"); a PDU's "inlet" then is its power inlet, not an air inlet. A residual current is a leak to
# earth, not an overcurrent.
_CURRENT_ABOVE = re.compile(r"(?<!residual )\bcurrent(?: [a-z0-9]+){0,3} (?:above|exceeds?|exceeded|over)\b")
# A temperature read above its limit ("max cell 53.1 C above 50.0 C", "supply 41.8 C > 40 C") is an
# over-temperature.
_TEMPERATURE_ABOVE = re.compile(r"\d\s*(?:°|deg\s*)?C\s*(?:>|above\b|exceeds?\b|exceeded\b|over\b)", re.IGNORECASE)
_DEW_POINT = re.compile(r"\bdew ?point\b")
# A GPU's utilisation ("GPU util 0%", DCGM's GPU_UTIL) is how busy it is, not the utility supply: both stem to "util".
_USAGE = re.compile(r"\butili[sz]ation\b|\butil(?= \d)|(?<=\bgpu )util\b|(?<=\bgpus )util\b|(?<=\d )util\b")
# An undervoltage on all three phases at once ("3U< operate", read by ``standard_codes`` as on all phases; "27P1
# undervoltage 3ph") is the supply lost, which an incomer's undervoltage relay is there to detect, not a sag.
_THREE_PHASES = re.compile(r"\b(?:3 ?ph|three ?phases?|all (?:three )?phases|trifasic[ao])\b")
# A phase of the medium- or high-voltage supply read at 0 kV ("U12=0.0 kV", "R=0.0kV"), or a phase said absent: that
# phase of the supply is lost (SOP-PWR-013 hands a phase that reads zero to the utility loss); several: the mains lost.
# A low-voltage input at 0 V says less: one UPS's own feeder opened reads the same.
_ZERO_PHASE = re.compile(r"\b(?:[vu](?:[123abc]|12|23|31)|l[123](?:-n)?|[ryb]|phase [abc123])\s*[=:]?\s*0(?:[.,]0+)?\s*"
                         r"(?:kv\b)")
# A voltage under 10 % of its nominal or declared value ("V2 0.1 % of Un", "0.0 % Udin") is an interruption (IEC
# 61000-4-30), not a sag: that phase reads zero too.
_OF_NOMINAL_PCT = re.compile(r"%\s*(?:of\s+)?(?:un|udin|uc|vn|nominal|nom|declared)\b")
_PERCENT = re.compile(r"(\d+(?:[.,]\d+)?)\s*%")
INTERRUPTION_PCT = 10.0
_ABSENT_PHASE = re.compile(r"\bphase \w{1,2} (?:absent|missing)\b|\b(?:absent|missing) phase\b")
# An error or link counter read at zero ("LinkDowned 0", "LinkDownedCounter 0", "LinkErrorRecovery=0") reports that
# nothing happened: it states no fault of its name.
_ZERO_COUNTER = re.compile(r"\b(?:link ?downed|link ?error ?recovery|symbol ?errors?|port ?rcv ?errors?|"
                           r"excessive ?buffer ?overrun ?errors?)(?: ?counter)?\s*(?:[=:]|delta)?\s*\+?0\b(?![.,]\d)")
# A power supply whose AC input is lost ("Power Supply PS4 | Power Supply AC lost") lost its feed: INPUT_POWER_LOST.
_PSU_INPUT_LOST = re.compile(r"\b(?:power suppl(?:y|ies)|psus?|ps ?\d+)\b(?: \w+){0,4}? "
                             r"(?:ac|input)(?: power)? (?:lost|loss)\b")
# "The power supplies are not redundant", "non-redundant": the redundancy lost (PSU_REDUNDANCY_LOST).
_NOT_REDUNDANT = re.compile(r"\b(?:not|non|no longer) ?redundant\b")
# A monitoring service that died ("snmp-poller.service: Main process exited, code=killed"): its collector is down.
_COLLECTOR_DIED = re.compile(r"\b(?:poller|collector|exporter|scraper|telegraf) service\b(?: \w+){0,6}? "
                             r"(?:exited|failed|killed|dead|stopped)\b")
# Equipment acronyms the stemmer would mangle ("ups" → "up").
UNSTEMMED = frozenset("ups ats sts pdu pdus bms ess pcs ecc xid cdu crah crac rpp hca vesda".split())
# An overcurrent protector (protective device) is a breaker or fuse: its state change is a trip, not an overcurrent.
_PROTECTOR = re.compile(r"\bover[\s_-]*current[\s_-]*protect(?:or|ive device)s?\b")
# Ways of saying a peer did not answer ("Nodes n1 not responding", "no response 3/3", "Unable to contact slurm
# controller", "Connection to scratch-OST0007 (at 10.44.8.17@o2ib) was lost"): one word, the SOPs' own
# ("CONTROLLER_UNREACHABLE").
_NO_ANSWER = re.compile(r"\b(?:not responding|no response|unable to contact|not reachable|cannot reach|"
                        r"connection to(?: \S+){1,12}? (?:was |is |has been )?lost|connection lost)\b")
# "not available", "never becomes available": the SOPs' "unavailable" (SOURCE_UNAVAILABLE, GEN_NOT_AVAILABLE).
_NOT_AVAILABLE = re.compile(r"\b(?:not|never becomes?|never) available\b")
# A UPS whose bypass is unavailable, inhibited or out of tolerance is not on bypass: its inverter carries the load
# with no way round it. One word, so the bypass procedure's "bypass" does not claim it.
_NO_BYPASS = re.compile(r"\b(?:bypass|static switch|static transfer)(?: transfer)? "
                        r"(?:unavailable|inhibited|disabled|blocked|bad|not ready|out of tolerance)\b")
# A vendor's MIB prefix glued to an equipment acronym ("xupsOnBattery", Eaton's XUPS-MIB): the acronym alone.
_VENDOR_PREFIXED = re.compile(r"^[a-z]{1,2}(ups|pdu)$")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z]{3})(?=[A-Z][a-z])|(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")
_WORD = re.compile(r"[a-z0-9]+")
_stemmer = snowballstemmer.stemmer("english")
# An Xid's number is the fault (``standard_codes.XID_NUMBER``); SXid is an NVSwitch error.
_SXID = re.compile(r"(?<![a-z])sxid(?![a-z])")
_UPPER_CODE = re.compile(r"(?<![A-Za-z0-9_])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+(?![A-Za-z0-9_])")


# Letters NFKD does not split into a base letter and a mark.
_UNSPLIT_LETTERS = str.maketrans({"ł": "l", "Ł": "L", "ß": "ss", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE",
                                  "œ": "oe", "Œ": "OE", "đ": "d", "Đ": "D", "ı": "i", "ħ": "h"})


def ascii_folded(text: str) -> str:
    """``text`` with accents and marks dropped, so a word with one is still one word ("Défaut" as "Defaut").

    >>> ascii_folded("Défaut prostownika ładowania, Störung, ＵＰＳ")
    'Defaut prostownika ladowania, Storung, UPS'
    """
    if text.isascii():
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text.translate(_UNSPLIT_LETTERS))
                   if not unicodedata.combining(c))


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _stemmer.stemWord(word)


def lost_phase(text: str) -> bool:
    """Whether ``text`` reports a voltage unbalance of ``LOST_PHASE_UNBALANCE_PCT`` or more: a phase lost.

    >>> [lost_phase(t) for t in ("Voltage unbalance 61.2 % (limit 2.0 %)", "V unbalance 2.6 %", "I unbalance 44 %")]
    [True, False, False]
    """
    for before, _, gap, pct in _UNBALANCE_PCT.findall(ascii_folded(text).lower()):
        if float(pct.replace(",", ".")) >= LOST_PHASE_UNBALANCE_PCT and not _CURRENT.search(before + gap):
            return True
    return False


def phases_lost(text: str) -> int:
    """How many phases of the supply ``text`` reads at zero: at 0 kV, or under ``INTERRUPTION_PCT`` of nominal.

    >>> phases_lost("U12=0.0 kV U23=0.0 kV U31=0.0 kV"), phases_lost("Dip: V1 71.8 % of nominal"), phases_lost("L1 0 V")
    (3, 0, 0)
    """
    folded = ascii_folded(text).lower()
    lost = len(set(_ZERO_PHASE.findall(folded)))
    if _OF_NOMINAL_PCT.search(folded):
        lost += sum(float(pct.replace(",", ".")) < INTERRUPTION_PCT for pct in _PERCENT.findall(folded))
    return lost


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` with camelCase, acronym runs ("PDUNear") and letter-digit runs split, abbreviations
    expanded."""
    out: list[str] = []
    text = " ".join([text, *meanings(text)])  # "SPN 110 FMI 16": the words the standard's numbers stand for
    said = _CAMEL.sub(" ", ascii_folded(text)).lower()
    said = " ".join(_WORD.findall(_ZERO_COUNTER.sub(" ", said)))  # "NOT_RESPONDING": "not responding"
    said = _PREFIXED.sub(r"\1\2", _PROTECTOR.sub("breaker", said))
    said = _CURRENT_ABOVE.sub(r"\g<0> overcurrent", said)
    if _TEMPERATURE_ABOVE.search(text) and not _DEW_POINT.search(said):  # a high dew point is humid air, not hot
        said += " overtemperature"
    said = _USAGE.sub("usage", said.replace("firing speed", "engine speed"))  # a genset's crank speed, no fire
    if "undervoltage" in said and _THREE_PHASES.search(said):
        said += " loss of mains"
    if lost_phase(text):
        said = _IMBALANCE.sub("phase loss", said)
    if "loss of mains" not in said:
        lost = phases_lost(text)
        if lost >= 2:
            said += " loss of mains"
        elif lost == 1 or _ABSENT_PHASE.search(said):
            said += " phase loss"
    said = _NOT_REDUNDANT.sub("redundancy lost", said)
    if _PSU_INPUT_LOST.search(said):
        said += " input power lost"
    if _COLLECTOR_DIED.search(said):
        said += " collector down"
    said = _NO_BYPASS.sub("bypassunavailable", _NOT_AVAILABLE.sub("unavailable", _NO_ANSWER.sub("unreachable", said)))
    for word in said.split():
        word = _VENDOR_PREFIXED.sub(r"\1", word)
        out.extend((ABBREVIATIONS.get(word) or FOREIGN_WORDS.get(word) or word).split())
    return out


def terms(text: str) -> list[str]:
    """Stemmed, stopword-free retrieval terms of ``text``."""
    return [w if w in UNSTEMMED else SAME_STEM.get(_stem(w), _stem(w)) for w in words(text) if w not in STOPWORDS]


def code_key(code: str) -> str:
    """One spelling of an alarm code, for exact comparison: upper-case words joined by ``_``."""
    return "_".join(w.upper() for w in _WORD.findall(_CAMEL.sub(" ", ascii_folded(code)).lower()))


def log_codes(text: str) -> list[str]:
    """The alarm codes a log line or alarm text states outright: NVIDIA Xid numbers, NVSwitch SXid and
    upper-case codes written into the text (``NODE_FAIL``)."""
    lowered = text.lower()
    found = [f"XID_{int(n)}" for n in XID_NUMBER.findall(lowered)] + _UPPER_CODE.findall(text)
    if _SXID.search(lowered):
        found.append("SXID")
    return list(dict.fromkeys(found))


def reports_only_normal(member: dict) -> bool:
    """A member whose every clause reports a normal reading, or whose code does (``VoltageNormal``) while its words
    state no fault ("bus 401 V, 50.00 Hz": the readings of that normal state)."""
    text, code_words = said(member), words(member.get("code") or "")
    code_normal = bool(code_words) and code_words[-1] in NORMAL_WORDS
    if text:
        return not symptoms(text) or code_normal and not states_a_fault(text)
    return code_normal


def said(member: dict) -> str:
    """What a member alarm says beyond its code: its text and raw log line."""
    return " ".join(part for part in (member.get("text") or "", member.get("log_line") or "") if part)


_LETTERS = re.compile(r"[^\W\d_]+")
# Alarms older than this before the root are its circumstance, not a lead (the builder's and the retriever's default)
LEAD_WITHIN_S = 3600.0


def in_english(text: str) -> str:
    """``text`` with each word of another language the glossary knows in the SOPs' English words, its punctuation
    kept, so the clauses that report a normal state read as in English ("USV Normalbetrieb wiederhergestellt":
    "USV normal mode restored").

    >>> in_english("Rientro rete, ripristinato")
    'Rientro grid, restored'
    """
    return _LETTERS.sub(lambda m: FOREIGN_WORDS.get(ascii_folded(m.group()).lower(), m.group()), text)


@component
class IncidentQueryBuilder:
    """Builds the retrieval query of an incident (a dict of the ``Incident`` schema).

    The root device type and root code weigh most (repeated ``root_weight``
    times), then the summary and what the root alarm says (its text and log
    line, ``said_weight`` times), then the other members' codes, device types
    and words, each distinct one once, so a storm of 300 PDU alarms does not
    drown the root. ``evidence_codes`` are the codes the root's words state
    (an ``Xid 79`` in its kernel line), which the retriever treats as root codes.
    ``lead_within_s``: a member first seen more than this before the root is the
    circumstance the root came in (a grid outage the site has ridden through on its
    generators for hours), not a lead to its cause. ``site_words`` and ``site_kinds``
    (a site file's ``glossary:``) read the site's own words of alarm texts, codes and
    summaries, and of device types, in English before anything else, the shipped
    glossary included.

    >>> words = {"izpad": "loss", "omrezje": "grid", "omrezja": "grid"}  # each form a site's alarms use
    >>> builder = IncidentQueryBuilder(site_words=words, site_kinds={"ABP": "ups"})
    >>> out = builder.run({"root_code": "OMREZJE_IZPAD", "root_device_type": "abp", "root_device": "abp-1",
    ...                    "members": [{"device": "abp-1", "code": "OMREZJE_IZPAD", "text": "Izpad omrežja"}]})
    >>> out["root_code"], out["device_type"], out["root_words"].strip()
    ('grid_loss', 'ups', 'loss grid')
    """

    def __init__(self, root_weight: int = 3, said_weight: int = 1, max_members: int = 20,
                 lead_within_s: float = LEAD_WITHIN_S, site_words: Mapping[str, str] | None = None,
                 site_kinds: Mapping[str, str] | None = None):
        self.root_weight = root_weight
        self.said_weight = said_weight
        self.max_members = max_members
        self.lead_within_s = lead_within_s
        self.site_words = site_words
        self.site_kinds = site_kinds
        self._words = {ascii_folded(k).lower(): v for k, v in (site_words or {}).items()}
        self._kinds = {ascii_folded(k).upper(): v for k, v in (site_kinds or {}).items()}

    @component.output_types(query=str, root_code=str, device_type=str, member_codes=list[str],
                            evidence_codes=list[str], root_device=str, root_words=str,
                            member_words=list[str], lead_words=list[str], fan_out=int, root_alarm=dict,
                            member_alarms=list[dict], member_states=list[dict])
    def run(self, incident: dict) -> dict:
        if self._words or self._kinds:
            incident = self._in_site_english(incident)
        incident = _lost_phase_codes(incident)
        root_code = incident.get("root_code") or ""
        device_type = incident.get("root_device_type") or ""
        root_device = incident.get("root_device") or ""
        members = sorted(incident.get("members") or [], key=lambda m: -int(m.get("count", 1)))
        is_root = [m.get("device") == root_device and m.get("code") == root_code for m in members]
        root_said = " ".join(dict.fromkeys(said(m) for m, root in zip(members, is_root) if root and said(m)))
        # A member that reports a reading as normal is context, not a symptom: it names no fault.
        others = [m for m, root in zip(members, is_root) if not root and not reports_only_normal(m)]
        member_codes = list(dict.fromkeys(m["code"] for m in others if m.get("code") and m["code"] != root_code))
        member_types = list(dict.fromkeys(m["device_type"] for m in others
                                          if m.get("device_type") and m["device_type"] != device_type))
        member_said = list(dict.fromkeys(symptoms(said(m)) for m in others if symptoms(said(m))))
        summary = incident.get("summary") or ""
        root = self._alarm(root_code, device_type, root_device, root_said, summary)
        parts = [root["query"]]
        parts += member_codes[: self.max_members] + member_types[: self.max_members] + member_said[: self.max_members]
        query = " ".join(terms(" ".join(parts)))
        root_seen = _root_seen(members, is_root)
        english = {id(m): in_english(said(m)) for m in members}  # each member's words read in English once
        # Devices raising the root's code, not those whose reading under that code is normal ("RCM 6 mA normal").
        root_devices = len({m.get("device") for m, root in zip(members, is_root)
                            if code_key(m.get("code") or "") == code_key(root_code)
                            and (root or not reports_only_normal(m))})
        return {"query": query, "root_code": root_code, "device_type": device_type,
                "member_codes": member_codes[: self.max_members], "evidence_codes": root["evidence_codes"],
                "root_device": root_device, "root_words": root["words"],
                "member_words": _member_words(others, root_code)[: self.max_members],
                "lead_words": _member_words(_leads(members, is_root, others, self.lead_within_s), root_code),
                "fan_out": fan_out(members, root_device, root_code),
                "root_alarm": {**root, "devices": root_devices},
                "member_alarms": self._member_alarms(others, root_code, root_device, root_seen, english),
                # What every member says, normal states too ("Genset running, ready to load"): circumstances.
                "member_states": [{"device_type": m.get("device_type") or "", "device": m.get("device") or "",
                                   "said": normal_states(english[id(m)])}
                                  for m, root in zip(members, is_root) if not root][: self.max_members]}

    def _alarm(self, code: str, device_type: str, device: str, said_text: str, summary: str = "") -> dict:
        """One alarm's own query (its kind and code, the summary, what it says), words and the codes they state."""
        kind = "" if set(words(device_type)) <= GENERIC_TYPES else device_type
        query = " ".join(terms(" ".join([kind, code] * self.root_weight + [summary] + [said_text] * self.said_weight)))
        stated = [c for c in log_codes(" ".join([said_text, summary, code])) if code_key(c) != code_key(code)]
        return {"query": query, "code": code, "device_type": device_type, "device": device,
                "words": " ".join([summary, said_text]), "evidence_codes": stated}

    def _in_site_english(self, incident: dict) -> dict:
        """The incident with the site's own words read in English: its texts, log lines, summary and codes (a code's
        words joined by "_", so it stays one code), and its device types as the kinds they name."""
        def text(value: str | None, joiner: str = " ") -> str | None:
            if not value or not self._words:
                return value
            return ONE_WORD.sub(lambda m: joiner.join(self._words.get(ascii_folded(m.group()).lower(),
                                                                        m.group()).split()), value)

        def kind(value: str | None) -> str | None:
            if not value or not self._kinds:
                return value
            return ONE_WORD.sub(lambda m: self._kinds.get(ascii_folded(m.group()).upper(), m.group()), value)

        members = [{**m, "text": text(m.get("text")), "log_line": text(m.get("log_line")),
                    "code": text(m.get("code"), "_"), "device_type": kind(m.get("device_type"))}
                   for m in incident.get("members") or []]
        return {**incident, "members": members, "summary": text(incident.get("summary")),
                "root_code": text(incident.get("root_code"), "_"),
                "root_device_type": kind(incident.get("root_device_type"))}

    def _member_alarms(self, others: list[dict], root_code: str, root_device: str, root_seen: int | None,
                       english: dict[int, str]) -> list[dict]:
        """Each distinct member code's first alarm, to be read on its own: when it came (seconds from the root's
        first alarm), whether on the root's device, on how many devices its code was raised, and whether its words
        report any reading as normal."""
        first: dict[str, dict] = {}
        devices: dict[str, set[str]] = {}  # code -> the devices raising it
        for m in sorted(others, key=lambda m: int(m.get("first_seen_ms", 0))):
            if m.get("code") and code_key(m["code"]) != code_key(root_code):
                first.setdefault(code_key(m["code"]), m)
                devices.setdefault(code_key(m["code"]), set()).add(m.get("device") or "")
        alarms = []
        for m in list(first.values())[: self.max_members]:
            seen = int(m["first_seen_ms"]) if "first_seen_ms" in m else None
            words_said = english[id(m)]
            alarms.append({**self._alarm(m["code"], m.get("device_type") or "", m.get("device") or "",
                                         symptoms(words_said)),
                           "after_s": (seen - root_seen) / 1000 if None not in (seen, root_seen) else 0.0,
                           "same_device": m.get("device") == root_device,
                           "devices": len(devices[code_key(m["code"])]),
                           "says_normal": says_no_fault(words_said)})
        return alarms


def _lost_phase_codes(incident: dict) -> dict:
    """The incident with each code of an alarm whose words report a phase lost (``lost_phase``) read as that:
    "V_UNBALANCE" saying "unbalance 61 %" is a phase loss, not the power-quality event its code names."""
    lost = {(m.get("device"), m.get("code")) for m in incident.get("members") or [] if lost_phase(said(m))}
    if not lost:
        return incident

    def read(device: str | None, code: str | None) -> str | None:
        parts = code_key(code or "").lower().split("_")
        if (device, code) not in lost or not any(_IMBALANCE.fullmatch(part) for part in parts):
            return code
        return "_".join("phase_loss" if _IMBALANCE.fullmatch(part) else part for part in parts).upper()

    members = [{**m, "code": read(m.get("device"), m.get("code"))} for m in incident["members"]]
    return {**incident, "members": members, "root_code": read(incident.get("root_device"), incident.get("root_code"))}


def _member_words(members: list[dict], root_code: str) -> list[str]:
    """What each distinct member code says, its code's words and its members' symptoms together."""
    by_code: dict[str, list[str]] = {}
    for m in members:
        if m.get("code") and code_key(m["code"]) != code_key(root_code):
            by_code.setdefault(code_key(m["code"]), [m["code"]]).append(symptoms(said(m)))
    return [" ".join(dict.fromkeys(parts)) for parts in by_code.values()]


def _root_seen(members: list[dict], is_root: list[bool]) -> int | None:
    """When the root alarm was first seen (ms), if the members say."""
    return min((int(m["first_seen_ms"]) for m, root in zip(members, is_root) if root and "first_seen_ms" in m),
               default=None)


def _leads(members: list[dict], is_root: list[bool], others: list[dict], within_s: float) -> list[dict]:
    """Members first seen before the root alarm, by ``within_s`` at most: upstream of it in the causal chain, more
    likely its cause."""
    root_seen = _root_seen(members, is_root)
    if root_seen is None:
        return []
    since = root_seen - within_s * 1000
    return [m for m in others if "first_seen_ms" in m and since <= int(m["first_seen_ms"]) < root_seen]


def fan_out(members: list[dict], root_device: str = "", root_code: str = "") -> int:
    """The most distinct devices that report one alarm code (the root's included): a fault shared by many
    devices at once lies upstream of all of them."""
    devices: dict[str, set[str]] = {}
    if root_code:
        devices[code_key(root_code)] = {root_device}
    for m in members:
        if m.get("code"):
            devices.setdefault(code_key(m["code"]), set()).add(m.get("device") or "")
    return max((len(d) for d in devices.values()), default=0)
