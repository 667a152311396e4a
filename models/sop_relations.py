"""How the procedures relate, as their own texts say: which fault brings which alarms, and when one hands over.

Two relations are read from the SOP corpus, not from a table:

- **brings** (A brings B): a sentence of A's scope or symptoms states B's title
  or one of B's codes as what A's fault brings ("Downstream UPS units go on
  battery" in *Utility power loss* states *UPS on battery*). A clause after
  "caused by" or "may point to", or a sentence that opens with "follows", names
  a cause instead, so it is read the other way round ("Often follows ... the
  loss of the partner feed": a feed loss brings the overcurrent); one on the
  circumstances ("after a utility loss", "although a generator is running")
  states neither. The scope's first sentence defines A's own fault, so it
  states nothing A brings ("An Ethernet interface on a switch or server is
  down" is no switch down). A procedure is stated by its title, one of its
  codes, or, where an item of a listed clause is one word ("GPUs heat up fast
  and throttle", "may point to a leak"), by a word of its title that its codes
  use and no other title has.
- **brings, although** (A brings B although S): A's sentence that states B
  goes on with "although" and a state ("Downstream UPS units on battery
  although a generator is running"): where a member reports S as its normal
  state, A's fault, not an earlier one, is what keeps B's alarm raised.
- **hands over** (B hands over to A): a step of B says to follow A's procedure
  first ("If the site has lost utility power, follow the utility power loss
  procedure", "treat it as a lost feed first"); a step that says to follow the
  procedure of whatever alarm or fault is found ("follow their procedure", "the
  procedure for that fault") hands over to any procedure (``ANY``). A hand-over
  to a procedure that B itself brings is an escalation (a CRAH failure's "follow
  the high inlet temperature procedure"), not a cause, and is dropped.

``walk_upstream`` uses them to go from what the root alarm points to towards
the fault that explains it, one member alarm at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from opsloop.models.incident_query import terms
from opsloop.models.sops import Sop

ANY = "*"  # a hand-over to whatever procedure the alarms found point to
GAP = 2  # words a stated phrase may have between its own words ("UPS units go on battery")

_SENTENCE = re.compile(r"[.;\n]|:\s")
_OPENS_ON_CAUSE = re.compile(r"^\W*(?:often\s+)?(?:follows|comes after|caused by)\b", re.IGNORECASE)
_CAUSE_CLAUSE = re.compile(r"\b(?:because of|caused by|may point to|points to)\b", re.IGNORECASE)
# A clause on the circumstances ("after a utility loss", "although a generator is running") states neither.
_CIRCUMSTANCE = re.compile(r"\b(?:after|although|while|when|if)\b.*", re.IGNORECASE)
_ALTHOUGH = re.compile(r"\balthough\s+(.+)", re.IGNORECASE)
_LIST_ITEM = re.compile(r",|\bor\b|\band\b", re.IGNORECASE)
_NAMED_HAND_OVER = re.compile(r"\bfollow\s+the\s+(.+?)\s+procedure\b|\btreat\s+it\s+as\s+(?:an?\s+)?(.+?)\s+first\b",
                              re.IGNORECASE)
_HAND_OVER_CLAUSE = re.compile(r"[^.;:\n]*?(?:" + _NAMED_HAND_OVER.pattern + ")", re.IGNORECASE)
_ANY_HAND_OVER = re.compile(r"\bfollow\s+(?:its|their)\s+procedure\b|\bprocedure\s+(?:for|of)\s+(?:that|the)\s+fault\b",
                            re.IGNORECASE)


def without_hand_overs(text: str) -> str:
    """``text`` without its hand-overs, each from the start of its clause: they speak of another procedure's
    fault (its title, the condition that sends the operator there), not of this one.

    >>> without_hand_overs("Check the mounts; if they hang, follow the file system unreachable procedure first.")
    'Check the mounts; first.'
    """
    return _HAND_OVER_CLAUSE.sub("", text)


def states(words: list[str], phrase: list[str], gap: int = GAP) -> bool:
    """Whether ``words`` hold every word of ``phrase`` within a window of its length plus ``gap``.

    >>> states(terms("Downstream UPS units go on battery"), terms("UPS on battery"))
    True
    >>> states(terms("UPS input breaker; generator on battery"), terms("UPS on battery"))
    False
    """
    need, width = set(phrase), len(set(phrase)) + gap
    return any(words[i] in need and need <= set(words[i:i + width]) for i in range(len(words)))


def _titles(sop: Sop) -> list[str]:
    """A SOP's title and each alternative of it ("PDU or branch breaker trip": "PDU", "branch breaker trip")."""
    return [sop.title, *re.split(r"\s+or\s+", sop.title)]


def _phrases(sop: Sop) -> list[list[str]]:
    """A SOP's titles and codes as terms, those of two words or more (one word says too little)."""
    return [p for p in (terms(t) for t in [*_titles(sop), *sop.codes]) if len(set(p)) >= 2]


