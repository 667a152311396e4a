"""Helpers shared by the actuation tests: actions, approvals, a PCS simulator on a free port, a stoppable sink."""

from __future__ import annotations

import socket
import threading
import time

from opsloop.config.policy import load_policy
from opsloop.config.settings import Settings
from opsloop.connectors.kafka import producer, send, wait_delivered
from opsloop.models.signing import sign_feedback, sign_verdict
from opsloop.schemas.codec import Codec

NOW_MS = int(time.time() * 1000)  # wall time: sinks and the guard compare expiries with it
# The test deployment's keys (kafka_settings carries them); secrets that must never show in a log or a record:
TEST_VERDICT_SECRET = "TESTVERDICTSECRET-0b1c2d3e4f5a6b7c8d9e"
TEST_FEEDBACK_SECRET = "TESTFEEDBACKSECRET-9e8d7c6b5a4f3e2d1c0b"
TEST_VERDICT_KEY = f"test-v1:{TEST_VERDICT_SECRET}"
TEST_FEEDBACK_KEY = f"test-f1:{TEST_FEEDBACK_SECRET}"
POLICY_LABEL = load_policy(Settings().policy).label


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def action(action_id: str, kind: str, *, target: str = "ess-1", setpoint_kw: float | None = None,
           life_s: float = 600, partitions: str = "", shed_kw: float | None = None, job_ids=(), **params) -> dict:
    now = int(time.time() * 1000)
    return {"action_id": action_id, "kind": kind, "target": target, "site": "demo", "setpoint_kw": setpoint_kw,
            "shed_kw": shed_kw, "job_ids": list(job_ids),
            "params": {**({"partitions": partitions} if partitions else {}), **{k: str(v) for k, v in params.items()}},
            "reason": "test", "expected_effect": "test", "expected_delta_kw": None, "created_ms": now,
            "expires_ms": now + int(life_s * 1000), "risk": "low", "proposer": "test"}


def approved(act: dict, verdict: str = "approved", key: str | None = TEST_VERDICT_KEY,
             policy_version: str = POLICY_LABEL) -> dict:
    """A verdict on ``act`` as the guard writes it, signed with ``key`` (None: unsigned)."""
    codec = Codec.default()
    record = codec.decode_as("ApprovedAction", codec.encode("ApprovedAction", {
        "action": act, "verdict": verdict, "reasons": ["test"], "policy_version": policy_version,
        "decided_ms": act["created_ms"], "approved_by": None}))
    return record if key is None else sign_verdict(record, key)


def feedback(action_id: str, kind: str = "approve_action", operator: str = "alice", ts_ms: int | None = None,
             key: str | None = TEST_FEEDBACK_KEY) -> dict:
    """An operator's answer as the NOC writes it, signed with ``key`` (None: unsigned, as a forger would)."""
    record = {"target_id": action_id, "kind": kind, "operator": operator,
              "ts_ms": int(time.time() * 1000) if ts_ms is None else ts_ms, "comment": None}
    return record if key is None else sign_feedback(record, key)


def publish(settings, topic: str, record_name: str, records: list[dict], key=lambda r: b"k") -> None:
    codec, prod = Codec.default(), producer(settings)
    for record in records:
        send(prod, settings.topic(topic), key(record), codec.encode(record_name, record))
    wait_delivered(prod)


def results(settings, read_topic) -> list[dict]:
    codec = Codec.default()
    return [codec.decode_as("ActionResult", m.value()) for m in read_topic(settings, "actions.results")]


def watch(sink) -> list[dict]:
    """The results ``sink`` publishes, collected as it goes."""
    seen: list[dict] = []
    sink.on_result = seen.append
    return seen


class Running:
    """Runs a processor's ``run`` in a thread until ``until()`` holds (checked on each result) or a safety net."""

    def __init__(self, processor, safety_net_s: float = 120.0):
        self.processor, self.stop = processor, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None
        self.stats: dict = {}
        self.timer = threading.Timer(safety_net_s, self.stop.set)

    def _run(self) -> None:
        try:
            self.stats = self.processor.run(self.stop)
        except BaseException as exc:
            self.error = exc

    def __enter__(self):
        self.timer.start()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)
        self.timer.cancel()
        if self.error is not None:
            raise self.error
