"""The guard and a sink without a broker: signed verdicts only, NOC-signed timely feedback only, once, and no
secret in a log line, an exception or a record."""

from __future__ import annotations

import json
import logging
import time

import pytest

from opsloop.config.policy import load_policy
from opsloop.config.settings import Settings
from opsloop.config.site import load_site
from opsloop.connectors.ledger import EXECUTED
from opsloop.models.records import action_result
from opsloop.models.signing import sign_feedback, sign_verdict
from opsloop.schemas.codec import Codec
from opsloop.streams.actuator import ActuatorSink
from opsloop.streams.guard import GuardProcessor

pytestmark = pytest.mark.unit
VERDICT_SECRET = "UNITVERDICTSECRET-" + "7" * 20
FEEDBACK_SECRET = "UNITFEEDBACKSECRET-" + "8" * 20
CODEC = Codec.default()
POLICY = load_policy(Settings().policy)


def settings(tmp_path, **changes) -> Settings:
    keys = {"verdict_key": f"v1:{VERDICT_SECRET}", "feedback_key": f"f1:{FEEDBACK_SECRET}"}
    return Settings(data_dir=tmp_path, **{**keys, **changes})


def action(action_id: str = "a-1", kind: str = "slurm_suspend", life_s: float = 600, **fields) -> dict:
    now = int(time.time() * 1000)
    record = {"action_id": action_id, "kind": kind, "target": "opsloop", "site": "demo", "setpoint_kw": None,
              "shed_kw": None, "job_ids": [], "params": {"partitions": "batch", "max_jobs": "2", "gpus": "2"},
              "reason": "r", "reason_code": None, "expected_effect": "e", "expected_delta_kw": None,
              "created_ms": now - 1000, "expires_ms": now + int(life_s * 1000), "risk": "low", "proposer": "peaks"}
    record.update(fields)
    return record


def feedback(action_id: str = "a-1", key: str | None = f"f1:{FEEDBACK_SECRET}", **fields) -> dict:
    record = {"target_id": action_id, "kind": "approve_action", "operator": "alice",
              "ts_ms": int(time.time() * 1000), "comment": None, **fields}
    record = record if key is None else sign_feedback(record, key)
    return CODEC.decode_as("Feedback", CODEC.encode("Feedback", record))


class Guard(GuardProcessor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, dict]] = []

    def emit(self, topic: str, record: dict) -> None:
        CODEC.encode(self.catalog[topic].record, record)  # it must be a valid record
        self.sent.append((topic, record))

    def verdicts(self, action_id: str) -> list[dict]:
        return [r for t, r in self.sent if t == "actions.approved" and r["action"]["action_id"] == action_id]


@pytest.fixture
def guard(tmp_path):
    g = Guard(settings(tmp_path), POLICY, load_site(Settings().topology))
    yield g
    g.close()


def test_every_verdict_the_guard_emits_is_signed_and_verifies(guard):
    from opsloop.models.signing import verdict_problems
    guard.on_proposed(action("a-1"))
    [record] = guard.verdicts("a-1")
    assert record["verdict"] == "needs_approval" and record["key_id"] == "v1"
    assert verdict_problems(record, guard.verdict_keys, POLICY.label, guard.now_ms()) == []


def test_the_guard_needs_a_verdict_key(tmp_path):
    with pytest.raises(ValueError, match="OPSLOOP_VERDICT_KEY"):
        GuardProcessor(Settings(data_dir=tmp_path), POLICY, load_site(Settings().topology))


def test_forged_feedback_does_not_approve(guard, caplog):
    guard.on_proposed(action("a-1"))
    for forged in (feedback(key=None), feedback(key="f1:" + "X" * 40), feedback(key="f9:" + "X" * 40)):
        guard.on_feedback(forged)
    assert [v["verdict"] for v in guard.verdicts("a-1")] == ["needs_approval"]
    assert guard.stats["feedback_ignored"] == 3 and "feedback_unauthentic" in caplog.text


