"""Narration without a model: retrieval quality on the labelled set, grounding, evidence; the checker's rules."""

from __future__ import annotations

import pytest
from haystack import Document

from opsloop.models.grounding import GroundingChecker, citations, step_claims
from opsloop.models.alarm_states import reports_normal, symptoms
from opsloop.models.incident_query import IncidentQueryBuilder, fan_out, log_codes, terms
from opsloop.models.sop_retrieval import device_kinds
from opsloop.config.assets import sop_texts
from opsloop.models.narrate import Narration
from opsloop.models.sops import parse_corpus
from opsloop.ops.evals.narrate import (BLIND, BLIND_NO_TYPES, DEV_SETS, FRESH_SETS, SEALED, SEALED3, SEALED3_NO_TYPES,
                                       evaluate, load_labelled)
from opsloop.schemas.codec import Codec
from incidents import incident as _incident  # the unit tier's incident record

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def narration():
    return Narration(parse_corpus(sop_texts()))


@pytest.fixture(scope="module")
def cases():
    return load_labelled()


def test_labelled_set_is_large_valid_and_names_real_sops(narration, cases):
    codec = Codec.default()
    assert len(cases) >= 60
    every = cases + [case for path in DEV_SETS[1:] + FRESH_SETS + [SEALED, SEALED3] for case in load_labelled(path)]
    for incident, expect in every:
        codec.encode("Incident", incident)  # a valid Incident record
        assert expect and set(expect) <= set(narration.corpus)
    assert len({incident["incident_id"] for incident, _ in every}) == len(every)


@pytest.mark.parametrize("typed_file, untyped_file", [(BLIND, BLIND_NO_TYPES), (SEALED3, SEALED3_NO_TYPES)])
def test_a_set_without_types_differs_from_its_set_only_in_device_types(typed_file, untyped_file):
    typed, untyped = load_labelled(typed_file), load_labelled(untyped_file)
    assert len(typed) == len(untyped) >= 48
    generic = {"device", "asset", "equipment", "other"}
    for (a, expect_a), (b, expect_b) in zip(typed, untyped):
        assert a["incident_id"] == b["incident_id"] and expect_a == expect_b
        assert b["root_device_type"] in generic and {m["device_type"] for m in b["members"]} <= generic
        strip = lambda i: {**i, "root_device_type": None, "members": [{**m, "device_type": None} for m in i["members"]]}
        assert strip(a) == strip(b), a["incident_id"]


def test_retrieval_meets_the_targets_on_the_labelled_set(narration, cases):
    report = evaluate(narration, cases, rounds=1)
    assert report["hit_at_3"] >= 0.95 and report["hit_at_1"] >= 0.85, report["misses_at_1"]
    assert report["deterministic"]["grounded_share"] == 1.0


def test_retrieval_does_not_hang_on_the_code_spelling(narration, cases):
    incident = dict(cases[3][0])  # UPS on battery
    for spelling in ["UPS_ON_BATTERY", "ups.onBattery", "UpsOnBatt", "ON-BATTERY"]:
        assert narration.retrieve({**incident, "root_code": spelling}).sop_ids[0] == "SOP-PWR-002", spelling


def test_deterministic_narration_states_cause_evidence_and_verbatim_steps(narration, cases):
    incident, _ = next(c for c in cases if c[0]["incident_id"] == "pwr-16")  # breaker trip with members
    result = narration.deterministic(incident)
    best = narration.corpus[result.sop_ids[0]]
    assert result.grounded and result.model == "deterministic" and not result.rejected
    assert incident["root_device"] in result.text and incident["root_code"] in result.text
    for member in incident["members"]:
        assert member["device"] in result.text and member["code"] in result.text
    assert f"{len(incident['members'])} distinct alarm(s)" in result.text
    assert step_claims(result.text) == list(best.steps)
    assert {"sop_id": best.id, "section": "Steps"} in result.citations
    record = result.narrative(incident, ts_ms=1, latency_ms=0.5)
    assert Codec.default().decode_as("Narrative", Codec.default().encode("Narrative", record)) == record