def _one_word_names(corpus: dict[str, Sop]) -> dict[str, set[str]]:
    """One-word names of each procedure: a word of its title that its codes use too and no other title has
    ("leak" for *Water leak detected*, "throttle" for *GPU thermal throttling*)."""
    titles = {sid: set(terms(sop.title)) for sid, sop in corpus.items()}
    out = {}
    for sid, sop in corpus.items():
        others = set().union(*(t for other, t in titles.items() if other != sid))
        coded = set(terms(" ".join(sop.codes)))
        out[sid] = (titles[sid] & coded) - others
    return out


def _one_word_items(clause: str) -> set[str]:
    """The items of a listed clause that are one word ("a CRAH, chiller or containment problem": "crah",
    "chiller"): a procedure named alone, not a word of a longer item ("a burst of GPU jobs starting")."""
    items = (terms(item) for item in _LIST_ITEM.split(clause))
    return {item[0] for item in items if len(item) == 1}


def _names(clause: str, phrases: list[list[str]], one_word: set[str]) -> bool:
    """Whether a clause states a procedure: one of its phrases, or one of its one-word names standing alone."""
    said = terms(clause)
    return any(states(said, p) for p in phrases) or bool(one_word & _one_word_items(clause))


def _effect_and_cause(sentence: str) -> tuple[str, str]:
    """What a sentence says the fault brings, and what it says the fault follows."""
    if _OPENS_ON_CAUSE.search(sentence):
        return "", sentence
    effect, *cause = _CAUSE_CLAUSE.split(sentence, maxsplit=1)
    return _CIRCUMSTANCE.sub("", effect), _CIRCUMSTANCE.sub("", " ".join(cause))


def _beyond_definition(sop: Sop) -> list[str]:
    """The sentences of a SOP's scope and symptoms after the scope's first, which defines the fault itself
    ("An Ethernet interface on a switch or server is down" is no switch down)."""
    _, _, scope = sop.sections.get("Scope", "").partition(". ")
    return [s for text in (scope, sop.sections.get("Symptoms", "")) for s in _SENTENCE.split(text) if s.strip()]


@dataclass(frozen=True)
class Relations:
    brings: dict[str, frozenset[str]]  # SOP id → the SOPs whose alarms its fault brings
    hands_over: dict[str, frozenset[str]]  # SOP id → the SOPs (or ANY) its steps send the operator to first
    # (A, B) → the states under which A's fault brings B where another fault's would not ("Downstream UPS units on
    # battery although a generator is running": an ATS that failed), each as its terms
    brings_although: dict[tuple[str, str], tuple[frozenset[str], ...]] = field(default_factory=dict)

    def upstream(self, of: str, candidate: str, seen_before: bool, came_first: bool, sure: bool) -> bool:
        """Whether ``candidate``'s fault explains ``of``'s alarm: it brings it, ``of`` hands over to it, or
        ``of`` hands over to whatever fault is found and the candidate's alarm came first (``seen_before``: before
        the root), points ``sure`` enough to it, and is none that ``of``'s own fault brings (a rack that lost a
        feed brings its partner PDU's overcurrent: an effect, not the fault to follow). Where each fault brings the
        other (a chiller trip and a pump failure), only time tells cause from effect: the candidate counts when it
        ``came_first``, before the first alarm of ``of``'s fault."""
        brings = of in self.brings.get(candidate, ())
        if brings and candidate in self.brings.get(of, ()):
            brings = came_first
        any_found = (seen_before and sure and ANY in self.hands_over.get(of, ())
                     and candidate not in self.brings.get(of, ()))
        return brings or candidate in self.hands_over.get(of, ()) or any_found


def read_relations(corpus: dict[str, Sop]) -> Relations:
    phrases = {sid: _phrases(sop) for sid, sop in corpus.items()}
    one_word = _one_word_names(corpus)
    brings: dict[str, set[str]] = {sid: set() for sid in corpus}
    although_states: dict[tuple[str, str], list[frozenset[str]]] = {}
    for a, sop in corpus.items():
        for sentence in _beyond_definition(sop):
            effect, cause = _effect_and_cause(sentence)
            although = _ALTHOUGH.search(sentence)
            for b in set(corpus) - {a}:
                if _names(effect, phrases[b], one_word[b]):
                    brings[a].add(b)
                    if although:
                        although_states.setdefault((a, b), []).append(frozenset(terms(although.group(1))))
                if _names(cause, phrases[b], one_word[b]):
                    brings[b].add(a)
    titles = {sid: [set(terms(t)) for t in _titles(sop)] for sid, sop in corpus.items()}
    hands_over: dict[str, set[str]] = {sid: set() for sid in corpus}
    for b, sop in corpus.items():
        for step in sop.steps:
            for match in _NAMED_HAND_OVER.finditer(step):
                named = set(terms(match.group(1) or match.group(2)))
                hands_over[b] |= {a for a in corpus if a != b and any(named <= t for t in titles[a])}
            if _ANY_HAND_OVER.search(step):
                hands_over[b].add(ANY)
        hands_over[b] -= brings[b]  # an escalation to what this fault brings, not a cause
    return Relations({k: frozenset(v) for k, v in brings.items()}, {k: frozenset(v) for k, v in hands_over.items()},
                     {k: tuple(v) for k, v in although_states.items()})


