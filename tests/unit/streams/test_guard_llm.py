"""The guard agent and the LLM lever: one shift per backend while it holds, counted from the guard's own store
across a restart; the shipped policy asks an operator."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from opsloop.config.policy import KindRule, load_policy
from opsloop.config.settings import Settings
from opsloop.config.site import load_site
from opsloop.streams.guard import GuardProcessor

pytestmark = pytest.mark.unit
SHIPPED = load_policy(Settings().policy)
AUTO = replace(SHIPPED, rules={**SHIPPED.rules, "llm_shift": KindRule("auto")})


class Guard(GuardProcessor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, dict]] = []

    def emit(self, topic: str, record: dict) -> None:
        self.sent.append((topic, record))

    def verdict(self, action_id: str) -> dict:
        [record] = [r for t, r in self.sent if t == "actions.approved" and r["action"]["action_id"] == action_id]
        return record


def guard(tmp_path, policy) -> Guard:
    settings = Settings(data_dir=tmp_path, verdict_key="v1:" + "9" * 32)
    return Guard(settings, policy, load_site(settings.topology))


def shift(action_id: str, target: str = "llm", life_s: float = 600) -> dict:
    now = int(time.time() * 1000)
    return {"action_id": action_id, "kind": "llm_shift", "target": target, "site": "demo", "setpoint_kw": None,
            "shed_kw": 3.1, "job_ids": [], "params": {"shift_pct": "50"}, "reason": "peak", "reason_code": None,
            "expected_effect": "e", "expected_delta_kw": None, "created_ms": now, "expires_ms": now + int(life_s * 1000),
            "risk": "low", "proposer": "peaks"}


def test_a_second_shift_on_a_backend_waits_for_the_first_even_across_a_restart(tmp_path):
    first = guard(tmp_path, AUTO)
    first.on_proposed(shift("s1"))
    assert first.verdict("s1")["verdict"] == "approved"
    first.on_proposed(shift("s2", target="llm-eu"))
    assert first.verdict("s2")["verdict"] == "approved"  # another backend
    first.close()
    again = guard(tmp_path, AUTO)
    again.on_proposed(shift("s3"))
    assert again.verdict("s3")["reason_codes"] == ["llm_lever_busy"]
    again.close()


def test_the_shipped_policy_asks_an_operator_for_a_shift(tmp_path):
    g = guard(tmp_path, SHIPPED)
    g.on_proposed(shift("s1"))
    assert (g.verdict("s1")["verdict"], g.verdict("s1")["reason_codes"]) == ("needs_approval", ["needs_approval"])
    g.close()