def test_every_incident_narration_is_grounded_and_cites_only_retrieved_sections(narration, cases):
    for incident, _ in cases:
        retrieved = narration.retrieve(incident)
        result = narration.deterministic(incident, retrieved)
        allowed = {(d.meta["sop_id"], d.meta["section"]) for d in retrieved.documents}
        assert result.grounded
        assert {(c["sop_id"], c["section"]) for c in result.citations} <= allowed


def test_query_weighs_the_root_over_a_storm_of_members():
    members = [{"device": f"pdu-{i}", "device_type": "pdu", "code": "PDU_INPUT_LOST", "count": 40,
                "first_seen_ms": 0, "fingerprint": str(i)} for i in range(50)]
    out = IncidentQueryBuilder().run({"root_code": "UPS_FAULT", "root_device_type": "ups", "members": members,
                                      "summary": ""})
    assert out["query"].split().count("fault") == 3 and out["query"].split().count("loss") == 1  # lost → loss
    assert out["member_codes"] == ["PDU_INPUT_LOST"]


@pytest.fixture(scope="module")
def retrieved(narration, cases):
    return narration.retrieve(cases[3][0])  # UPS on battery: SOP-PWR-002 first


def test_checker_accepts_verbatim_steps_of_a_cited_retrieved_sop(narration, retrieved):
    sop = narration.corpus["SOP-PWR-002"]
    text = f"UPS on battery [SOP-PWR-002 §Steps]\n1. {sop.steps[1]}\n- {sop.steps[0].lower()}"
    assert narration.checker.run(text=text, documents=retrieved.documents)["grounded"]


@pytest.mark.parametrize("text, reason", [
    ("1. Read the UPS front panel.", "no SOP section cited"),
    ("See [SOP-PWR-002 §Steps]\n1. Replace the UPS with a bigger one.", "step not in the cited SOPs"),
    ("See [SOP-CLG-003 §Steps]", "cited section not retrieved: SOP-CLG-003 §Steps"),
    ("See [SOP-PWR-002 §Appendix]", "cited section not retrieved: SOP-PWR-002 §Appendix"),
    ("See [SOP-PWR-002 §Scope] and SOP-NET-001.", "SOP not retrieved: SOP-NET-001"),
    ("", "empty narration"),
])
def test_checker_rejects_what_is_not_grounded(narration, retrieved, text, reason):
    out = narration.checker.run(text=text, documents=retrieved.documents)
    assert not out["grounded"] and any(r.startswith(reason) for r in out["reasons"]), out["reasons"]


def test_a_step_of_another_retrieved_sop_is_not_enough_without_citing_it(narration, retrieved):
    other = narration.corpus["SOP-PWR-005"]  # retrieved too, but not cited
    text = f"[SOP-PWR-002 §Steps]\n1. {other.steps[0]}"
    assert not narration.checker.run(text=text, documents=retrieved.documents)["grounded"]


def test_citation_and_step_parsing():
    text = "Cause [SOP-A-1 §Scope] x [ SOP-A-1 § Steps ]\n1) Do it. [SOP-A-1 §Steps]\n* Then that\nplain line"
    assert citations(text) == [("SOP-A-1", "Scope"), ("SOP-A-1", "Steps")]
    assert step_claims(text) == ["Do it.", "Then that"]
    checker = GroundingChecker({})
    assert not checker.run(text="[SOP-A-1 §Scope]", documents=[Document(content="", meta={
        "sop_id": "SOP-A-1", "section": "Steps"})])["grounded"]


def _gpu_incident(log_line: str, summary: str = "Detected XID error on GPU 4") -> dict:
    root = {"fingerprint": "r", "device": "hx-0117", "device_type": "host", "code": "DCGM_FR_XID_ERROR",
            "count": 1, "first_seen_ms": 0, "text": "", "log_line": log_line}
    return {"incident_id": "x", "site": "s", "state": "open", "opened_ms": 0, "updated_ms": 0, "resolved_ms": None,
            "root_device": "hx-0117", "root_device_type": "host", "root_code": "DCGM_FR_XID_ERROR",
            "severity": "major", "member_count": 1, "members": [root], "summary": summary}