def test_feedback_before_the_action_exists_is_not_kept(guard, caplog):
    guard.on_feedback(feedback("a-2"))  # early: the action is not proposed yet
    guard.on_proposed(action("a-2"))
    assert [v["verdict"] for v in guard.verdicts("a-2")] == ["needs_approval"]
    assert "feedback_unknown_action" in caplog.text


def test_one_answer_per_action_replays_are_ignored_and_logged(guard, caplog):
    guard.on_proposed(action("a-3"))
    answer = feedback("a-3")
    guard.on_feedback(answer)
    guard.on_feedback(answer)  # the same record again
    guard.on_feedback(feedback("a-3", kind="reject_action"))  # a second, different answer
    assert [(v["verdict"], v["approved_by"]) for v in guard.verdicts("a-3")] == [("needs_approval", None),
                                                                                ("approved", "alice")]
    assert guard.stats["feedback_ignored"] == 2 and caplog.text.count("feedback_replay") == 2


def test_feedback_after_the_request_lapsed_or_older_than_the_action_is_ignored(guard):
    guard.on_proposed(action("a-4"))
    guard.on_feedback(feedback("a-4", ts_ms=int(time.time() * 1000) - 3_600_000))  # signed before the proposal
    guard.store.run("UPDATE pending SET deadline_ms = ? WHERE action_id = ?", guard.now_ms() - 1, "a-4")
    guard.on_feedback(feedback("a-4"))  # the request has lapsed
    assert [v["verdict"] for v in guard.verdicts("a-4")] == ["needs_approval"]
    assert guard.stats["feedback_ignored"] == 2


def test_an_auto_mode_release_undoes_only_its_own_proposers_approved_hold(guard):
    hold = json.dumps(action("hold-1", "slurm_hold"))
    guard.store.run("INSERT INTO decided VALUES (?, ?, ?)", "hold-1", "approved", hold)
    guard.on_proposed(action("rel-bad", "slurm_release", proposer="mallory", params={"partitions": "batch",
                                                                                     "undo_of": "hold-1"}))
    guard.on_proposed(action("rel-none", "slurm_release", params={"partitions": "batch", "undo_of": "nope"}))
    guard.on_proposed(action("rel-ok", "slurm_release", params={"partitions": "batch", "undo_of": "hold-1"}))
    assert guard.verdicts("rel-bad")[0]["reason_codes"] == ["undo_not_owner"]
    assert guard.verdicts("rel-none")[0]["reason_codes"] == ["undo_not_approved"]
    assert guard.verdicts("rel-ok")[0]["verdict"] == "approved"


# -- a sink -------------------------------------------------------------------------------------------------------

class Msg:
    def __init__(self, value: bytes):
        self._v = value

    def value(self):
        return self._v


class Sink(ActuatorSink):
    name = "test-sink"
    kinds = ("pcs_discharge", "pcs_idle")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.executed, self.sent, self.dead_letters = [], [], []

    def execute(self, act):
        self.executed.append(act["action_id"])
        return EXECUTED, action_result(act, "executed", "done", "", self.name, self.now_ms()), None

    def emit(self, topic, record):
        CODEC.encode(self.catalog[topic].record, record)
        self.sent.append((topic, record))

    def dead_letter(self, msg, kind, reason):
        self.dead_letters.append((kind, reason))

    def flush(self):
        pass


@pytest.fixture
def sink(tmp_path):
    s = Sink(settings(tmp_path), POLICY)
    yield s
    s.close()


def pcs(action_id: str, life_s: float = 600) -> dict:
    return action(action_id, "pcs_discharge", life_s, target="ess-1", setpoint_kw=4000.0, params={})


def wire(record: dict) -> Msg:
    return Msg(CODEC.encode("ApprovedAction", record))


def verdict(act: dict, policy_version: str = POLICY.label) -> dict:
    return CODEC.decode_as("ApprovedAction", CODEC.encode("ApprovedAction", {
        "action": act, "verdict": "approved", "reasons": ["ok"], "reason_codes": [], "policy_version": policy_version,
        "decided_ms": act["created_ms"], "approved_by": None}))


def test_the_sink_executes_a_verdict_the_guard_signed(sink):
    sink.handle(wire(sign_verdict(verdict(pcs("ok")), f"v1:{VERDICT_SECRET}")))
    assert sink.executed == ["ok"] and sink.stats["refused"] == 0


