"""Signed verdicts and feedback (models.signing) and the guard's pure checks on answers and undos."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from opsloop.config.settings import Settings
from opsloop.models.guard import (FEEDBACK_CODES, REASON_CODES, REJECTED, PlantState, decide, feedback_problem,
                                  undo_problems)
from opsloop.models.signing import (VERDICT_CHECK_CODES, Keyring, SigningError, canonical, feedback_authentic,
                                    sign_feedback, sign_verdict, verdict_problems)
from opsloop.config.policy import KindRule, PcsLimits, Policy, SlurmLimits
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.unit
SECRET_A = "UNITSECRETAAAA-" + "a" * 24
SECRET_B = "UNITSECRETBBBB-" + "b" * 24
KEYS = Keyring.parse(f"ka:{SECRET_A}")
NOW = 1_780_000_000_000
CODEC = Codec.default()


def action(**fields) -> dict:
    base = {"action_id": "a-1", "kind": "pcs_discharge", "target": "ess-1", "site": "demo", "setpoint_kw": 4000.0,
            "shed_kw": None, "job_ids": [], "params": {}, "reason": "r", "reason_code": None, "expected_effect": "e",
            "expected_delta_kw": None, "created_ms": NOW - 1000, "expires_ms": NOW + 600_000, "risk": "low",
            "proposer": "peaks"}
    return {**base, **fields}


def verdict(**fields) -> dict:
    record = {"action": action(), "verdict": "approved", "reasons": ["ok"], "reason_codes": ["within_limits"],
              "policy_version": "v2", "decided_ms": NOW, "approved_by": None}
    record.update(fields)
    return CODEC.decode_as("ApprovedAction", CODEC.encode("ApprovedAction", record))


def roundtrip(record: dict) -> dict:
    return CODEC.decode_as("ApprovedAction", CODEC.encode("ApprovedAction", record))


def test_a_signed_verdict_survives_the_wire_and_verifies():
    signed = roundtrip(sign_verdict(verdict(), KEYS))
    assert signed["key_id"] == "ka" and verdict_problems(signed, KEYS, "v2", NOW) == []


def test_the_probed_forgery_is_refused_unsigned_or_signed_with_another_key():
    forged = verdict(policy_version="v999", approved_by="nobody",
                     action=action(setpoint_kw=4000.0, expires_ms=NOW + 3_600_000))
    assert [p.code for p in verdict_problems(forged, KEYS, "v2", NOW)] == ["unsigned_verdict"]
    other = sign_verdict(forged, Keyring.parse(f"ka:{SECRET_B}"))  # right key id, wrong secret
    assert [p.code for p in verdict_problems(other, KEYS, "v2", NOW)] == ["bad_signature"]
    unknown = sign_verdict(forged, Keyring.parse(f"kz:{SECRET_B}"))
    assert [p.code for p in verdict_problems(unknown, KEYS, "v2", NOW)] == ["unknown_key"]


def test_a_genuine_verdict_of_another_policy_or_expired_is_refused():
    signed = sign_verdict(verdict(), KEYS)
    assert [p.code for p in verdict_problems(signed, KEYS, "v3", NOW)] == ["policy_mismatch"]
    assert [p.code for p in verdict_problems(signed, KEYS, "v2", NOW + 600_000)] == ["expired"]
    assert {p.code for p in verdict_problems(signed, KEYS, "v3", NOW + 600_000)} <= VERDICT_CHECK_CODES


FIELDS = st.sampled_from(["setpoint_kw", "expires_ms", "target", "kind", "action_id", "proposer", "params",
                          "verdict", "policy_version", "approved_by"])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(FIELDS, st.integers(1, 10_000), st.text(min_size=1, max_size=20))
def test_altering_any_field_of_a_signed_verdict_breaks_its_signature(name, number, text):
    signed = sign_verdict(verdict(), KEYS)
    act = dict(signed["action"])
    if name == "setpoint_kw":
        act[name] += number
    elif name == "expires_ms":
        act[name] += number
    elif name == "kind":
        act[name] = "pcs_charge"
    elif name == "params":
        act[name] = {"undo_of": text}
    elif name in act:
        act[name] = act[name] + text
    altered = {**signed, "action": act}
    if name == "verdict":
        altered = {**signed, "verdict": "needs_approval"}
    elif name in ("policy_version", "approved_by"):
        altered = {**signed, name: (signed[name] or "") + text}
    assert [p.code for p in verdict_problems(altered, KEYS, "v2", NOW)] == ["bad_signature"]


def test_rotation_the_first_key_signs_and_every_listed_key_verifies():
    old = sign_verdict(verdict(), Keyring.parse(f"k1:{SECRET_A}"))
    rotated = Keyring.parse(f"k2:{SECRET_B},k1:{SECRET_A}")
    assert verdict_problems(old, rotated, "v2", NOW) == []
    assert sign_verdict(verdict(), rotated)["key_id"] == "k2"
    assert [p.code for p in verdict_problems(old, Keyring.parse(f"k2:{SECRET_B}"), "v2", NOW)] == ["unknown_key"]


def test_a_feedback_signature_never_passes_as_a_verdict_signature():
    signed = sign_verdict(verdict(), KEYS)
    as_feedback = sign_feedback({k: v for k, v in signed.items() if k not in ("key_id", "signature")}, KEYS)
    assert [p.code for p in verdict_problems({**signed, "signature": as_feedback["signature"]}, KEYS, "v2", NOW)] \
        == ["bad_signature"]


def test_feedback_signed_by_the_noc_verifies_and_nothing_else_does():
    record = {"target_id": "a-1", "kind": "approve_action", "operator": "alice", "ts_ms": NOW, "comment": None}
    signed = sign_feedback(record, f"noc:{SECRET_A}")
    wire = CODEC.decode_as("Feedback", CODEC.encode("Feedback", signed))
    assert feedback_authentic(wire, Keyring.parse(f"noc:{SECRET_A}")) is None
    assert feedback_authentic(CODEC.decode_as("Feedback", CODEC.encode("Feedback", record)),
                              Keyring.parse(f"noc:{SECRET_A}")) == "unsigned_verdict"
    assert feedback_authentic({**wire, "target_id": "a-2"}, Keyring.parse(f"noc:{SECRET_A}")) == "bad_signature"
    assert feedback_authentic(wire, Keyring()) == "unknown_key"
    with pytest.raises(SigningError, match="OPSLOOP_FEEDBACK_KEY"):
        sign_feedback(record, "")


@pytest.mark.parametrize("text", ["nocolon" + "x" * 40, ":" + "x" * 40, "k1:sh0rtSECRET", "k 1:" + "x" * 40,
                                  f"k1:{SECRET_A},k1:{SECRET_B}"])
def test_bad_key_settings_name_the_setting_and_never_echo_a_secret(text):
    with pytest.raises(SigningError) as err:
        Keyring.parse(text, "OPSLOOP_VERDICT_KEY")
    assert "OPSLOOP_VERDICT_KEY" in str(err.value)
    for secret in ("x" * 40, "sh0rtSECRET", SECRET_A, SECRET_B):
        assert secret not in str(err.value)


def test_secrets_stay_out_of_reprs_and_canonical_bytes():
    keys = Keyring.parse(f"k1:{SECRET_A}")
    settings_ = Settings(verdict_key=f"k1:{SECRET_A}", feedback_key=f"k2:{SECRET_B}")
    for text in (repr(keys), str(keys), repr(settings_), str(settings_)):
        assert SECRET_A not in text and SECRET_B not in text
    signed = sign_verdict(verdict(), keys)
    assert SECRET_A.encode() not in canonical(signed) and SECRET_A not in str(signed)
    assert SECRET_A.encode() not in CODEC.encode("ApprovedAction", signed)


# -- the guard's pure checks -----------------------------------------------------------------------------------

PENDING = action(kind="slurm_suspend", created_ms=NOW - 10_000, expires_ms=NOW + 600_000)


def fb(ts_ms: int = NOW - 5000) -> dict:
    return {"target_id": "a-1", "kind": "approve_action", "operator": "alice", "ts_ms": ts_ms}


@pytest.mark.parametrize("case, args, code", [
    ("forged", (fb(), PENDING, NOW + 300_000, True, False), "feedback_unauthentic"),
    ("early: the action does not exist yet", (fb(), None, None, False, True), "feedback_unknown_action"),
    ("replay after the answer", (fb(), None, None, True, True), "feedback_replay"),
    ("given before the action", (fb(NOW - 20_000), PENDING, NOW + 300_000, True, True), "feedback_before_action"),
    ("the request lapsed", (fb(), PENDING, NOW - 1, True, True), "feedback_late"),
    ("signed after the deadline", (fb(NOW + 400_000), PENDING, NOW + 300_000, True, True), "feedback_late"),
])
def test_feedback_the_guard_must_ignore(case, args, code):
    problem = feedback_problem(*args, now_ms=NOW)
    assert problem is not None and problem.code == code and code in FEEDBACK_CODES, case


def test_genuine_timely_feedback_answers():
    assert feedback_problem(fb(), PENDING, NOW + 300_000, True, True, now_ms=NOW) is None


POLICY = Policy(2, 600, PcsLimits(4000, 2500, 15, 80, 3600, 95),
                SlurmLimits(("batch",), ("inference",), 20, 256, 3600),
                {k: KindRule("auto") for k in ("slurm_hold", "slurm_release", "slurm_suspend", "slurm_resume")})
HOLD = action(action_id="hold-1", kind="slurm_hold", target="opsloop", proposer="peaks", setpoint_kw=None,
              params={"partitions": "batch"})


def release(**fields) -> dict:
    return action(**{"action_id": "rel-1", "kind": "slurm_release", "target": "opsloop", "setpoint_kw": None,
                     "proposer": "peaks", "params": {"partitions": "batch", "undo_of": "hold-1"}, **fields})


def test_a_release_of_the_proposers_own_approved_hold_is_approved():
    assert decide(release(), PlantState(approved={"hold-1": HOLD}), POLICY, NOW).verdict == "approved"


@pytest.mark.parametrize("case, rel, approved, code", [
    ("forged undo of another proposer's hold", release(proposer="mallory"), {"hold-1": HOLD}, "undo_not_owner"),
    ("another target", release(target="other"), {"hold-1": HOLD}, "undo_not_owner"),
    ("undo of nothing the guard approved", release(), {}, "undo_not_approved"),
    ("a resume cannot undo a hold", {**release(), "kind": "slurm_resume"}, {"hold-1": HOLD}, "undo_kind_mismatch"),
])
def test_a_forged_auto_mode_undo_is_rejected_with_its_reason(case, rel, approved, code):
    decision = decide(rel, PlantState(approved=approved), POLICY, NOW)
    assert decision.verdict == REJECTED and code in decision.reason_codes and code in REASON_CODES, case
    assert undo_problems(rel, approved)[0].code == code