@pytest.mark.parametrize("log_line, expect", [
    ("NVRM: Xid (PCI:0000:9a:00): 13, pid=8812, Graphics SM Warp Exception", "SOP-GPU-001"),
    ("NVRM: Xid (PCI:0000:c3:00): 79, pid='<unknown>', GPU has fallen off the bus.", "SOP-GPU-002"),
    ("NVRM: Xid (PCI:0000:18:00): 63, pid=1201, Row Remapper: New row marked for remapping", "SOP-GPU-003"),
    ("nvidia-nvswitch2: SXid (PCI:0000:86:00.0): 12028, Non-fatal, Link 41 egress error", "SOP-GPU-005"),
])
def test_the_kernel_line_decides_between_sibling_gpu_procedures(narration, log_line, expect):
    assert narration.retrieve(_gpu_incident(log_line)).sop_ids[0] == expect
    # The same alarm without its log line cannot tell them apart: one GPU procedure for all four, the generic Xid
    # procedure among the first two (the weights chosen by leave-one-file-out rank "fallen off the bus" first on
    # this vendor's prefixed code).
    alone = narration.retrieve(_gpu_incident("")).sop_ids
    assert alone[0].startswith("SOP-GPU-") and "SOP-GPU-001" in alone[:2]


def test_what_the_root_alarm_says_counts_when_its_code_and_type_say_nothing(narration):
    incident = {**_gpu_incident(""), "root_device": "P1-07", "root_device_type": "device", "root_code": "0x0105",
                "summary": ""}
    root = {**incident["members"][0], "device": "P1-07", "device_type": "device", "code": "0x0105"}
    assert narration.retrieve({**incident, "members": [root]}).sop_ids[0] != "SOP-PWR-002"
    said = {**root, "text": "Battery Discharging"}
    assert narration.retrieve({**incident, "members": [said]}).sop_ids[0] == "SOP-PWR-002"


def test_the_root_kind_comes_from_the_type_or_else_the_name(narration):
    known = narration.retriever._known_kinds
    assert device_kinds(known, "ups", "x") == ["UPS"]
    assert device_kinds(known, "host", "") == ["SERVER"]
    assert device_kinds(known, "transfer_switch", "") == ["ATS"]
    assert device_kinds(known, "device", "DH1-UPS-C") == ["UPS"]
    assert device_kinds(known, "device", "r40-c01") == []
    assert device_kinds(known, "lv_swbd", "SWBD-2A") == ["SWITCHGEAR"]  # a low-voltage switchboard
    assert device_kinds(known, "battery_monitor", "BMON-1A") == ["UPS_BATTERY"]  # it watches a UPS's strings


def test_codes_stated_in_words_are_read():
    assert log_codes("Xid 79 then XID_48, jobs ended NODE_FAIL") == ["XID_79", "XID_48", "NODE_FAIL"]
    assert log_codes("Detected XID error on GPU 4") == []
    assert terms("Under-Voltage relay; Inverter Failure; input lost") == ["undervoltag", "relay", "invert", "fault",
                                                                          "input", "loss"]


def test_development_sets_in_vendor_wording_meet_the_targets(narration):
    # hit@1 on each set; hit@3 over the three together (196 cases: on one set of 60, one miss is 1.7 points)
    reports = [evaluate(narration, load_labelled(path), rounds=1) for path in DEV_SETS[1:]]
    for path, report in zip(DEV_SETS[1:], reports):
        assert report["hit_at_1"] >= 0.9, (path.name, report["misses_at_1"])
        assert report["deterministic"]["grounded_share"] == 1.0  # latency is judged by the eval, not a timed test
    cases = [report["cases"] for report in reports]
    assert sum(r["hit_at_3"] * n for r, n in zip(reports, cases)) / sum(cases) >= 0.98


