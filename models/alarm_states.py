"""What an alarm's words report: a reading or a state as normal, routine work, or a fault stated outright.

Pure string readings, no vocabulary: the query builder (``models/incident_query.py``) uses them to keep a
member's normal readings and routine work out of the symptoms it searches with, and the retriever
(``models/sop_retrieval.py``) to tell a fault stated in words from a state. A clause is a part of an alarm's
text between commas, semicolons or dashes.

>>> symptoms("Genset running 400 V, breaker open"), normal_states("Genset running 400 V, breaker open")
('breaker open', 'Genset running 400 V')
"""

from __future__ import annotations

import re

# A clause that ends on one of these words reports a reading as fine ("CHW supply 12.1 C normal",
# "other feed OK", "returned to normal", "Inlet 22.4 C (normal)", "health check PASS"), optionally followed by a
# value ("nominal 11.0 kV", "fans OK 11200-11600 RPM"): not a symptom. So does one that says the reading is within its
# limits or in range or at its setpoint, or that there is no (active) alarm, fault, smoke or fire. A state reported
# as "up" (a link or line protocol up) is normal too, unless the clause raises a fault ("LTSSM Fault Up", "Fail to
# run"), and so is a unit reported "running", "run" or "online" (a status poll: "Running 58 %", "Run, fans 64 %",
# "Online, load 63 %"), or a unit or source reported "available" ("generator available, waiting for load"). Beside
# such a unit state, a fault raised ("transfer inhibited", "S1 lost") still stands (``says_no_fault``).
NORMAL_WORDS = frozenset(
    "normal ok okay healthy nominal cleared restored recovered resolved responsive available up online running run "
    "pass passed".split())
_RAISED = re.compile(r"\b(?:fault|alarm|error|fail\w*|inhibit\w*|lost)\b")
_IN_BAND = re.compile(r"\b(?:(?:within|in) (?:limits|tolerance|range)|at setpoint)\W*$|"
                      r"^\W*no (?:\w+ )?(?:alarms?|faults?|errors?|smoke|fire|leaks?)\W*$")
_NEGATED_LAST = re.compile(r"\b(?:not|no longer)\s+\S+$")
# A value given as a share of its nominal ("Sag V1 71.8 % of nominal", "Va 0.4 % of 277 V nominal") names the
# reference it is measured against, not a normal state.
_OF_NOMINAL = re.compile(r"(?:%|\bof(?: [\d.]+ ?[a-z]{0,2})?) nominal$")
# A breaker reported closed is in service: its normal state ("Branch circuit 1A-05 closed", "CB09 closed").
_BREAKER_CLOSED = re.compile(r"\b(?:breakers?|branch|circuit|cb\d*|mccb|acb)\b(?:\s+\S+){0,3}\s+closed$")
# A generator ready to take load ("Ready To Load, 480 V 60.0 Hz", "running at rated speed") is in its healthy
# state, and a transfer switch in its Normal position names the source it stands on ("position NORMAL"): unit
# states, as "running" is.
_READY = re.compile(r"(?<!not )\b(?:ready(?: to (?:accept )?load)?|"
                    r"at rated (?:speed|voltage|frequency|voltage/frequency))$")
_ON_SOURCE = re.compile(r"\bposition\W+normal$")
_CLAUSES = re.compile(r"[;,]|\s[-\u2013\u2014]\s")
_TRAILING_VALUES = re.compile(r"(\s+[\d.]+(?:[-/][\d.]+)*\s*[a-z%]{0,3})+[.!]?\s*$")


def reports_normal(clause: str) -> bool:
    """Whether a clause reports a reading or a state as normal rather than as a fault.

    >>> [reports_normal(c) for c in ("Inlet 22.4 C (normal)", "no alarm", "Normal source not acceptable")]
    [True, True, False]
    >>> [reports_normal(c) for c in ("Branch circuit 1A-05 closed", "breaker status closed", "CHW valve closed")]
    [True, True, False]
    >>> [reports_normal(c) for c in ("Sag V1 71.8 % of nominal", "Vc 0.3 % of 277 V nominal", "U_L3 nominal")]
    [False, False, True]
    """
    said = _clause_said(clause)
    last = _last_word(said)
    if last in ("up", "run", "running") and _RAISED.search(said):  # "Fail to run"
        return False
    if _NEGATED_LAST.search(said) or _OF_NOMINAL.search(said):  # "link not up"; "Vb 71 % of nominal"
        return False
    return bool(last) and (last in NORMAL_WORDS or bool(_IN_BAND.search(said)) or bool(_BREAKER_CLOSED.search(said))
                            or bool(_READY.search(said)))


def _clause_said(clause: str) -> str:
    """A clause in lower case, brackets dropped, trailing values cut ("Inlet 22.4 C (normal)": "inlet 22.4 c
    normal")."""
    return _TRAILING_VALUES.sub("", " ".join(clause.lower().replace("(", " ").replace(")", " ").split()))


def _last_word(said: str) -> str:
    words_said = said.split()
    return words_said[-1].strip(".!") if words_said else ""


def _normal_clauses(text: str) -> list[str]:
    return [c for c in _CLAUSES.split(text) if c.strip() and reports_normal(c)]


