"""SOP retrieval: Haystack's in-memory BM25 over the corpus, re-ranked with each SOP's declared scope.

BM25 (Haystack ``InMemoryBM25Retriever``) scores every SOP on the incident's
query terms. The score is then fused with the scope each SOP declares in its
front matter, because the root alarm code and device type are the strongest
evidence an incident carries:

    score = bm25 / best bm25
          + code_weight   × (1 if the root code, or a code the root's log line states, is one of
                             the SOP's codes, else word overlap of the codes)
          + phrase_weight × (1 if, failing that, all words of one of the SOP's codes are in what
                             the root says: "Battery Discharging" states BATTERY_DISCHARGING)
          + device_weight × (1 if the root device's kind is in the SOP's equipment)
          + member_weight × share of distinct member codes the SOP lists, or whose alarm words state one
          + lead_weight   × (1 if the root code names no SOP and a member seen *before* the root lists or
                             states one of this SOP's codes: upstream in the causal chain, the likely cause;
                             unless the root's own fault brings this SOP's alarms, which then only came first)
          + fanout_weight × (1 if one code comes from ``fan_out_devices`` or more devices at once and the
                             SOP's scope or symptoms speak of many: the fault lies upstream of them all;
                             where the root surely reads as a fault that brings the alarm the many devices
                             raise, that fault is the one upstream of them: the root's own SOP alone)
          + cause_weight  × (1 if the member alarms show this SOP's fault upstream of the root's)
          + shared_cause_weight × (1 if, besides, the root alarm comes from several devices and a member on
                                   another device surely showed that fault before it: one fault upstream of
                                   them all)
          + vote_weight   × (share of member alarms, each read alone, that point to this SOP, when the root
                             alarm names nothing itself: no SOP's code or phrase, no device kind)
          + emergency_weight × (1 if a member surely points to this life-safety SOP and the root's own
                                SOP is none; see below)

The default weights are the ones every fold of leave-one-file-out chose over
the labelled sets (``opsloop eval narrate --cv-by-file``; see docs/evaluations/narration.md).

Members that only report a normal reading ("CHW supply 12.1 C normal") are
dropped by the query builder before any of this: they name no fault.

The upstream cause (``upstream_cause``): the root alarm and each distinct
member code are read alone, each to the SOP it points to with this same
weighing; then ``models/sop_relations.py`` walks from the root's SOP to the
member whose fault, as the SOP texts say, brings the root's alarm or is the
one the root's procedure hands over to ("Downstream UPS units go on battery",
"follow the utility power loss procedure"). A member whose words report any
reading as normal is context there, not a cause, but the state it reports
counts: a fault whose SOP brings the root's alarm "although a generator is
running" comes before an earlier cause when a genset reports itself running
(``Relations.brings_although``).

A shared cause weighs more: when many devices raise the root alarm and, before
any of them, another device of the cause's own kind (or naming its code)
raised the cause's alarm (a CDU's strainer alarm 30 s before GPU throttling on
three nodes), the cause is no mere reading of words.

Where no relation explains the root, a cause shared by several root devices and a
lead are looked for only among the members raised within ``lead_within_s`` before
the root (an hour): an alarm raised long before it is the circumstance the root
came in, not its cause (day tanks running low four hours into a grid outage call
for fuel, not for the utility's outage line). The relations' walk reads every member:
a fault that brings the root's alarm explains it however long ago it came.

Life safety first (``emergency``): a procedure whose steps follow the site's
emergency plan (fire, a battery off-gassing) is opened before any other. A
member read alone, surely, as one of them outranks a root whose own
procedure is not one ("UPS internal temperature high", then the UPS room's
fire zone in alarm).

The root device's kind is its type when the SOP corpus knows that word
(``ups``, ``gpu_node``), else a kind the type's or the device name's words
name (``host`` → server, ``rPDU`` → pdu, ``DH1-UPS-C`` → ups): sites name
their device types and devices their own way. The kind's words join the
query ``kind_repeat`` times, in place of a type the corpus does not know.

An embedding retriever with rank fusion was not added: it would need a
packaged embedding model, and BM25 with scope already meets the targets on
the labelled set (see ``opsloop eval narrate``).

The retriever returns the ranked SOP ids and, for the ``top_k`` best, every
section as a ``Document`` (meta: ``sop_id``, ``section``, ``title``): these
are the *retrieved sections*, the only ones a narration may cite.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from haystack import Document, component
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore

from opsloop.models.alarm_glossary import KINDS, every_language
from opsloop.models.alarm_states import states_a_fault
from opsloop.models.incident_query import LEAD_WITHIN_S, code_key, terms
from opsloop.models.sop_relations import AlarmReading, read_relations, upstream_cause, without_hand_overs
from opsloop.models.sops import Sop
from opsloop.models.value_readings import reports_only_a_value

ALONE_REMEMBERED = 4096  # alarms read alone kept (a few hundred bytes each); forgotten all at once when full
# Sections that describe *when* a SOP applies weigh more in its index text than the steps.
INDEX_WEIGHTS = {"Scope": 2, "Symptoms": 2, "Probable causes": 1, "Steps": 1}


def index_text(sop: Sop, weights: dict[str, int] | None = None) -> str:
    parts = [sop.title] * 3 + [" ".join(sop.equipment)] * 2 + [" ".join(sop.codes)] * 2
    for name, weight in (weights or INDEX_WEIGHTS).items():
        parts += [without_hand_overs(sop.sections.get(name, ""))] * weight
    return " ".join(terms(" ".join(parts)))


def section_documents(sop: Sop) -> list[Document]:
    return [Document(id=f"{sop.id}#{name}", content=body,
                     meta={"sop_id": sop.id, "section": name, "title": sop.title})
            for name, body in sop.sections.items()]


def _code_words(code: str) -> set[str]:
    return set(terms(code))


# Kinds of device sites name otherwise than the SOPs' equipment lists do.
DEVICE_KIND_SYNONYMS = {
    "HOST": "SERVER", "COMPUTE": "SERVER", "HGX": "GPU_NODE", "DGX": "GPU_NODE", "RPDU": "PDU",
    "CABINET": "RACK", "TRANSFER_SWITCH": "ATS", "GEN": "GENERATOR", "AHU": "CRAH",
    "TOR": "SWITCH", "CHW": "CHILLED_WATER", "TOWER": "COOLING_TOWER", "BATTERY_STORAGE": "ESS",
    # Engineering abbreviations in device names: chilled water pump, cooling tower, switchgear, fire alarm control
    # panel, power quality meter, temperature and humidity sensors, an InfiniBand leaf, a rack PDU's A or B feed.
    "CHWP": "PUMP", "CWP": "PUMP", "CT": "COOLING_TOWER", "SWGR": "SWITCHGEAR", "FACP": "FIRE_PANEL",
    "PQM": "METER", "TH": "SENSOR", "RH": "SENSOR", "IBL": "IB_SWITCH", "PDUA": "PDU", "PDUB": "PDU",
    # A low-voltage switchboard (main switchboard, main distribution board) is switchgear.
    "SWITCHBOARD": "SWITCHGEAR", "SWBD": "SWITCHGEAR", "MSB": "SWITCHGEAR", "MDB": "SWITCHGEAR",
    # A battery monitor (string and block readings) watches a UPS's battery strings.
    "BATTERY_MONITOR": "UPS_BATTERY", "BMON": "UPS_BATTERY",
}


# Device type words in other languages (``models/alarm_glossary.py``), every language at once.
FOREIGN_KINDS = every_language(KINDS)


def device_kinds(known: set[str], device_type: str, device: str = "") -> list[str]:
    """The SOP equipment kinds that a device type, or failing it the device's name, names."""
    for text in (device_type, device):
        key = code_key(text)
        if key in known:
            return [key]
        parts = key.split("_")
        found = []
        for size in (2, 1):  # "TRANSFER_SWITCH" before "SWITCH"
            for i in range(len(parts) - size + 1):
                word = "_".join(parts[i:i + size])
                kind = DEVICE_KIND_SYNONYMS.get(word) or FOREIGN_KINDS.get(word, word)
                if kind in known and kind not in found:
                    found.append(kind)
            if found:
                return found
    return []