def test_retrieval_is_the_same_from_a_fresh_pipeline(narration, cases):
    fresh = Narration(parse_corpus(sop_texts()))
    for incident, _ in cases[::7]:
        assert narration.retrieve(incident).sop_ids == fresh.retrieve(incident).sop_ids


def test_the_narration_quotes_the_root_alarms_log_line_and_stays_grounded(narration):
    kernel = "NVRM: Xid (PCI:0000:c3:00): 79, pid='<unknown>', GPU has fallen off the bus."
    result = narration.deterministic(_gpu_incident(kernel))
    assert result.grounded and f'The root alarm says: log "{kernel}".' in result.text.splitlines()
    assert "The root alarm says" not in narration.deterministic(_gpu_incident("")).text


def test_a_member_reporting_a_normal_reading_is_not_a_symptom():
    assert reports_normal("CHW supply 12.1 C normal") and reports_normal("Utility voltages nominal 11.0 kV")
    assert reports_normal("other feed OK") and not reports_normal("Normal source not acceptable")
    assert symptoms("Voltage sag 71% for 140 ms, recovered") == "Voltage sag 71% for 140 ms"
    incident = _incident(("crah-7", "crah", "Vnd.SupplyAirHigh", "Supply air 24.6 C"),
                         [("chw-hdr", "chilled_water", "BMS.CHWS_T", "CHW supply 12.1 C normal", 0),
                          ("crah-7", "crah", "Vnd.Fans", "unit fans stopped", 0)])
    out = IncidentQueryBuilder().run(incident=incident)
    assert out["member_codes"] == ["Vnd.Fans"] and "chill" not in out["query"].split()


def test_a_reading_within_its_limits_or_a_missing_alarm_is_normal_too():
    assert reports_normal("Inlet 22.4 C (normal)") and reports_normal("all outlets powered (within limits)")
    assert reports_normal("no alarm") and reports_normal("All system fans OK 11200-11600 RPM")
    assert not reports_normal("no SNMP response") and not reports_normal("CHW supply 16.2 C (setpoint 12 C)")
    assert terms("Switch restarted") == terms("Switch rebooted")


def test_a_reading_in_range_or_a_state_with_no_active_fault_is_normal():
    assert reports_normal("supply 32.1 C (in range)") and reports_normal("no active fault")
    assert symptoms("State: standby, no active fault") == "State: standby"
    assert not reports_normal("supply 32.1 C out of range") and not reports_normal("no output voltage")
    assert reports_normal("Ethernet3/12/1 line protocol up") and reports_normal("all ports up")
    assert not reports_normal("Link 30 LTSSM Fault Up") and not reports_normal("fan speed ramped up after alarm")


def test_each_member_code_is_read_alone_from_its_first_alarm():
    root = ("n-01", "gpu_node", "NHC-HEARTBEAT-MISS", "heartbeat missed")
    incident = _incident(root, [("pdu-a", "pdu", "CB1-OPEN", "Circuit breaker CB1 open", -25),
                                ("pdu-b", "pdu", "CB1-OPEN", "Circuit breaker CB1 open", -2),
                                ("n-01", "bmc", "IPMI-STATUS", "BMC answering, no alarm", 5)])
    out = IncidentQueryBuilder().run(incident=incident)
    breaker, bmc = out["member_alarms"]
    assert (breaker["code"], breaker["after_s"], breaker["same_device"], breaker["says_normal"]) == \
        ("CB1-OPEN", -25.0, False, False)
    assert (bmc["after_s"], bmc["same_device"], bmc["says_normal"]) == (5.0, True, True)
    assert "breaker" in breaker["query"].split() and out["root_alarm"]["devices"] == 1