@pytest.mark.parametrize("case, record, code", [
    ("the probed forgery: unsigned, policy v999", verdict(pcs("forged", life_s=3600), "v999"), "unsigned_verdict"),
    ("signed with a guessed key", sign_verdict(verdict(pcs("guessed")), "v1:" + "G" * 40), "bad_signature"),
    ("a genuine verdict of an old policy", sign_verdict(verdict(pcs("old"), "v1"), f"v1:{VERDICT_SECRET}"),
     "policy_mismatch"),
    ("a genuine verdict, expired", sign_verdict(verdict(pcs("late", life_s=-1)), f"v1:{VERDICT_SECRET}"), "expired"),
])
def test_the_sink_refuses_what_the_guard_did_not_sign_or_no_longer_holds(sink, caplog, case, record, code):
    caplog.set_level(logging.WARNING)
    sink.handle(wire(record))
    assert sink.executed == [] and sink.stats["refused"] == 1, case
    topics = {t: r for t, r in sink.sent}
    assert topics["actions.results"]["status"] == "rejected" and code in topics["actions.results"]["detail"]
    assert topics["alarms.raw"]["code"] == "ACTION_REFUSED" and topics["alarms.raw"]["severity"] == "major"
    assert sink.dead_letters[0][0] == "invalid" and code in caplog.text
    assert sink.ledger.get(record["action"]["action_id"]) is None  # the id is not claimed: the genuine one can run


def test_no_secret_in_logs_exceptions_or_records(tmp_path, caplog, sink, guard):
    caplog.set_level(logging.DEBUG)
    sink.handle(wire(verdict(pcs("forged"), "v999")))
    sink.handle(wire(sign_verdict(verdict(pcs("ok")), f"v1:{VERDICT_SECRET}")))
    guard.on_proposed(action("a-9"))
    guard.on_feedback(feedback("a-9", key=None))
    guard.on_feedback(feedback("a-9"))
    errors = []
    for bad in (f"v1:{VERDICT_SECRET[:10]}", f"v1:{VERDICT_SECRET},v1:{VERDICT_SECRET}"):
        try:
            Sink(settings(tmp_path / "x", verdict_key=bad), POLICY)
        except ValueError as exc:
            errors.append(str(exc) + repr(exc))
    assert len(errors) == 2
    encoded = [CODEC.encode(s.catalog[t].record, r) for s in (sink, guard) for t, r in s.sent]
    for secret in (VERDICT_SECRET, FEEDBACK_SECRET, VERDICT_SECRET[:10]):
        assert secret not in caplog.text
        assert not any(secret in e for e in errors)
        assert not any(secret.encode() in e for e in encoded)
        assert secret not in repr(sink.settings) and secret not in repr(guard.settings)


class FakeSlurm:
    name = "fake"

    def __init__(self):
        self.acted = []

    def check(self, command):
        pass

    def jobs(self):
        return []

    def act(self, command, job_id):
        self.acted.append((command, job_id))


def test_the_slurm_sink_undoes_early_only_for_the_same_proposer_and_target(tmp_path):
    from opsloop.connectors.slurm import SlurmError
    from opsloop.streams.slurm_sink import SlurmSink

    backend = FakeSlurm()
    sink = SlurmSink(settings(tmp_path), POLICY, backend=backend)
    try:
        hold = action("hold-1", "slurm_hold")
        sink.ledger.start(hold)
        sink.ledger.finish("hold-1", EXECUTED, action_result(hold, "executed", "held 12", "", "slurm-sink", 1),
                           [["slurm_release", "12"]])
        forged = action("rel-x", "slurm_release", proposer="mallory", params={"partitions": "batch",
                                                                              "undo_of": "hold-1"})
        with pytest.raises(SlurmError, match="another proposer or target"):
            sink.execute(forged)
        assert backend.acted == []
        state, record, _ = sink.execute(action("rel-1", "slurm_release", params={"partitions": "batch",
                                                                                 "undo_of": "hold-1"}))
        assert state == EXECUTED and backend.acted == [("release", "12")]
    finally:
        sink.close()