def symptoms(text: str) -> str:
    """``text`` without the clauses that report a normal reading."""
    return ", ".join(c.strip() for c in _CLAUSES.split(text) if c.strip() and not reports_normal(c))


def normal_states(text: str) -> str:
    """The clauses of ``text`` that report a reading or a state as normal ("Genset running 400 V, breaker open":
    "Genset running 400 V")."""
    return ", ".join(c.strip() for c in _normal_clauses(text))


def reports_any_normal(text: str) -> bool:
    """Whether any clause of ``text`` reports a reading or a state as normal."""
    return bool(_normal_clauses(text))


# Work the plant, the scheduler or the staff do on purpose: a job allocated or started, a standby unit started, a
# start requested, a breaker opened by hand with no protection flag. Context for what follows (a load step, a
# failover, a UPS on battery), not a fault.
_UNIT_STATES = frozenset("running run online up available".split())
_ROUTINE = re.compile(r"\b(?:allocated?|started|starting|start (?:request(?:ed)?|command|cmd)|scheduled|resumed|"
                      r"(?:manual(?:ly)?|local|hand) operat\w*|shunt/manual|"
                      r"no (?:trip|protection)(?: \w+)? (?:flag|indication|cause|operat\w*)|"
                      r"(?:trip|protection) (?:flag|indication)s?:? none)\b")


# A unit riding through a grid disturbance ("Low voltage ride-through active 0.09 s, no trip") is doing its job,
# unless it says it tripped.
_RODE_THROUGH = re.compile(r"\b(?:ride[- ]?through (?:active|in progress|ok|successful|completed|entered|exited|ended)|"
                           r"rode through)\b")
_TRIPPED = re.compile(r"(?<!no )\btrip(?:ped|s)?\b")


# A clause that reads normal beside a fault stated in another is no recovery ("L2 missing; U_L1 and U_L3 nominal"),
# unless it says the reading came back ("mains failure, voltages now normal").
_RECOVERY = re.compile(r"\b(?:now|again|back|restored|recovered|cleared|resolved|returned)\b")
_FAULT_STATED = re.compile(r"\b(?:fault\w*|alarm|trip\w*|lost|loss|down|error|critical|missing|absent|time[ds]? ?out|"
                           r"lockout|locked out|inhibit\w*|blocked|stopped|shutdown|unreachable|unavailable|fail\w*|"
                           r"bad|abnormal|exceeded|not \w+ed)\b")


def states_a_fault(text: str) -> bool:
    """Whether words state a fault ("transfer failed", "motor operator timeout"), not only a state.

    >>> [states_a_fault(t) for t in ("Transfer to S2 failed", "Transferred to Emergency")]
    [True, False]
    """
    return bool(_FAULT_STATED.search(text.lower()))


# A GPU's power draw read in watts ("GPU 0-7 power draw 694-700 W (limit 700 W)"): the load a job puts on, up to the
# GPU's own limit, which the power procedures (a PDU over its threshold) are about, not a GPU fault.
_GPU_POWER = re.compile(r"\bgpus?\b[\s\d=,-]*\bpower\b(?: draw| usage)?[\s\d.,x×=-]*w\b")


def _is_unit_state(said: str) -> bool:
    return _last_word(said) in _UNIT_STATES or bool(_READY.search(said) or _ON_SOURCE.search(said))


def says_no_fault(text: str) -> bool:
    """Whether an alarm's words report a normal reading or routine work: its own reading is context, not a cause.
    A unit reported running beside a fault raised ("Pump P1 fault, P2 running") is the standby taking over, so the
    fault stands; a reading reported normal again ("mains failure, voltages now normal") is a recovery; one reported
    normal beside a fault stated in another clause ("L2 missing; U_L1 and U_L3 nominal") is not.

    >>> [says_no_fault(t) for t in ("sched: Allocate JobId=7 NodeList=n[1-4]", "Pump P1 fault, P2 running")]
    [True, False]
    >>> [says_no_fault(t) for t in ("GPU 0-7 power draw 694-700 W (limit 700 W)", "GPU 3 power brake asserted")]
    [True, False]
    >>> [says_no_fault(t) for t in ("GEN-1: Ready To Load, 480 V 60.0 Hz", "Transfer inhibit active; position NORMAL")]
    [True, False]
    >>> says_no_fault("Engine running at rated speed, generator breaker open, load 0 kW")
    True
    """
    lowered = text.lower()
    raised = bool(_RAISED.search(lowered))
    if (_ROUTINE.search(lowered) or _GPU_POWER.search(lowered)) and not raised:
        return True
    if _RODE_THROUGH.search(lowered) and not raised and not _TRIPPED.search(lowered):
        return True
    clauses = [c for c in _CLAUSES.split(lowered) if c.strip()]
    normal = [c for c in clauses if reports_normal(c)]
    if not normal or raised and all(_is_unit_state(_clause_said(c)) for c in normal):
        return False
    others = [c for c in clauses if c not in normal]
    return any(_RECOVERY.search(c) for c in normal) or not any(_FAULT_STATED.search(c) for c in others)
