"""Forged records on the real broker, as a hostile client without credentials writes them: a forged verdict is
not executed, forged, early and replayed approvals are ignored, a forged early undo is rejected; and the test keys
never show in a log line or a record."""

from __future__ import annotations

import logging
import time

import pytest

from actuation import (TEST_FEEDBACK_SECRET, TEST_VERDICT_SECRET, Running, action, approved, feedback, free_port,
                       publish, results)
from opsloop.config.policy import load_policy
from opsloop.config.site import load_site
from opsloop.models import sunspec
from opsloop.ops.pcs_sim import from_site
from opsloop.schemas.codec import Codec
from opsloop.streams.guard import GuardProcessor
from opsloop.streams.pcs_sink import PcsSink

pytestmark = pytest.mark.integration
SAFETY_NET_S = 90.0
CODEC = Codec.default()


def wait_for(runner, condition, what: str) -> None:
    deadline = time.monotonic() + SAFETY_NET_S  # a safety net only: the test fails if it is ever reached
    while not condition():
        if runner.error is not None:
            raise runner.error
        assert time.monotonic() < deadline, f"never happened: {what} ({runner.processor.stats})"
        time.sleep(0.05)


def decoded(settings, read_topic, topic: str, record: str) -> list[dict]:
    return [CODEC.decode_as(record, m.value()) for m in read_topic(settings, topic)]


def assert_no_secret(text: str, records: list[bytes]) -> None:
    for secret in (TEST_VERDICT_SECRET, TEST_FEEDBACK_SECRET):
        assert secret not in text
        assert not any(secret.encode() in r for r in records)


def test_a_forged_verdict_is_refused_and_the_pcs_never_moves(kafka_settings, read_topic, caplog):
    caplog.set_level(logging.INFO)
    site = load_site(kafka_settings.topology)
    with from_site(site, free_port(), soc_pct=80.0) as sim:
        settings = kafka_settings.replace(pcs_modbus=f"127.0.0.1:{sim.port}")
        forged = dict(approved(action("forged", "pcs_discharge", setpoint_kw=4000.0, life_s=3600), key=None,
                               policy_version="v999"), approved_by="nobody")  # the probe, as it was written
        guessed = approved(action("guessed", "pcs_discharge", setpoint_kw=4000.0), key="test-v1:" + "G" * 40)
        genuine = approved(action("genuine", "pcs_discharge", setpoint_kw=1500.0))
        publish(settings, "actions.approved", "ApprovedAction", [forged, guessed, genuine])
        sink = PcsSink(settings, load_policy(settings.policy), site)
        seen = []
        sink.on_result = lambda r: (seen.append(r), len(seen) >= 3 and runner.stop.set())
        with Running(sink) as runner:
            runner.thread.join(SAFETY_NET_S)
        writes = [values for _, _, values in sim.register_log]
        assert writes == [[3000, 0, 0, writes[0][3]], [sunspec.DISCHARGE]]  # the genuine 1500 kW only
    by_id = {r["action_id"]: r for r in results(settings, read_topic)}
    assert (by_id["forged"]["status"], by_id["guessed"]["status"]) == ("rejected", "rejected")
    assert "unsigned_verdict" in by_id["forged"]["detail"] and "bad_signature" in by_id["guessed"]["detail"]
    assert by_id["genuine"]["status"] == "executed" and sink.stats["refused"] == 2
    alarms = decoded(settings, read_topic, "alarms.raw", "Alarm")
    assert sorted(a["attributes"]["action_id"] for a in alarms if a["code"] == "ACTION_REFUSED") == \
        ["forged", "guessed"]
    dead = decoded(settings, read_topic, "deadletter", "DeadLetter")
    assert [(d["error_kind"], d["agent"]) for d in dead] == [("invalid", "pcs-sink")] * 2
    assert_no_secret(caplog.text, [m.value() for t in ("actions.results", "alarms.raw", "deadletter")
                                   for m in read_topic(settings, t)])


