"""The NOC page as HTML, from rows of the DuckDB views: pure functions, no I/O, every text escaped.

Rows are dicts (column -> value) as read from config/views.sql. An action waits for an operator when
its latest verdict is ``needs_approval`` and it has no result yet (a lapsed request has one).

>>> "Approve" in actions_section([{"action_id": "a1", "verdict": "needs_approval", "result": None}])
True
>>> "Approve" in actions_section([{"action_id": "a1", "verdict": "approved", "result": None}])
False
>>> "Approve" in actions_section([{"action_id": "a1", "verdict": "needs_approval", "result": None}], may_approve=False)
False
>>> text("<script>")
'&lt;script&gt;'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from typing import Iterable

from opsloop.models.explain import ActionAdvisor

FEEDBACK_PATH = "/feedback"
LOGIN_PATH, LOGOUT_PATH, STYLE_PATH = "/login", "/logout", "/noc.css"
CSRF_FIELD = "csrf_token"
FEEDBACK_KINDS = {"approve_action": "Approve", "reject_action": "Reject"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1b1f24; background: #f6f7f9; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; } h2 { font-size: 1.1rem; margin: 1.6rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { border: 1px solid #d0d5dc; padding: .35rem .5rem; text-align: left; vertical-align: top; }
th { background: #eceff3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.meta { color: #5a6370; font-size: .9rem; } .empty { color: #5a6370; font-style: italic; }
.banner { padding: .6rem .8rem; margin: .8rem 0; border-radius: 4px; }
.error { background: #fde2e1; border: 1px solid #e5a09b; } .notice { background: #e3f4e4; border: 1px solid #9ccf9f; }
.pending { background: #fff6d9; } .forecast { background: #fff; padding: .6rem .8rem; border: 1px solid #d0d5dc; }
form { display: inline; } button { margin-right: .3rem; }
.login { max-width: 22rem; background: #fff; padding: 1rem 1.2rem; border: 1px solid #d0d5dc; }
.login label { display: block; margin: .6rem 0 .2rem; } .login input { width: 100%; box-sizing: border-box; }
.login button { margin-top: .9rem; } .user { float: right; }
"""


@dataclass(frozen=True)
class Screen:
    """What the NOC shows, one list of view rows per section."""

    power: list[dict] = field(default_factory=list)
    forecasts: list[dict] = field(default_factory=list)
    rul: list[dict] = field(default_factory=list)  # the latest part-life forecasts, soonest first
    incidents: list[dict] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)
    dead_letters: int = 0
    audit: list[dict] | None = None  # the latest audit events, for admins only
    audit_error: str | None = None  # why an admin's audit trail could not be read


@dataclass(frozen=True)
class Viewer:
    """Who the page is for: their name and role, the session's CSRF token for its forms, what they may do."""

    name: str
    role: str = "operator"
    csrf: str = ""
    may_approve: bool = True


def text(value) -> str:
    """A cell as escaped text: NULL empty, times in UTC to the second, JSON lists joined."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return escape(value.strftime("%Y-%m-%d %H:%M:%S") + " UTC")
    if isinstance(value, bool):
        return "yes" if value else "no"
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


def number(value, digits: int = 0, unit: str = "") -> str:
    """A number with fixed decimals and a unit; empty when NULL."""
    if value is None:
        return ""
    return escape(f"{value:,.{digits}f}{unit}")


def is_pending(action: dict) -> bool:
    return action.get("verdict") == "needs_approval" and not action.get("result")


def _table(headers: Iterable[str], rows: list[list[str]], row_classes: list[str] | None = None,
           numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, cells in enumerate(rows):
        css = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        tds = "".join(f'<td class="num">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(cells))
        body.append(f"<tr{css}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _empty(what: str) -> str:
    return f'<p class="empty">{escape(what)}</p>'


def power_section(rows: list[dict]) -> str:
    """Latest minute of site power per site."""
    if not rows:
        return _empty("No site power yet (telemetry.site is empty).")
    cells = [[text(r.get("site")), text(r.get("minute")), number(r.get("grid_kw"), 0, " kW"),
              number(r.get("it_kw"), 0, " kW"), number(r.get("facility_kw"), 0, " kW"), number(r.get("pue"), 2),
              number(r.get("ess_soc_pct"), 0, " %"), number(r.get("ess_kw"), 0, " kW")] for r in rows]
    return _table(["site", "minute", "grid", "IT", "facility", "PUE", "ESS SoC", "ESS power"], cells,
                  numeric={2, 3, 4, 5, 6, 7})


def forecasts_section(rows: list[dict]) -> str:
    """The latest peak forecast per site, as its plain sentence and the threshold."""
    if not rows:
        return _empty("No peak forecast yet.")
    parts = []
    for r in rows:
        parts.append(
            f'<div class="forecast"><p><strong>{text(r.get("site"))}</strong>: {text(r.get("explanation"))}</p>'
            f'<p class="meta">predicted peak {number(r.get("predicted_peak_kw"), 0, " kW")} at '
            f'{text(r.get("predicted_peak_at"))}; threshold {number(r.get("threshold_kw"), 0, " kW")}; '
            f'issued {text(r.get("issued"))} by {text(r.get("model"))}</p></div>')
    return "".join(parts)


def rul_section(rows: list[dict]) -> str:
    """Each part's latest remaining-life forecast: its sentence, soonest first."""
    if not rows:
        return _empty("No part is forecast to reach a retirement limit.")
    return "".join(f'<div class="forecast"><p>{text(r.get("text"))}</p><p class="meta">{text(r.get("reason_code"))}; '
                   f'issued {text(r.get("issued"))} by {text(r.get("model"))}</p></div>' for r in rows)