# A procedure whose scope or symptoms speak of many devices at once is the one for a fault that fans out.
_MANY = re.compile(r"\b(many|several|multiple)\b", re.IGNORECASE)
# A procedure whose steps follow the site's emergency plan is a life-safety procedure.
_EMERGENCY_PLAN = re.compile(r"\bemergency plan\b", re.IGNORECASE)


@dataclass(frozen=True)
class Evidence:
    """What speaks for one SOP, before weighing: ``SopRetriever.weigh`` turns it into a score."""
    bm25: float  # BM25 score over the best one's
    code: bool  # the root code (or a code its words state) is one of the SOP's
    code_overlap: float  # else the best word overlap of the root code with one of the SOP's
    phrase: bool  # else the root's words state one of the SOP's codes
    device: bool  # the root device's kind is in the SOP's equipment
    members: float  # share of distinct member codes the SOP lists or whose words state one of its codes
    lead: bool  # the root names no SOP; a member before it states this SOP's codes, one the root's fault does not bring
    fan_out: bool  # one code on many devices at once, and the SOP speaks of many
    cause: bool = False  # the member alarms show this SOP's fault upstream of the root's (``upstream_cause``)
    vote: float = 0.0  # the root names nothing: share of member alarms read alone that point to this SOP
    emergency: bool = False  # a life-safety SOP a member surely points to, where the root's own SOP is none
    shared_cause: bool = False  # the cause, surely shown on another device before a root raised on several


