"""The NOC page's HTML from view rows: escaping, empty sections, approval buttons only where pending."""

from __future__ import annotations

from datetime import datetime
from html.parser import HTMLParser

import pytest

from opsloop.ops.noc_view import (Screen, Viewer, actions_section, audit_section, incidents_section, login_page,
                                  power_section, render_page, text)

pytestmark = pytest.mark.unit


class Forms(HTMLParser):
    """Collects the forms of a page: their action and the (name, value) of their inputs and buttons."""

    def __init__(self, html: str):
        super().__init__()
        self.forms: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"action": attrs.get("action"), "method": attrs.get("method"), "fields": []})
        elif tag in ("input", "button") and self.forms:
            self.forms[-1]["fields"].append((attrs.get("name"), attrs.get("value")))


def action(action_id, verdict, result=None, **extra):
    return {"action_id": action_id, "site": "demo", "kind": "slurm_suspend", "target": "opsloop", "setpoint_kw": None,
            "shed_kw": 120.0, "reason": "peak ahead", "risk": "medium", "verdict": verdict,
            "verdict_reasons": '["needs a human: suspends jobs"]', "approved_by": None, "result": result,
            "result_detail": None, **extra}


def test_text_escapes_and_formats():
    assert text('<img src=x onerror="alert(1)">') == "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;"
    assert text(None) == ""
    assert text(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02 03:04:05 UTC"
    assert text('["a", "b"]') == "a; b"
    assert text('[{"sop_id": "SOP-UPS-01", "section": "3.2"}]') == "SOP-UPS-01 §3.2"
    assert text("[not json") == "[not json"


def test_every_text_field_is_escaped():
    evil = "<script>alert('x')</script>"
    screen = Screen(power=[{"site": evil, "grid_kw": 1.0}], forecasts=[{"site": "demo", "explanation": evil}],
                    incidents=[{"incident_id": evil, "root_code": evil, "narrative": evil, "summary": evil}],
                    actions=[action(evil, "needs_approval", reason=evil)])
    screen = Screen(**{**screen.__dict__, "audit": [{"actor": evil, "target": evil, "detail": evil}]})
    page = render_page(screen, viewer=Viewer(evil, evil, evil), source=evil, notice=evil, error=evil)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    logout, form = Forms(page).forms
    assert ("action_id", evil) in form["fields"]  # the attribute round-trips to the exact id
    assert ("csrf_token", evil) in form["fields"] and logout["fields"][0] == ("csrf_token", evil)


def test_empty_tables_say_so():
    page = render_page(Screen(), viewer=Viewer("ana"), source="db")
    assert "No site power yet" in page and "No peak forecast yet" in page
    assert "No open incidents" in page and "No actions proposed" in page
    assert "0 rejected messages" in page and "Audit trail" not in page
    assert [f["action"] for f in Forms(page).forms] == ["/logout"]


def test_needs_approval_gets_approve_and_reject_others_do_not():
    rows = [action("done", "approved", result="verified"), action("ask", "needs_approval"),
            action("lapsed", "needs_approval", result="lapsed"), action("no", "rejected"), action("new", None)]
    html = actions_section(rows, csrf="tok")
    (form,) = Forms(html).forms
    assert form["action"] == "/feedback" and form["method"] == "post"
    assert form["fields"] == [("action_id", "ask"), ("csrf_token", "tok"), ("kind", "approve_action"),
                              ("kind", "reject_action")]
    assert html.index(">ask<") < html.index(">done<")  # pending first
    assert "awaiting guard" in html
    assert "slurm_suspend opsloop 120 kW shed: peak ahead" in html  # no whole proposal in the row: the short form


def test_action_reads_as_the_advisors_sentence():
    row = action("a1", "needs_approval", kind="pcs_discharge", target="pcs-1", setpoint_kw=3200.0, shed_kw=None,
                 job_ids="[]", expected_effect="", expected_delta_kw=-3200.0, proposer="peaks", created_ms=0,
                 expires_ms=5_400_000, risk="low", reason="forecast peak 31.4 MW exceeds 28.0 MW")
    assert ("Discharge battery pcs-1 at 3.2 MW until 01:30 UTC (1 h 30 min): grid import down 3.2 MW. "
            "Why: forecast peak 31.4 MW exceeds 28.0 MW. Low risk, proposed by peaks.") in actions_section([row])


def test_incident_shows_root_cause_and_narrative():
    html = incidents_section([{"incident_id": "inc-1", "site": "demo", "state": "open", "severity": "critical",
                               "root_device": "ups-1", "root_device_type": "ups", "root_code": "UPS_ON_BATTERY",
                               "member_count": 4, "summary": "UPS on battery", "narrative": "Check the mains feed.",
                               "citations": '[{"sop_id": "SOP-UPS-01", "section": "2"}]'}])
    assert "ups-1 (ups): UPS_ON_BATTERY" in html and "Check the mains feed." in html and "SOP-UPS-01 §2" in html
    assert "not narrated yet" in incidents_section([{"incident_id": "inc-2", "narrative": None}])


def test_power_formats_units():
    html = power_section([{"site": "demo", "minute": None, "grid_kw": 30123.4, "it_kw": 25000.0,
                           "facility_kw": 30000.0, "pue": 1.2, "ess_soc_pct": 80.4, "ess_kw": -500.0}])
    assert "30,123 kW" in html and "1.20" in html and "80 %" in html and "-500 kW" in html


def test_error_page_has_no_sections():
    page = render_page(None, viewer=Viewer("ana"), source="db", error="No DuckDB file at db yet")
    assert "No DuckDB file at db yet" in page and "Site power" not in page
    assert 'http-equiv="refresh"' in page


def test_viewers_get_no_approval_forms():
    html = actions_section([action("ask", "needs_approval")], csrf="tok", may_approve=False)
    assert Forms(html).forms == [] and "waiting for an operator" in html


def test_login_page_posts_name_password_and_token():
    (form,) = Forms(login_page("tok", error="<b>x</b>")).forms
    assert form["action"] == "/login" and form["method"] == "post"
    assert [name for name, _ in form["fields"]] == ["csrf_token", "username", "password", None]
    assert ("csrf_token", "tok") in form["fields"] and "&lt;b&gt;" in login_page("tok", error="<b>x</b>")


def test_no_inline_style_or_script_the_csp_would_block():
    page = render_page(Screen(audit=[]), viewer=Viewer("ada", "admin"), source="db")
    assert "<style" not in page and "<script" not in page and 'href="/noc.css"' in page
    assert "No audit events yet" in page and "No audit events yet" in audit_section([])