@dataclass(frozen=True)
class AlarmReading:
    """One member alarm as read on its own: the SOP it points to and when it came, relative to the root."""
    sop_id: str
    after_s: float
    same_device: bool = False  # on the root alarm's own device
    named: bool = False  # its code or words state one of that SOP's codes: surer than a reading of its words alone
    sure: bool = False  # named, or its device is of a kind that SOP's equipment lists: more than a reading of words
    surely_kind: bool = False  # named, or of a kind only that SOP's family lists (life safety asks this much)
    raised: bool = False  # its words state a fault ("transfer failed", "inhibited"), not a state alone ("on emergency")

    def order(self) -> tuple:
        """Earliest first; at the same moment, an alarm that names its procedure before one read from its words."""
        return self.after_s, not self.named, self.sop_id


def walk_upstream(relations: Relations, root_sop: str, readings: list[AlarmReading], steps: int = 2,
                  shown: tuple[frozenset[str], ...] = ()) -> str:
    """From the SOP the root alarm points to, up to the fault that explains it, ``steps`` links at most.

    Each step takes, among the member readings whose SOP the relations put upstream of where the walk
    stands, the earliest (``AlarmReading.order``); the walk ends where no member explains it. Returns where
    it ends (``root_sop`` when nothing explains the root). For a hand-over to whatever fault is found, a member
    counts when it came before the root, or at the same moment if it names its procedure (a job failure burst
    raised in the same second as the node's Xid): an alarm read from its words alone at that moment may as
    well be a consequence. It counts too only when it names its procedure, or comes from another device of that
    procedure's kind: a log line on the root's own node read by the node's kind alone ("TaskProlog failed" as an
    Xid, because a GPU node logged it) is no fault found.

    ``shown`` holds what each member reports as its normal state, as terms with its device's kinds. A step takes
    first, whatever their order, the readings whose words state a fault and whose SOP brings where the walk stands
    although a state one member shows ("Transfer to source 2 failed" after the utility loss, with a genset
    reporting "running, ready to load": the switch keeps the UPS units on battery, not the grid).
    """
    at = root_sop
    for _ in range(steps):
        since = min([r.after_s for r in readings if r.sop_id == at] + ([0.0] if at == root_sop else []))
        upstream = [r for r in readings if r.sop_id not in (at, root_sop)
                    and relations.upstream(at, r.sop_id, r.after_s < 0 or r.after_s == 0 and r.named,
                                           r.after_s < since or r.after_s == since and r.named,
                                           r.named or r.sure and not r.same_device)]
        if not upstream:
            break
        despite_state = [r for r in upstream if r.raised and any(
            state <= said for state in relations.brings_although.get((r.sop_id, at), ()) for said in shown)]
        at = min(despite_state or upstream, key=AlarmReading.order).sop_id
    return at


def upstream_cause(relations: Relations, root_sop: str, readings: list[AlarmReading], root_devices: int = 1,
                   steps: int = 2, several: int = 2, shown: tuple[frozenset[str], ...] = (),
                   within_s: float = float("inf")) -> str:
    """The SOP of the fault upstream of the root alarm, or "" when the member alarms show none.

    First ``walk_upstream``. Failing it, when the root alarm comes from ``several`` devices or more, the
    earliest member alarm seen before it on another device (or at the same moment, when it is ``sure``: it names
    its procedure or comes from a device of that procedure's kind), unless the root's own fault brings that alarm:
    one fault upstream of all of them (a storage target down before kill-task failures on many nodes). Where
    that earliest alarm points to the root's own procedure, it confirms the root: no other cause. Only alarms
    raised ``within_s`` before the root count there: one raised long before is the circumstance the root came in
    (two gensets' day tanks low hours into a grid outage), not a fault upstream of them.
    """
    cause = walk_upstream(relations, root_sop, readings, steps, shown)
    if cause != root_sop:
        return cause
    if root_devices < several:
        return ""
    leads = [r for r in readings if (r.after_s < 0 or r.after_s == 0 and r.sure) and not r.same_device
             and r.after_s >= -within_s and r.sop_id not in relations.brings.get(root_sop, ())]
    cause = min(leads, key=AlarmReading.order).sop_id if leads else ""
    return "" if cause == root_sop else cause