@component
class SopRetriever:
    """Ranks SOPs for an incident query; returns the best ids and the sections of the ``top_k`` best."""

    def __init__(self, corpus: dict[str, Sop], top_k: int = 3, code_weight: float = 0.6,
                 device_weight: float = 0.2, member_weight: float = 0.15, phrase_weight: float = 0.3,
                 lead_weight: float = 0.3, fanout_weight: float = 0.5, fan_out_devices: int = 3,
                 kind_repeat: int = 3, index_weights: dict[str, int] | None = None, cause_weight: float = 1.0,
                 cause_steps: int = 2, cause_devices: int = 2, vote_weight: float = 0.25,
                 emergency_weight: float = 2.0, shared_cause_weight: float = 0.75,
                 lead_within_s: float = LEAD_WITHIN_S):
        self.corpus = corpus
        self.top_k = top_k
        self.code_weight = code_weight
        self.device_weight = device_weight
        self.member_weight = member_weight
        self.phrase_weight = phrase_weight
        self.lead_weight = lead_weight
        self.fanout_weight = fanout_weight
        self.fan_out_devices = fan_out_devices
        self.kind_repeat = kind_repeat
        self.cause_weight = cause_weight
        self.cause_steps = cause_steps
        self.cause_devices = cause_devices
        self.vote_weight = vote_weight
        self.emergency_weight = emergency_weight
        self.shared_cause_weight = shared_cause_weight
        self.lead_within_s = lead_within_s
        self.index_weights = dict(index_weights or INDEX_WEIGHTS)
        store = InMemoryDocumentStore(bm25_algorithm="BM25Plus")
        store.write_documents([Document(id=sop.id, content=index_text(sop, self.index_weights),
                                        meta={"sop_id": sop.id}) for sop in corpus.values()])
        self._bm25 = InMemoryBM25Retriever(document_store=store, top_k=len(corpus))
        self._codes = {sid: {code_key(c) for c in sop.codes} for sid, sop in corpus.items()}
        self._code_words = {sid: [_code_words(c) for c in sop.codes] for sid, sop in corpus.items()}
        self._equipment = {sid: {code_key(e) for e in sop.equipment} for sid, sop in corpus.items()}
        self._known_kinds = set().union(*self._equipment.values())
        families: dict[str, set[str]] = {}
        for sid, kinds in self._equipment.items():
            for kind in kinds:
                families.setdefault(kind, set()).add(_family(sid))
        self._shared_kinds = {kind for kind, of in families.items() if len(of) > 1}
        # A one-word code says something only when one SOP alone lists that word ("OVERCURRENT", not "FAULT").
        code_word_sops: dict[str, set[str]] = {}
        for sid, code_words in self._code_words.items():
            for word in set().union(*code_words):
                code_word_sops.setdefault(word, set()).add(sid)
        self._phrases = {sid: [w for w in code_words if len(w) > 1 or len(code_word_sops[next(iter(w))]) == 1]
                         for sid, code_words in self._code_words.items()}
        self._speaks_of_many = {sid: bool(_MANY.search(" ".join(sop.sections.get(name, "")
                                                               for name in ("Scope", "Symptoms"))))
                                for sid, sop in corpus.items()}
        self._sections = {sid: section_documents(sop) for sid, sop in corpus.items()}
        self.relations = read_relations(corpus)
        self._life_safety = {sid for sid, sop in corpus.items() if _EMERGENCY_PLAN.search(" ".join(sop.steps))}
        # An alarm read alone -> its SOP, whether it names one of its codes, whether its kind is in the SOP's
        # equipment: an incident's versions repeat alarms.
        self._alone: dict[tuple, tuple[str, bool, bool]] = {}

    @property
    def known_kinds(self) -> frozenset[str]:
        """Every equipment kind the SOPs name (as ``code_key`` spells them: ``UPS``, ``GPU_NODE``)."""
        return frozenset(self._known_kinds)

    def _states(self, sid: str, alarm: tuple[set[str], set[str]]) -> bool:
        """Whether an alarm (its words' terms, its words' code keys) lists or states one of the SOP's codes."""
        said, keys = alarm
        return bool(keys & self._codes[sid]) or any(w <= said for w in self._phrases[sid])

    def evidence(self, query: str, root_code: str = "", device_type: str = "",
                 member_codes: list[str] | None = None, evidence_codes: list[str] | None = None,
                 root_device: str = "", root_words: str = "", member_words: list[str] | None = None,
                 lead_words: list[str] | None = None, fan_out: int = 0, root_alarm: dict | None = None,
                 member_alarms: list[dict] | None = None, member_states: list[dict] | None = None
                 ) -> dict[str, Evidence]:
        """The unweighed evidence for every SOP."""
        kinds = device_kinds(self._known_kinds, device_type, root_device)
        query = " ".join([query, *[" ".join(terms(k.replace("_", " "))) for k in kinds] * self.kind_repeat])
        found = self._bm25.run(query=query.strip() or "incident")["documents"]
        bm25 = {d.meta["sop_id"]: d.score or 0.0 for d in found}
        best = max(bm25.values(), default=0.0) or 1.0
        root_keys = {code_key(c) for c in [root_code, *(evidence_codes or [])] if c}
        root_words_of_code = _code_words(root_code)
        said = set(terms(" ".join([root_words, root_code])))
        member_keys = [code_key(c) for c in member_codes or []]
        # Each distinct member code once: its words when the builder gave them, else the code alone.
        members = [_alarm(m) for m in (member_words if member_words is not None else member_codes or [])]
        leads = [_alarm(m) for m in lead_words or []]
        # A root alarm whose own code names a procedure is its own evidence; one that only states symptoms
        # ("high supply air") may be the consequence of what the members seen before it report.
        root_named = any(root_keys & codes for codes in self._codes.values())
        # The root and each member read alone once per incident version; the cause and life safety both use them.
        member_readings = self.member_readings(member_alarms or [])
        root_sop = self.read_alone(root_alarm) if root_alarm else ""
        root_devices = root_alarm.get("devices", 1) if root_alarm else 1
        cause = self._upstream(root_sop, member_readings, root_devices, self.states_shown(member_states or [])) \
            if root_alarm else ""
        shared = bool(cause) and root_devices >= self.cause_devices and any(
            r.sop_id == cause and r.after_s < 0 and r.sure and not r.same_device for r in member_readings)
        # A root alarm that names nothing (a probe failed, a metric absent) is judged by what its members point to.
        names_nothing = not kinds and not root_named and not any(
            w <= said for phrases in self._phrases.values() for w in phrases)
        readings = [r for r in member_readings if r.after_s <= 0] if names_nothing else []
        votes = Counter(r.sop_id for r in readings)
        emergency = self._life_safety_among(root_sop, member_readings) if root_alarm else set()
        brought = self.relations.brings.get(root_sop, frozenset())  # the root's own fault explains their lead, fan-out
        # A transformer's trip that puts many UPS units on battery: their fan-out is the root's own fault's.
        fanned_by_root = bool(root_alarm) and self._fan_out_brought(root_alarm, root_sop, brought, member_alarms or [])
        out = {}
        for sid in self.corpus:
            overlap = max((len(root_words_of_code & w) / len(root_words_of_code | w)
                           for w in self._code_words[sid]), default=0.0) if root_words_of_code else 0.0
            listed = sum(self._states(sid, m) for m in members) if member_words is not None else \
                len(set(member_keys) & self._codes[sid])
            out[sid] = Evidence(
                bm25=bm25.get(sid, 0.0) / best, code=bool(root_keys & self._codes[sid]), code_overlap=overlap,
                phrase=any(w <= said for w in self._phrases[sid]), device=bool(set(kinds) & self._equipment[sid]),
                members=listed / len(members) if members else 0.0,
                lead=not root_named and sid not in brought and any(self._states(sid, lead) for lead in leads),
                fan_out=fan_out >= self.fan_out_devices and self._speaks_of_many[sid] and sid not in brought
                and (sid == root_sop or not fanned_by_root),
                cause=sid == cause,
                vote=votes[sid] / len(readings) if votes else 0.0, emergency=sid in emergency,
                shared_cause=shared and sid == cause)
        return out

    def _fan_out_brought(self, root_alarm: dict, root_sop: str, brought: frozenset[str],
                         member_alarms: list[dict]) -> bool:
        """Whether the root surely reads as its SOP (it names one of its codes, or its device is of that SOP's kind)
        and an alarm raised on ``fan_out_devices`` or more devices reads as one that SOP's fault brings."""
        _, named, of_its_kind = self.reading_alone(root_alarm)
        return (named or of_its_kind) and any(
            a.get("devices", 1) >= self.fan_out_devices and not a["says_normal"]
            and self.read_alone(a) in brought - {root_sop} for a in member_alarms)

    def read_alone(self, alarm: dict) -> str:
        """The SOP one alarm points to on its own (an ``IncidentQueryBuilder`` alarm)."""
        return self.reading_alone(alarm)[0]

    def reading_alone(self, alarm: dict) -> tuple[str, bool, bool]:
        """The SOP one alarm points to on its own, whether its code or words state one of that SOP's codes, and
        whether its device is of a kind that SOP's equipment lists; remembered for the alarms seen last (each new
        version of an incident brings the same members again)."""
        key = (alarm["query"], alarm["code"], alarm["device_type"], tuple(alarm["evidence_codes"]), alarm["device"],
               alarm["words"])
        if key not in self._alone:
            if len(self._alone) >= ALONE_REMEMBERED:
                self._alone.clear()
            evidence = self.evidence(alarm["query"], root_code=alarm["code"], device_type=alarm["device_type"],
                                     evidence_codes=alarm["evidence_codes"], root_device=alarm["device"],
                                     root_words=alarm["words"])
            sid = ranking({sid: self.weigh(e) for sid, e in evidence.items()})[0][0]
            self._alone[key] = sid, evidence[sid].code or evidence[sid].phrase, evidence[sid].device
        return self._alone[key]

    def member_readings(self, member_alarms: list[dict]) -> list[AlarmReading]:
        """Each member alarm read alone. Members whose words report any reading as normal, or that only report a
        value after the root alarm came, are context, not faults."""
        readings = []
        for a in member_alarms:
            if not a["says_normal"] and not (a["after_s"] > 0 and reports_only_a_value({"code": a["code"],
                                                                                         "text": a["words"]})):
                sid, named, of_its_kind = self.reading_alone(a)
                readings.append(AlarmReading(sid, a["after_s"], a["same_device"], named, named or of_its_kind,
                                             named or of_its_kind and not self._by_shared_kind(a, sid),
                                             states_a_fault(a["words"])))
        return readings

    def _by_shared_kind(self, alarm: dict, sid: str) -> bool:
        """Whether the alarm's device is of the SOP's kind only through kinds procedures of several families list
        ("bms": a building's management system, or a battery's)."""
        kinds = set(device_kinds(self._known_kinds, alarm["device_type"], alarm["device"])) & self._equipment[sid]
        return kinds <= self._shared_kinds

    def life_safety_shown(self, root_alarm: dict, member_alarms: list[dict]) -> set[str]:
        """The life-safety SOPs the members surely point to, unless the root's own SOP is one."""
        return self._life_safety_among(self.read_alone(root_alarm), self.member_readings(member_alarms))

    def _life_safety_among(self, root_sop: str, readings: list[AlarmReading]) -> set[str]:
        return set() if root_sop in self._life_safety else {r.sop_id for r in readings if r.surely_kind} & \
            self._life_safety

    def upstream_cause(self, root_alarm: dict, member_alarms: list[dict],
                       member_states: list[dict] | None = None) -> str:
        """The SOP of the fault upstream of the root, read from each alarm alone and the SOPs' relations."""
        return self._upstream(self.read_alone(root_alarm), self.member_readings(member_alarms),
                              root_alarm.get("devices", 1), self.states_shown(member_states or []))

    def _upstream(self, root_sop: str, readings: list[AlarmReading], root_devices: int,
                  shown: tuple[frozenset[str], ...] = ()) -> str:
        return upstream_cause(self.relations, root_sop, readings, root_devices, self.cause_steps, self.cause_devices,
                              shown, within_s=self.lead_within_s)

    def states_shown(self, member_states: list[dict]) -> tuple[frozenset[str], ...]:
        """What each member says of its device, normal states included, as terms with its device's kinds
        ("Genset running 400 V": generator, run): the states ``Relations.brings_although`` asks for."""
        return tuple(frozenset(terms(" ".join([m["said"],
                                              *device_kinds(self._known_kinds, m["device_type"], m["device"])])))
                     for m in member_states)

    def weigh(self, evidence: Evidence) -> float:
        """One SOP's fused score (see the module's docstring)."""
        score = evidence.bm25
        if evidence.code:
            score += self.code_weight
        else:
            score += max(self.code_weight * evidence.code_overlap, self.phrase_weight * evidence.phrase)
        return (score + self.device_weight * evidence.device + self.member_weight * evidence.members
                + self.lead_weight * evidence.lead + self.fanout_weight * evidence.fan_out
                + self.cause_weight * evidence.cause + self.vote_weight * evidence.vote
                + self.emergency_weight * evidence.emergency + self.shared_cause_weight * evidence.shared_cause)

    def scores(self, query: str, **incident) -> list[tuple[str, float]]:
        """Every SOP with its fused score, best first (ties broken by id, so the order is stable)."""
        return ranking({sid: self.weigh(e) for sid, e in self.evidence(query, **incident).items()})

    @component.output_types(sop_ids=list[str], documents=list[Document])
    def run(self, query: str, root_code: str = "", device_type: str = "",
            member_codes: list[str] | None = None, evidence_codes: list[str] | None = None,
            root_device: str = "", root_words: str = "", member_words: list[str] | None = None,
            lead_words: list[str] | None = None, fan_out: int = 0, root_alarm: dict | None = None,
            member_alarms: list[dict] | None = None, member_states: list[dict] | None = None) -> dict:
        ranked = [sid for sid, _ in self.scores(
            query, root_code=root_code, device_type=device_type, member_codes=member_codes,
            evidence_codes=evidence_codes, root_device=root_device, root_words=root_words,
            member_words=member_words, lead_words=lead_words, fan_out=fan_out, root_alarm=root_alarm,
            member_alarms=member_alarms, member_states=member_states)]
        top = ranked[: self.top_k]
        return {"sop_ids": ranked, "documents": [doc for sid in top for doc in self._sections[sid]]}


def _family(sid: str) -> str:
    """A SOP's family, the middle of its id ("SOP-PWR-002": PWR); an id without one is its own family."""
    parts = sid.split("-")
    return parts[1] if len(parts) >= 3 else sid


def _alarm(text: str) -> tuple[set[str], set[str]]:
    return set(terms(text)), {code_key(word) for word in text.split()}


def ranking(scores: dict[str, float]) -> list[tuple[str, float]]:
    """SOPs best first; ties broken by id, so the order is stable."""
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))