def test_a_member_seen_before_the_root_counts_as_its_likely_cause(narration):
    chiller = ("ch-1", "chiller", "Vnd.Alarm", "Chiller 1 alarm trip, compressor overload")
    root = ("crah-1", "crah", "Vnd.SupplyAirHigh", "High supply air temperature, fans 100%")
    chw = ("chw-hdr", "chilled_water", "Vnd.ChwsHigh", "chilled water supply 17 C")
    before = _incident(root, [(*chiller, -300), (*chw, -120)])
    after = _incident(root, [(*chiller, 300), (*chw, 120)])
    assert IncidentQueryBuilder().run(incident=after)["lead_words"] == []
    assert narration.retrieve(before).sop_ids[0] == "SOP-CLG-003"
    score = lambda incident: dict(narration.retriever.scores(**narration.query.run(incident=incident)))  # noqa: E731
    lift = score(before)["SOP-CLG-003"] - score(after)["SOP-CLG-003"]
    assert lift == pytest.approx(narration.retriever.lead_weight) and lift > 0
    # A root whose own code names a procedure keeps it: on battery before battery low is its first stage.
    low = _incident(("ups-1", "ups", "BATTERY_LOW", ""), [("ups-1", "ups", "UPS_ON_BATTERY", "", -600)])
    assert narration.retrieve(low).sop_ids[0] == "SOP-PWR-005"


def test_one_code_on_many_devices_at_once_points_upstream_of_them(narration):
    nfs = ("n-01", "gpu_server", "KERNEL_NFS", "nfs server not responding")
    many = _incident(nfs, [(f"n-0{i}", "gpu_server", "KERNEL_NFS", "nfs server not responding", 2)
                           for i in (2, 3)])
    assert fan_out(many["members"], "n-01", "KERNEL_NFS") == 3
    assert fan_out(_incident(nfs, [])["members"], "n-01", "KERNEL_NFS") == 1
    score = lambda incident: dict(narration.retriever.scores(**narration.query.run(incident=incident)))  # noqa: E731
    one, three = score(_incident(nfs, [])), score(many)
    # The storage procedure speaks of "many nodes"; the node-down one does not and gains nothing.
    assert three["SOP-NET-008"] - one["SOP-NET-008"] == pytest.approx(narration.retriever.fanout_weight)
    assert narration.retriever.fanout_weight > 0
    assert three["SOP-GPU-006"] == pytest.approx(one["SOP-GPU-006"])


def test_a_fan_out_the_roots_own_fault_brings_speaks_for_no_other_procedure(narration):
    # The twin's scripted PDU breaker trip: its racks lose a feed, their servers a supply, many at once.
    breaker = ("pdu-a2", "pdu", "PWR_PDU_BREAKER_TRIP", "")
    feeds = [(f"rack-a0{r}", "rack", "PWR_RACK_FEED_LOST", "", 3 + r) for r in (3, 4)]
    supplies = [(f"rack-a0{r}-n{k}", "gpu_node", "PWR_INPUT_LOSS", "", 5 + r + k) for r in (3, 4) for k in range(1, 7)]
    trip = _incident(breaker, feeds + supplies)
    assert "SOP-PWR-011" in narration.retriever.relations.brings["SOP-PWR-007"]
    assert narration.retrieve(trip).sop_ids[0] == "SOP-PWR-007"
    # The breaker's trap came late, after a server of its racks had lost a supply: it came first, but the
    # breaker's own fault brings it, so it leads to no other procedure (a version of the demo's trip, read live).
    late = _incident(("pdu-a2", "pdu", "PWR_PDU_BREAKER_TRIP", "pwr pdu breaker trip on pdu pdu-a2"),
                     [("rack-a03-n7", "gpu_node", "PWR_INPUT_LOSS", "pwr input loss on gpu_node rack-a03-n7", -47)],
                     summary="PWR_PDU_BREAKER_TRIP on pdu pdu-a2 with 40 related alarms on 37 devices (18 gpu, "
                             "13 gpu_node, 7 rack, 2 pdu, 1 zone)")
    assert narration.retrieve(late).sop_ids[0] == "SOP-PWR-007"
    # The same supplies lost with no breaker behind them: the fan-out speaks for the rack-feed procedure.
    feed = _incident(("rack-a03-n1", "gpu_node", "PWR_INPUT_LOSS", ""), supplies[1:])
    assert narration.retrieve(feed).sop_ids[0] == "SOP-PWR-011"
