"""Narration without a model: retrieval quality on the labelled set, grounding, evidence; the checker's rules."""

from __future__ import annotations

import pytest
from haystack import Document

from opsloop.models.grounding import GroundingChecker, citations, step_claims
from opsloop.models.incident_query import IncidentQueryBuilder
from opsloop.config.assets import sop_texts
from opsloop.models.narrate import Narration
from opsloop.models.sops import parse_corpus
from opsloop.ops.evals.narrate import evaluate, load_labelled
from opsloop.schemas.codec import Codec

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
    for incident, expect in cases:
        codec.encode("Incident", incident)  # a valid Incident record
        assert expect and set(expect) <= set(narration.corpus)


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
