"""The NOC pages' HTML from view rows (templates and cell filters, no server): escaping, empty sections,
approval and label buttons only where they belong, units and the site's time zone."""

from __future__ import annotations

from datetime import datetime, timezone
from html.parser import HTMLParser
from zoneinfo import ZoneInfo

import pytest

from opsloop.models.llm_lever import slo_margin
from opsloop.ops import noc_pages
from opsloop.ops.noc_auth import Role, Session, User
from opsloop.ops.noc_view import text
from opsloop.ops.noc_web import Caller, render_document, render_fragment

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
        elif tag in ("input", "button", "select") and self.forms:
            self.forms[-1]["fields"].append((attrs.get("name"), attrs.get("value")))


def caller(name="ana", role=Role.OPERATOR, csrf="tok") -> Caller:
    return Caller(Session("sid", name, csrf, 0.0, 0.0), User(name, role, "hash"))


def action(action_id, verdict, result=None, **extra):
    return {"action_id": action_id, "site": "demo", "kind": "slurm_suspend", "target": "opsloop", "setpoint_kw": None,
            "shed_kw": 120.0, "reason": "peak ahead", "risk": "medium", "verdict": verdict,
            "verdict_reasons": '["needs a human: suspends jobs"]', "approved_by": None, "result": result,
            "result_detail": None, "observed_delta_kw": None, "created": None, **extra}


def actions_page(pending, history, viewer=None, q=""):
    found = {"pending": pending, "history": history, "total": len(history), "page": 1}
    return render_fragment("actions_live.html", viewer or caller(), found=found, params={"q": q} if q else {},
                           page_rows=50)


def test_text_escapes_and_formats():
    assert text('<img src=x onerror="alert(1)">') == "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;"
    assert text(None) == ""
    assert text(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02 03:04:05 UTC"
    assert text(datetime(2026, 1, 2, 3, 4, 5, tzinfo=ZoneInfo("Europe/Berlin"))) == "2026-01-02 03:04:05 CET"
    assert text('["a", "b"]') == "a; b"
    assert text('[{"sop_id": "SOP-UPS-01", "section": "3.2"}]') == "SOP-UPS-01 §3.2"
    assert text("[not json") == "[not json"


def test_every_text_field_is_escaped():
    evil = "<script>alert('x')</script>"
    live = actions_page([action(evil, "needs_approval", reason=evil)], [action("b", "approved", approved_by=evil)],
                        viewer=caller(evil, csrf=evil))
    live += render_fragment("incidents_live.html", caller(), page_rows=50, params={"q": evil},
                            found={"rows": [{"incident_id": evil, "root_code": evil, "narrative": evil,
                                             "summary": evil, "severity": evil}], "total": 1, "page": 1})
    page = render_document(caller(evil, csrf=evil), "/actions", live, source=evil, notice=evil, error=evil)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    logout, form, search, filters = Forms(page).forms
    assert ("action_id", evil) in form["fields"]  # the attribute round-trips to the exact id
    assert ("csrf_token", evil) in form["fields"] and logout["fields"][0] == ("csrf_token", evil)
    assert ("q", evil) in filters["fields"]


def test_empty_pages_say_so():
    assert "No actions proposed" in actions_page([], [])
    assert "No site power yet" in render_fragment("overview_live.html", caller(), o=None, sites=[], site="")
    html = render_fragment("incidents_live.html", caller(), found={"rows": [], "total": 0, "page": 1}, params={},
                           page_rows=50)
    assert "No open incidents" in html
    assert "No alarms yet" in render_fragment("alarms_live.html", caller(), alarms=[])
    assert "sources.health is empty" in render_fragment("sources_live.html", caller(), sources=[], dead_letters=0)
    assert "No audit events yet" in render_fragment("audit_live.html", caller(), rows=[])


def test_needs_approval_gets_approve_and_reject_others_do_not():
    html = actions_page([action("ask", "needs_approval")],
                        [action("done", "approved", result="verified"), action("lapsed", "needs_approval", "lapsed"),
                         action("no", "rejected"), action("new", None)])
    forms = [f for f in Forms(html).forms if f["action"] == "/feedback"]
    assert len(forms) == 1 and forms[0]["method"] == "post"
    assert forms[0]["fields"] == [("action_id", "ask"), ("csrf_token", "tok"), ("kind", "approve_action"),
                                  ("kind", "reject_action")]
    assert html.index(">ask<") < html.index(">done<")  # pending first
    assert "awaiting guard" in html and "Actions (1 waiting for approval)" in html
    assert "slurm_suspend opsloop 120 kW shed: peak ahead" in html  # no whole proposal in the row: the short form


def test_action_reads_as_the_advisors_sentence_with_verdict_result_and_approver():
    row = action("a1", "approved", result="verified", kind="pcs_discharge", target="pcs-1", setpoint_kw=3200.0,
                 shed_kw=None, job_ids="[]", expected_effect="", expected_delta_kw=-3200.0, proposer="peaks",
                 created_ms=0, expires_ms=5_400_000, risk="low", reason="forecast peak 31.4 MW exceeds 28.0 MW",
                 approved_by="ana", observed_delta_kw=-3100.0, result_detail="PCS at 3,200 kW")
    html = actions_page([], [row])
    assert ("Discharge battery pcs-1 at 3.2 MW until 01:30 UTC (1 h 30 min): grid import down 3.2 MW. "
            "Why: forecast peak 31.4 MW exceeds 28.0 MW. Low risk, proposed by peaks.") in html
    assert "approved by ana" in html and "verified: -3,100 kW observed" in html and "PCS at 3,200 kW" in html


def test_viewers_get_no_approval_or_label_forms():
    viewer = caller("vic", Role.VIEWER)
    html = actions_page([action("ask", "needs_approval")], [], viewer=viewer)
    assert not [f for f in Forms(html).forms if f["action"] == "/feedback"] and "waiting for an operator" in html
    alarm = {"fingerprint": "fp1", "site": "demo", "device": "ups-1", "code": "UPS_ON_BATTERY", "severity": "major",
             "state": "raise", "duplicate_count": 3, "noise_score": 0.1, "noise": False, "last_seen_ms": 0,
             "text": "", "label": None, "flapping": False}
    assert not Forms(render_fragment("alarms_live.html", viewer, alarms=[alarm])).forms
    (form,) = Forms(render_fragment("alarms_live.html", caller(), alarms=[alarm])).forms
    assert form["action"] == "/label" and form["fields"] == [("fingerprint", "fp1"), ("csrf_token", "tok"),
                                                             ("kind", "alarm_noise"), ("kind", "alarm_actionable")]


def test_overview_shows_units_the_site_zone_and_the_sentence():
    tz = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc).astimezone(tz)
    row = {"minute": now, "grid_kw": 30123.4, "it_kw": 25000.0, "facility_kw": 30000.0, "pue": 1.2,
           "ess_soc_pct": 80.4, "ess_kw": -500.0}
    o = {"site": "demo", "tz": "Europe/Berlin", "now": now, "power": [row], "latest": row, "ess_soh_pct": 97.0,
         "forecast": {"explanation": "Grid draw should peak at 33,000 kW.", "predicted_peak_kw": 33000.0,
                      "peak_at": now, "threshold_kw": 31000.0, "issued": now, "model": "m",
                      "points": [{"ts_ms": 1_780_308_000_000, "kw": 1.0, "lower_kw": 0.5, "upper_kw": 1.5}]},
         "actions": [], "billed_peak_kw": 32000.0, "billed_peak_at": now, "target_kw": 31000.0, "cap_kw": 40000.0,
         "levers": [{"lever": "battery", "action_id": "a-1", "target": "pcs-1", "shed_kw": 1500.0,
                     "observed_delta_kw": -1450.0, "result": "verified", "approved_by": None, "expires": now}],
         "shed_kw": 1500.0, "llm_slo": {"margin": slo_margin("first byte in 0.5 s (SLO 2 s), 1 queued (SLO 8)"),
                                        "at": now}}
    html = render_fragment("overview_live.html", caller(), o=o, sites=["demo"], site="demo", chart=noc_pages.chart(o),
                           pending=2, dead_letters=1)
    assert "Levers engaged (1): 1,500 kW shed" in html and "-1,450 kW" in html
    assert "first byte 1.50 s under its 2.0 s SLO" in html and "7 queued requests under its 8" in html
    assert "30,123 kW" in html and "1.20" in html and "80 %" in html and "-500 kW" in html and "health 97 %" in html
    assert "2026-06-01 12:00 CEST" in html and "times in Europe/Berlin" in html
    assert "32,000 kW" in html and "31,000 kW" in html and "Grid draw should peak at 33,000 kW." in html
    assert "2 actions waiting for approval" in html and "1 rejected message kept" in html
    assert noc_pages.chart(o)["time"] == ["2026-06-01T12:00:00"]  # local time on the axis, labelled with the zone
    assert noc_pages.chart(o)["forecast"]["upper_kw"] == [1.5]