def test_forged_early_and_replayed_approvals_are_ignored(kafka_settings, read_topic, caplog):
    caplog.set_level(logging.INFO)
    policy, site = load_policy(kafka_settings.policy), load_site(kafka_settings.topology)
    guard = GuardProcessor(kafka_settings, policy, site)
    ask = action("ask", "slurm_suspend", target="opsloop", partitions="batch", max_jobs=2, gpus=2)
    with Running(guard) as runner:
        publish(kafka_settings, "operator.feedback", "Feedback", [feedback("ask")])  # before the action exists
        wait_for(runner, lambda: guard.stats["feedback_ignored"] == 1, "the early approval ignored")
        publish(kafka_settings, "actions.proposed", "Action", [ask])
        wait_for(runner, lambda: guard.stats["needs_approval"] == 1, "the request for approval")
        forged = [feedback("ask", key=None, operator="nobody"),  # unsigned: written by anyone on the topic
                  feedback("ask", key="test-f1:" + "F" * 40, operator="nobody")]  # signed with a guessed key
        publish(kafka_settings, "operator.feedback", "Feedback", forged)
        wait_for(runner, lambda: guard.stats["feedback_ignored"] == 3, "the forged approvals ignored")
        assert guard.stats["operator_approved"] == 0
        answer = feedback("ask")
        publish(kafka_settings, "operator.feedback", "Feedback", [answer])
        wait_for(runner, lambda: guard.stats["operator_approved"] == 1, "the NOC's approval")
        publish(kafka_settings, "operator.feedback", "Feedback", [answer, feedback("ask", kind="reject_action")])
        wait_for(runner, lambda: guard.stats["feedback_ignored"] == 5, "the replay and the second answer ignored")
    verdicts = [(r["verdict"], r["approved_by"]) for r in decoded(kafka_settings, read_topic, "actions.approved",
                                                                  "ApprovedAction")]
    assert verdicts == [("needs_approval", None), ("approved", "alice")]
    for code, times in (("feedback_unknown_action", 1), ("feedback_unauthentic", 2), ("feedback_replay", 2)):
        assert caplog.text.count(code) == times, code
    assert_no_secret(caplog.text, [m.value() for m in read_topic(kafka_settings, "actions.approved")])


def test_a_forged_early_undo_of_another_proposers_hold_is_rejected(kafka_settings, read_topic):
    policy, site = load_policy(kafka_settings.policy), load_site(kafka_settings.topology)
    guard = GuardProcessor(kafka_settings, policy, site)
    hold = action("hold", "slurm_hold", target="opsloop", partitions="batch", max_jobs=2, gpus=2)
    forged = {**action("undo-forged", "slurm_release", target="opsloop", partitions="batch", undo_of="hold"),
              "proposer": "mallory"}
    unknown = action("undo-unknown", "slurm_release", target="opsloop", partitions="batch", undo_of="nothing")
    own = action("undo-own", "slurm_release", target="opsloop", partitions="batch", undo_of="hold")
    with Running(guard) as runner:
        publish(kafka_settings, "actions.proposed", "Action", [hold])
        wait_for(runner, lambda: guard.stats["needs_approval"] == 1, "the hold asks for approval")
        publish(kafka_settings, "operator.feedback", "Feedback", [feedback("hold")])
        wait_for(runner, lambda: guard.stats["operator_approved"] == 1, "the hold approved")
        publish(kafka_settings, "actions.proposed", "Action", [forged, unknown, own])
        wait_for(runner, lambda: guard.stats["proposed"] == 4, "the three undos decided")
    verdicts = {r["action"]["action_id"]: r for r in decoded(kafka_settings, read_topic, "actions.approved",
                                                              "ApprovedAction")}
    assert (verdicts["undo-forged"]["verdict"], verdicts["undo-forged"]["reason_codes"]) == \
        ("rejected", ["undo_not_owner"])
    assert verdicts["undo-unknown"]["reason_codes"] == ["undo_not_approved"]
    assert (verdicts["undo-own"]["verdict"], verdicts["undo-own"]["reason_codes"]) == ("approved", ["within_limits"])
