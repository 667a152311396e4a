"""The guard agent on the real broker: verdicts, rejections with reasons, approvals, lapses, verification, revert."""

from __future__ import annotations

import time

import pytest

from actuation import Running, action, feedback, publish
from opsloop.connectors.kafka import producer, wait_delivered
from opsloop.config.policy import load_policy
from opsloop.config.site import load_site
from opsloop.schemas.codec import Codec
from opsloop.streams.guard import GuardProcessor, GuardStore

pytestmark = pytest.mark.integration
SAFETY_NET_S = 90.0


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + SAFETY_NET_S  # a safety net only: the test fails if it is ever reached
    while not condition():
        runner = getattr(wait_for, "runner", None)
        if runner is not None and runner.error is not None:
            raise runner.error
        assert time.monotonic() < deadline, f"never happened: {what} ({runner and runner.processor.stats})"
        time.sleep(0.05)


def snapshot(ess_kw: float, start_ms: int) -> dict:
    return {"site": "demo", "window_start_ms": start_ms, "window_end_ms": start_ms + 5000, "grid_kw": 30000.0,
            "it_kw": 25000.0, "facility_kw": 30000.0, "ess_soc_pct": 80.0, "ess_soh_pct": 97.0, "ess_kw": ess_kw,
            "gpu_kw": None, "pue": 1.2, "price_per_mwh": None, "samples": 3, "devices": 3}


def decoded(settings, read_topic, topic: str, record: str) -> list[dict]:
    codec = Codec.default()
    return [codec.decode_as(record, m.value()) for m in read_topic(settings, topic)]


def test_guard_decides_asks_verifies_and_reverts(kafka_settings, read_topic):
    settings = kafka_settings.replace(verify_window_s=30.0)
    shift_s = [0.0]  # the guard's clock runs ahead on demand: lapses and verification deadlines without waiting
    guard = GuardProcessor(settings, load_policy(settings.policy), load_site(settings.topology),
                           clock=lambda: time.time() + shift_s[0])
    now = int(time.time() * 1000)
    publish(settings, "telemetry.site", "SiteSnapshot", [snapshot(0.0, now - 5000)])
    with Running(guard) as runner:
        wait_for.runner = runner
        wait_for(lambda: "demo" in guard.ess, "the guard learns the ESS state")
        proposals = [
            action("ok", "pcs_discharge", setpoint_kw=1500.0),
            action("too-big", "pcs_discharge", setpoint_kw=4500.0),
            action("ask", "slurm_suspend", target="opsloop", partitions="batch", max_jobs=4, gpus=8),
            action("lapse", "slurm_hold", target="opsloop", partitions="batch", life_s=600),
            action("protected", "slurm_suspend", target="opsloop", partitions="inference"),
            action("unverified", "pcs_discharge", setpoint_kw=1200.0),
        ]
        prod = producer(settings)
        prod.produce(settings.topic("actions.proposed"), key=b"k", value=b"\xc3\x01 not an action")
        wait_delivered(prod)
        del prod
        publish(settings, "actions.proposed", "Action", proposals)
        wait_for(lambda: guard.stats["proposed"] == 6, "six decisions")
        assert guard.stats["needs_approval"] == 2
        publish(settings, "operator.feedback", "Feedback", [feedback("ask")])
        wait_for(lambda: guard.stats["operator_approved"] == 1, "the operator's approval")
        shift_s[0] = 601.0  # past the unanswered request's expiry
        wait_for(lambda: guard.stats["lapsed"] == 1, "the unanswered request lapses")
        executed_ms = guard.now_ms()
        publish(settings, "actions.results", "ActionResult", [
            {"action_id": aid, "target": "ess-1", "status": "executed", "ts_ms": executed_ms, "observed_effect": "",
             "observed_delta_kw": None, "detail": "", "executor": "pcs-sink"} for aid in ("ok", "unverified")])
        wait_for(lambda: guard.store.rows("SELECT count(*) FROM verifying")[0][0] == 2, "two verifications open")
        publish(settings, "telemetry.site", "SiteSnapshot", [snapshot(1500.0, executed_ms)])
        wait_for(lambda: guard.stats["verified"] == 1, "the discharge is seen in telemetry")
        shift_s[0] += 31.0  # past the verification window: the other one never showed
        wait_for(lambda: guard.stats["verify_failed"] == 1, "the unverified one fails")

    verdicts = {}
    for record in decoded(settings, read_topic, "actions.approved", "ApprovedAction"):
        verdicts.setdefault(record["action"]["action_id"], []).append(record)
    assert [v["verdict"] for v in verdicts["ok"]] == ["approved"]
    assert [v["verdict"] for v in verdicts["too-big"]] == ["rejected"]
    assert [(v["verdict"], v["approved_by"]) for v in verdicts["ask"]] == [("needs_approval", None),
                                                                          ("approved", "alice")]
    assert [v["verdict"] for v in verdicts["protected"]] == ["rejected"]
    assert verdicts["unverified:revert"][0]["action"]["kind"] == "pcs_idle"
    assert verdicts["unverified:revert"][0]["verdict"] == "approved"
    codes = {aid: [v["reason_codes"] for v in vs] for aid, vs in verdicts.items()}  # one code per reason, on the wire
    assert codes["ok"] == [["within_limits"]] and codes["protected"] == [["protected_partition"]]
    assert codes["ask"] == [["needs_approval"], ["operator_approved"]] and "over_power_limit" in codes["too-big"][0]
    assert codes["unverified:revert"] == [["revert_failed_verification"]]
    assert verdicts["unverified:revert"][0]["action"]["reason_code"] == "revert_failed_verification"
    assert all(len(v["reason_codes"]) == len(v["reasons"]) for vs in verdicts.values() for v in vs)

    outcomes = {}
    for r in decoded(settings, read_topic, "actions.results", "ActionResult"):
        if r["executor"] == "guard":
            outcomes.setdefault(r["action_id"], []).append(r)
    assert "exceeds the policy limit of 4000 kW" in outcomes["too-big"][0]["detail"]
    assert "protected" in outcomes["protected"][0]["detail"]
    assert outcomes["lapse"][0]["status"] == "rejected" and "lapsed" in outcomes["lapse"][0]["detail"]
    assert [r["status"] for r in outcomes["ok"]] == ["verified"]
    assert [r["status"] for r in outcomes["unverified"]] == ["failed", "reverted"]
    [alarm] = decoded(settings, read_topic, "alarms.raw", "Alarm")
    [dead] = decoded(settings, read_topic, "deadletter", "DeadLetter")
    assert (dead["value"], dead["error_kind"], dead["agent"]) == (b"\xc3\x01 not an action", "decode", "guard")
    assert alarm["code"] == "ACTION_VERIFY_FAILED" and alarm["attributes"]["action_id"] == "unverified"