def incidents_section(rows: list[dict]) -> str:
    """Open incidents with their root cause and the latest narrative."""
    if not rows:
        return _empty("No open incidents.")
    cells = []
    for r in rows:
        root = f'{text(r.get("root_device"))} ({text(r.get("root_device_type"))}): {text(r.get("root_code"))}'
        narrative = text(r.get("narrative")) or '<span class="empty">not narrated yet</span>'
        if r.get("citations"):
            narrative += f'<div class="meta">cites {text(r.get("citations"))}</div>'
        cells.append([text(r.get("incident_id")), text(r.get("site")), text(r.get("state")), text(r.get("severity")),
                      root, text(r.get("member_count")), text(r.get("opened")), text(r.get("summary")), narrative])
    return _table(["incident", "site", "state", "severity", "root cause", "alarms", "opened", "summary",
                   "narrative"], cells, numeric={5})


def csrf_input(csrf: str) -> str:
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">'


def feedback_buttons(action_id: str, csrf: str = "") -> str:
    """Approve and Reject for one action: a form that POSTs the id, the feedback kind and the CSRF token."""
    buttons = "".join(f'<button type="submit" name="kind" value="{kind}">{label}</button>'
                      for kind, label in FEEDBACK_KINDS.items())
    return (f'<form method="post" action="{FEEDBACK_PATH}">'
            f'<input type="hidden" name="action_id" value="{escape(action_id)}">{csrf_input(csrf)}{buttons}</form>')


def advice(action: dict) -> str:
    """The advisor's plain sentence on an action (escaped); a short fallback when the row lacks the proposal."""
    if action.get("created_ms") is None or action.get("expires_ms") is None or not action.get("proposer"):
        amount = number(action.get("setpoint_kw"), 0, " kW") or number(action.get("shed_kw"), 0, " kW shed")
        return f'{text(action.get("kind"))} {text(action.get("target"))} {amount}: {text(action.get("reason"))}'
    job_ids = action.get("job_ids")
    if isinstance(job_ids, str):  # stored as JSON text by the sink
        job_ids = json.loads(job_ids)
    return escape(ActionAdvisor().run({**action, "job_ids": job_ids or []})["text"])


def actions_section(rows: list[dict], csrf: str = "", may_approve: bool = True) -> str:
    """Every action in a sentence, with its verdict, result and reasons; pending ones first, with buttons for
    those who may approve (a viewer reads that approval needs an operator)."""
    if not rows:
        return _empty("No actions proposed.")
    ordered = sorted(rows, key=lambda r: not is_pending(r))  # stable: keeps the query's order otherwise
    cells, classes = [], []
    for r in ordered:
        verdict = text(r.get("verdict")) or "awaiting guard"
        if r.get("approved_by"):
            verdict += f' by {text(r.get("approved_by"))}'
        result = text(r.get("result"))
        if r.get("result_detail"):
            result += f'<div class="meta">{text(r.get("result_detail"))}</div>'
        cells.append([text(r.get("action_id")), text(r.get("site")), advice(r), verdict, text(r.get("verdict_reasons")),
                      result, _operator_cell(r, csrf, may_approve)])
        classes.append("pending" if is_pending(r) else "")
    return _table(["action", "site", "what and why", "verdict", "verdict reasons", "result", "operator"],
                  cells, classes)


