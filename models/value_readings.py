"""A member alarm that only reports a value: a poll result beside the alarms, not a fault.

Monitoring systems send the values they poll together with the alarms: ``U_LL_AVG`` "15.07 kV 50.00 Hz",
``INLET_T`` "Inlet 23.0 C", ``upsEstimatedMinutesRemaining`` "21". Such a member states no condition: neither its
code nor its text has a word for a fault, a limit or a state change, no comparison ("> 16 A"), and its text is a
value (a number) with a short label. Seen *after* the root alarm it tells the state of the plant at that moment,
not the cause upstream of the root: the retriever reads it as context, like a reading reported normal.

>>> [reports_only_a_value({"code": c, "text": t}) for c, t in (("U_LL_AVG", "15.07 kV 50.00 Hz"),
...     ("INLET_T_HI", "Inlet 36.4 C"), ("CW_SUPPLY_T", "36.2 C (setpoint 29 C)"), ("UPS_STATE", "On battery"))]
[True, False, False, False]
"""

from __future__ import annotations

import re

from opsloop.models.incident_query import said, terms

# Words that state a condition rather than a quantity: a fault, a limit crossed, a state changed.
CONDITION_WORDS = frozenset(terms(
    "high low fault alarm alert trip loss down error warning critical open closed offline stale exceeded limit "
    "setpoint threshold abnormal unreachable unavailable bad degraded missing absent timeout lockout stopped shutdown "
    "off change"))  # "port 1 state change": a state changed
_COMPARISON = re.compile(r"[<>=]")
_WORD_BREAK = re.compile(r"[\s,;:/()]+")
_NUMBER = re.compile(r"^[-+]?\d+(?:\.\d+)?%?$")
LABEL_WORDS = 3  # at most this many words beside the values ("Electrical room 2: 24.1 C")


def reports_only_a_value(member: dict) -> bool:
    """Whether a member alarm reports a polled value and no condition (see the module's docstring)."""
    text = said(member)
    if not text or _COMPARISON.search(text):
        return False
    words = [w for w in _WORD_BREAK.split(text) if w]
    has_value = any(_NUMBER.match(w) for w in words)
    # A word with a digit that is no number names something ("y02h07", "PS1", "SNMPv2"): not a word of the label.
    label = terms(" ".join(w for w in words if not any(c.isdigit() for c in w)))
    stated = set(label) | set(terms(member.get("code") or ""))
    # "overtemperature", "undervoltage": a limit crossed, whatever the quantity.
    return has_value and len(label) <= LABEL_WORDS and not any(
        t in CONDITION_WORDS or t.startswith(("over", "under")) for t in stated)
