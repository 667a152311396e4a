"""The NOC pages' queries on a real DuckDB file written as the views agent writes it (no broker): actions
pending first then a searched, paginated history; the overview's day, billed peak, forecast band and
actions in the site's zone; incidents open first; an incident's members, SOP text and topology path."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from opsloop.config.site import load_site
from opsloop.config.settings import Settings
from opsloop.connectors.duckdb import open_db, store_batch
from opsloop.ops import noc_pages
from opsloop.ops.bench.noc import _table

pytestmark = pytest.mark.unit
T0 = 1_780_000_000_000 // 3_600_000 * 3_600_000  # on the hour


def action(i: int, site: str = "demo") -> dict:
    return {"action_id": f"a{i}", "kind": "pcs_discharge", "target": "pcs-1", "site": site, "setpoint_kw": 1000.0,
            "shed_kw": None, "job_ids": [], "params": {}, "reason": f"reason {i}", "reason_code": None,
            "expected_effect": "less import", "expected_delta_kw": -1000.0, "created_ms": T0 + i * 60_000,
            "expires_ms": T0 + i * 60_000 + 3_600_000, "risk": "low", "proposer": "peaks"}


@pytest.fixture
def con(tmp_path):
    con = open_db(tmp_path / "v.duckdb")
    actions = [action(i) for i in range(120)]
    verdicts = [{"action": a, "verdict": "needs_approval" if i % 40 == 0 else "approved", "reasons": ["r"],
                 "reason_codes": ["c"], "policy_version": "p", "decided_ms": a["created_ms"] + 1,
                 "approved_by": None if i % 40 == 0 else "ana"} for i, a in enumerate(actions)]
    snaps = [{"site": "demo", "window_start_ms": T0 + m * 60_000, "window_end_ms": T0 + (m + 1) * 60_000,
              "grid_kw": 1000.0 + (500.0 if 60 <= m < 90 else 0.0), "it_kw": 800.0, "facility_kw": 1000.0,
              "ess_soc_pct": 50.0, "ess_soh_pct": 95.0, "ess_kw": 0.0, "gpu_kw": None, "pue": 1.25,
              "price_per_mwh": None, "samples": 1, "devices": 1} for m in range(180)]
    forecast = {"site": "demo", "issued_ms": T0 + 179 * 60_000, "horizon_s": 3600, "step_s": 900,
                "predicted_peak_kw": 1600.0, "predicted_peak_ms": T0 + 200 * 60_000, "threshold_kw": 1400.0,
                "explanation": "peak ahead", "model": "m",
                "points": [{"ts_ms": T0 + (179 + 15 * k) * 60_000, "kw": 1100.0, "lower_kw": 1000.0,
                            "upper_kw": 1200.0} for k in range(1, 60)]}  # 14.75 h: the page keeps 12 h
    members = [{"fingerprint": "f2", "device": "pdu-a1", "device_type": "pdu", "code": "PWR_PDU_INPUT_LOSS",
                "count": 1, "first_seen_ms": T0 + 2000, "text": "", "log_line": "kernel: input lost"},
               {"fingerprint": "f1", "device": "ups-a", "device_type": "ups", "code": "UPS_ON_BATTERY", "count": 2,
                "first_seen_ms": T0 + 1000, "text": "", "log_line": ""}]
    incidents = [{"incident_id": f"inc-{k}", "site": "demo", "state": "resolved" if k == 0 else "open",
                  "opened_ms": T0, "updated_ms": T0 + k * 1000, "resolved_ms": None, "root_device": "ups-a",
                  "root_device_type": "ups", "root_code": "UPS_ON_BATTERY", "severity": "major", "member_count": 2,
                  "members": members, "summary": f"incident {k}", "merged_into": None} for k in range(3)]
    narrative = {"incident_id": "inc-1", "site": "demo", "ts_ms": T0, "text": "check the breaker", "grounded": True,
                 "citations": [{"sop_id": "SOP-PWR-001", "section": "Steps"}], "model": "m", "latency_ms": 1.0}
    for table, record, rows in (("actions_proposed", "Action", actions), ("actions_approved", "ApprovedAction", verdicts),
                                ("telemetry_site", "SiteSnapshot", snaps), ("forecasts_peak", "PeakForecast", [forecast]),
                                ("incidents", "Incident", incidents), ("narratives", "Narrative", [narrative])):
        store_batch(con, {table: _table(record, rows)}, {})
    yield con
    con.close()


def test_actions_pending_first_then_a_searched_paginated_history(con):
    found = noc_pages.actions(con)
    assert [a["action_id"] for a in found["pending"]] == ["a80", "a40", "a0"]  # all of them, newest first
    assert len(found["history"]) == noc_pages.PAGE_ROWS and found["total"] == 117
    assert found["history"][0]["action_id"] == "a119" and found["history"][0]["approved_by"] == "ana"
    page3 = noc_pages.actions(con, page=3)
    assert [a["action_id"] for a in page3["history"]][-1] == "a1" and len(page3["history"]) == 17
    searched = noc_pages.actions(con, q="reason 11")  # reason 11, 110..119 (but none pending)
    assert searched["total"] == 11 and len(searched["pending"]) == 3
    assert noc_pages.pending_count(con) == 3


def test_overview_reads_the_day_the_billed_peak_the_band_and_the_actions(con):
    site = load_site(Settings().topology)  # the demo site: UTC, monthly billing
    o = noc_pages.overview(con, "demo", site)
    assert len(o["power"]) == 180 and o["latest"]["grid_kw"] == 1000.0
    assert o["billed_peak_kw"] == 1500.0  # the 30-min mean over the half hour at 1,500 kW
    assert o["target_kw"] == 1400.0 and len(o["forecast"]["points"]) == 48  # 12 h of 15-min points
    assert len(o["actions"]) == 120 and o["ess_soh_pct"] == 95.0
    berlin = noc_pages.chart({**o, "tz": "Europe/Berlin", "power": o["power"][:1],
                              "forecast": o["forecast"], "actions": []})
    utc = noc_pages.from_ms(T0 + 194 * 60_000, ZoneInfo("UTC"))  # the first forecast point, in summer
    assert berlin["tz"] == "Europe/Berlin" and berlin["forecast"]["time"][0][11:16] == f"{(utc.hour + 2) % 24:02d}:14"


def test_incidents_open_first_and_an_incident_with_members_sops_and_path(con):
    site = load_site(Settings().topology)
    found = noc_pages.incidents(con, state="all")
    assert [i["incident_id"] for i in found["rows"]] == ["inc-2", "inc-1", "inc-0"] and found["total"] == 3
    assert [i["incident_id"] for i in noc_pages.incidents(con)["rows"]] == ["inc-2", "inc-1"]
    assert noc_pages.incidents(con, state="all", q="incident 1")["total"] == 1
    inc = noc_pages.incident(con, "inc-1", site)
    assert [m["code"] for m in inc["members"]] == ["UPS_ON_BATTERY", "PWR_PDU_INPUT_LOSS"]  # time order
    assert inc["narrative"]["text"] == "check the breaker"
    (sop,) = inc["sops"]
    assert sop["sop_id"] == "SOP-PWR-001" and "battery runtime" in sop["text"]
    assert ["ups-a", "pdu-a1"] in inc["paths"]
    assert noc_pages.incident(con, "nope", site) is None


def test_overview_shows_the_levers_engaged_the_kw_each_sheds_and_the_llm_slo_margin(con):
    from opsloop.models.llm_lever import BalancerLoad, slo_verdict

    now = T0 + 179 * 60_000  # the site's newest minute
    def lever(aid, kind, **fields):
        return {**action(0), "action_id": aid, "kind": kind, "target": fields.pop("target", "t"), "setpoint_kw": None,
                "created_ms": now - 600_000, "expires_ms": now + 600_000, **fields}
    engaged = [lever("bat", "pcs_discharge", setpoint_kw=1500.0), lever("hold", "slurm_suspend", shed_kw=240.0),
               lever("shift", "llm_shift", shed_kw=35.0), lever("old", "slurm_hold", shed_kw=99.0, expires_ms=now - 1),
               lever("undone", "llm_cap", shed_kw=50.0), lever("asked", "slurm_hold", shed_kw=77.0)]
    verdicts = [{"action": a, "verdict": "needs_approval" if a["action_id"] == "asked" else "approved", "reasons": ["r"],
                 "reason_codes": ["c"], "policy_version": "p", "decided_ms": now - 500_000, "approved_by": "ana"}
                for a in engaged]
    within = slo_verdict(BalancerLoad(1, 0.0, 0.0, 0.5), 2.0, 8).text
    def result(aid, status, ts_ms, observed="", delta=None):
        return {"action_id": aid, "target": "t", "status": status, "ts_ms": ts_ms, "observed_effect": observed,
                "observed_delta_kw": delta, "detail": "", "executor": "sink"}
    results = [result("bat", "verified", now - 300_000, delta=-1450.0), result("hold", "executed", now - 400_000),
               result("shift", "executed", now - 400_000), result("shift", "verified", now - 300_000, within),
               result("old", "executed", now - 400_000), result("undone", "executed", now - 400_000),
               result("undone", "reverted", now - 200_000, "restored")]
    for table, record, rows in (("actions_proposed", "Action", engaged), ("actions_approved", "ApprovedAction", verdicts),
                                ("actions_results", "ActionResult", results)):
        store_batch(con, {table: _table(record, rows)}, {})
    o = noc_pages.overview(con, "demo", load_site(Settings().topology))
    assert [(r["lever"], r["shed_kw"], r["observed_delta_kw"]) for r in o["levers"]] == [
        ("LLM shift", 35.0, None), ("battery", 1500.0, -1450.0), ("Slurm suspend", 240.0, None)]
    assert o["shed_kw"] == 1775.0
    margin = o["llm_slo"]["margin"]
    assert (margin.ttfb_margin_s, margin.queue_margin) == (1.5, 7.0)