def test_error_page_has_no_live_part_and_no_stream():
    page = render_document(caller(), "/", "", source="db", error="No DuckDB file at db yet")
    assert "No DuckDB file at db yet" in page and 'data-events=""' in page and 'id="chart"' not in page


def test_no_inline_style_or_script_the_csp_would_block():
    page = render_document(caller("ada", Role.ADMIN), "/", "", source="db", events="/")
    assert "<style" not in page and 'style="' not in page and 'href="/noc.css"' in page
    scripts = [line for line in page.splitlines() if "<script" in line]
    assert scripts and all('src="/static/' in line for line in scripts)
    assert 'href="/audit"' in page and "plotly.js (MIT licence" in page
    chart_json = render_fragment("overview_live.html", caller(), o=None, sites=[], site="")
    assert "<script" not in chart_json


def test_wall_mode_is_large_type_without_controls():
    row = {"grid_kw": 30000.0, "pue": 1.2, "ess_soc_pct": 80.0}
    o = {"site": "demo", "now": None, "latest": row, "billed_peak_kw": 31000.0, "target_kw": 30500.0,
         "forecast": {"explanation": "Grid draw should peak at 33,000 kW."}}
    live = render_fragment("wall_live.html", caller(), walls=[o], pending=1,
                           incidents=[{"severity": "critical", "root_device": "ups-a", "root_code": "UPS_ON_BATTERY",
                                       "summary": "UPS on battery"}])
    page = render_document(caller(), "/wall", live, source="db", events="/wall")
    assert 'class="kiosk"' in page and "<nav>" not in page and "<form" not in page and "<button" not in page
    assert "30,000 kW" in page and "31,000 kW" in page and "Grid draw should peak at 33,000 kW." in page
    assert "critical: ups-a UPS_ON_BATTERY: UPS on battery" in page and "1 action waiting for approval" in page