def _operator_cell(action: dict, csrf: str, may_approve: bool) -> str:
    if not is_pending(action):
        return ""
    if not may_approve:
        return '<span class="meta">waiting for an operator</span>'
    return feedback_buttons(str(action["action_id"]), csrf)


def audit_section(rows: list[dict]) -> str:
    """The latest audit events (v_audit): who did what, when, from where."""
    if not rows:
        return _empty("No audit events yet.")
    cells = [[text(r.get("time")), text(r.get("event")), text(r.get("actor")), text(r.get("role")),
              text(r.get("target")), text(r.get("client")), text(r.get("source")), text(r.get("detail"))]
             for r in rows]
    return _table(["time", "event", "who", "role", "what", "from", "by", "detail"], cells)


def _banners(notice: str | None, error: str | None) -> str:
    banners = ""
    if error:
        banners += f'<div class="banner error" role="alert">{escape(error)}</div>'
    if notice:
        banners += f'<div class="banner notice" role="status">{escape(notice)}</div>'
    return banners


def _head(title: str, refresh_s: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}; url=/">' if refresh_s else ""
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'{refresh}<title>{escape(title)}</title><link rel="stylesheet" href="{STYLE_PATH}"></head><body>')


def login_page(csrf: str, *, notice: str | None = None, error: str | None = None) -> str:
    """The login form; ``csrf`` is the token also set in the login cookie (double submit)."""
    return (_head("opsloop NOC: log in") + "<h1>opsloop NOC</h1>" + _banners(notice, error)
            + f'<form class="login" method="post" action="{LOGIN_PATH}">{csrf_input(csrf)}'
            '<label for="username">User</label>'
            '<input id="username" name="username" autocomplete="username" required maxlength="64">'
            '<label for="password">Password</label>'
            '<input id="password" name="password" type="password" autocomplete="current-password" required>'
            '<button type="submit">Log in</button></form></body></html>')


def user_bar(viewer: Viewer) -> str:
    return (f'<span class="user">{escape(viewer.name)} ({escape(viewer.role)}) '
            f'<form method="post" action="{LOGOUT_PATH}">{csrf_input(viewer.csrf)}'
            '<button type="submit" id="logout">Log out</button></form></span>')


def render_page(screen: Screen | None, *, viewer: Viewer, source: str, refresh_s: int = 5,
                notice: str | None = None, error: str | None = None) -> str:
    """The whole page; ``screen`` is None when the views could not be read (``error`` says why)."""
    banners = _banners(notice, error)
    body = ""
    if screen is not None:
        pending = sum(is_pending(a) for a in screen.actions)
        body = (f"<h2>Site power now</h2>{power_section(screen.power)}"
                f"<h2>Peak forecast</h2>{forecasts_section(screen.forecasts)}"
                f"<h2>Parts wearing out ({len(screen.rul)})</h2>{rul_section(screen.rul)}"
                f"<h2>Open incidents ({len(screen.incidents)})</h2>{incidents_section(screen.incidents)}"
                f"<h2>Actions ({pending} waiting for approval)</h2>"
                f"{actions_section(screen.actions, viewer.csrf, viewer.may_approve)}"
                f'<h2>Dead letters</h2><p id="dead-letters">{screen.dead_letters} rejected message'
                f'{"" if screen.dead_letters == 1 else "s"} kept on the deadletter topic '
                f'(<code>opsloop sql "SELECT * FROM v_deadletter"</code>).</p>')
        if screen.audit_error:
            body += f'<h2>Audit trail</h2><p id="audit" class="empty">{escape(screen.audit_error)}</p>'
        elif screen.audit is not None:
            body += f'<h2>Audit trail (latest {len(screen.audit)})</h2><div id="audit">{audit_section(screen.audit)}</div>'
    doing = "approving" if viewer.may_approve else "viewing"
    return (_head("opsloop NOC", refresh_s) + user_bar(viewer)
            + f"<h1>opsloop NOC</h1><p class=\"meta\">from {escape(source)}; refreshes every {int(refresh_s)} s; "
            f"{doing} as <strong>{escape(viewer.name)}</strong> ({escape(viewer.role)})</p>{banners}{body}</body></html>")
