"""Cells of the NOC's pages from rows of the DuckDB views: pure functions, no I/O, every text escaped.

The Jinja2 templates (ops/noc_templates/) use these as filters; each returns markup that is already
escaped, so a template never escapes twice and never shows a view's text unescaped. An action waits for
an operator when its latest verdict is ``needs_approval`` and it has no result yet (a lapsed request has
one).

>>> is_pending({"action_id": "a1", "verdict": "needs_approval", "result": None})
True
>>> is_pending({"action_id": "a1", "verdict": "approved", "result": None})
False
>>> str(text("<script>"))
'&lt;script&gt;'
>>> str(number(1234.5, 0, " kW"))
'1,234 kW'
"""

from __future__ import annotations

import json
from datetime import datetime

from markupsafe import Markup, escape

from opsloop.models.explain import ActionAdvisor

CSRF_FIELD = "csrf_token"
FEEDBACK_KINDS = {"approve_action": "Approve", "reject_action": "Reject"}
LABEL_KINDS = {"alarm_noise": "Noise", "alarm_actionable": "Actionable"}


def text(value) -> Markup:
    """A cell as escaped text: NULL empty, naive times as UTC to the second, JSON lists joined."""
    if value is None:
        return Markup("")
    if isinstance(value, datetime):
        return escape(value.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if value.tzinfo is None else value.strftime(" %Z")))
    if isinstance(value, bool):
        return Markup("yes" if value else "no")
    if isinstance(value, str) and value.startswith("["):
        try:  # array columns are stored as JSON text by the sink
            items = json.loads(value)
        except ValueError:
            items = None
        if isinstance(items, list):
            return escape("; ".join(_item(item) for item in items))
    return escape(str(value))


def _item(item) -> str:
    if isinstance(item, dict):  # a nested record, e.g. a narrative's citation {sop_id, section}
        if "sop_id" in item:
            return f"{item['sop_id']} §{item.get('section', '')}".strip(" §")
        return " ".join(str(v) for v in item.values() if v is not None)
    return str(item)


def number(value, digits: int = 0, unit: str = "") -> Markup:
    """A number with fixed decimals and a unit; empty when NULL."""
    if value is None:
        return Markup("")
    return escape(f"{value:,.{digits}f}{unit}")


def is_pending(action: dict) -> bool:
    return action.get("verdict") == "needs_approval" and not action.get("result")


def advice(action: dict) -> Markup:
    """The advisor's plain sentence on an action (escaped); a short fallback when the row lacks the proposal."""
    if action.get("created_ms") is None or action.get("expires_ms") is None or not action.get("proposer"):
        amount = number(action.get("setpoint_kw"), 0, " kW") or number(action.get("shed_kw"), 0, " kW shed")
        return Markup(f'{text(action.get("kind"))} {text(action.get("target"))} {amount}: {text(action.get("reason"))}')
    job_ids = action.get("job_ids")
    if isinstance(job_ids, str):  # stored as JSON text by the sink
        job_ids = json.loads(job_ids)
    return escape(ActionAdvisor().run({**action, "job_ids": job_ids or []})["text"])