def test_the_spent_slurm_budget_survives_a_restart_and_ages_out(kafka_settings, read_topic):
    shift_s = [0.0]  # the guard's clock jumps past the budget window on demand
    policy = load_policy(kafka_settings.policy)
    assert (policy.slurm.max_jobs_per_event, policy.slurm.budget_window_s) == (20, 3600)

    site = load_site(kafka_settings.topology)

    def guard() -> GuardProcessor:
        return GuardProcessor(kafka_settings, policy, site, clock=lambda: time.time() + shift_s[0])

    def suspend(action_id: str, max_jobs: int, life_s: float = 600) -> dict:
        return action(action_id, "slurm_suspend", target="opsloop", partitions="batch", max_jobs=max_jobs, gpus=2,
                      life_s=life_s)

    first = guard()
    with Running(first) as runner:
        wait_for.runner = runner
        publish(kafka_settings, "actions.proposed", "Action", [suspend("big", 15)])
        wait_for(lambda: first.stats["needs_approval"] == 1, "the request for approval")
        publish(kafka_settings, "operator.feedback", "Feedback", [feedback("big")])
        wait_for(lambda: first.stats["operator_approved"] == 1, "the operator's approval")

    second = guard()  # a restart: a new processor on the same SQLite file and consumer group
    [spend] = second.state("demo").slurm_spent
    assert (spend.action_id, spend.site, spend.jobs) == ("big", "demo", 15)
    with Running(second) as runner:
        wait_for.runner = runner
        publish(kafka_settings, "actions.proposed", "Action", [suspend("more", 8)])
        wait_for(lambda: second.stats["rejected"] == 1, "the over-budget action rejected")
        shift_s[0] = 3601.0  # the approval of "big" is now older than the window
        publish(kafka_settings, "actions.proposed", "Action", [suspend("later", 8, life_s=3601 + 600)])
        wait_for(lambda: second.stats["needs_approval"] == 1, "the same action, a window later, goes to the operator")
    assert GuardStore(kafka_settings.data_dir / "guard.sqlite").rows("SELECT * FROM slurm_spent") == []  # pruned

    verdicts = {r["action"]["action_id"]: r for r in decoded(kafka_settings, read_topic, "actions.approved",
                                                              "ApprovedAction")}
    assert verdicts["big"]["verdict"] == "approved" and verdicts["later"]["verdict"] == "needs_approval"
    assert verdicts["more"]["verdict"] == "rejected" and verdicts["more"]["reason_codes"] == ["over_budget"]
    assert verdicts["more"]["reasons"] == ["affects up to 8 jobs; with the 15 approved in the last 3600 s that is 23, "
                                           "more than the policy's 20 per 3600 s"]
