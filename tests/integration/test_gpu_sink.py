"""The GPU sink on a host without an NVIDIA driver: an approved clock lock or power limit fails with the reason code
and a sentence, raises an alarm and leaves nothing to restore; another partition's action is left to its nodes."""

from __future__ import annotations

import ctypes.util
import time

import pytest

from actuation import Running, action, approved, publish, watch
from opsloop.config.policy import load_policy
from opsloop.models.guard import NEEDS_APPROVAL, PlantState, decide
from opsloop.streams.gpu_sink import GpuSink

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(ctypes.util.find_library("nvidia-ml")), reason="NVML is present here")]


def wait_for(condition, what: str, safety_net_s: float = 60.0) -> None:
    deadline = time.monotonic() + safety_net_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def test_without_nvml_gpu_actions_fail_with_their_reason_and_change_nothing(kafka_settings, read_topic):
    policy = load_policy(kafka_settings.policy)
    lock = action("lock-1", "gpu_clock_lock", target="opsloop", partition="batch", sm_mhz=1200, life_s=600)
    limit = action("limit-1", "gpu_power_limit", target="opsloop", partition="batch", watts=450, life_s=600)
    elsewhere = action("limit-2", "gpu_power_limit", target="opsloop", partition="train-b", watts=450, life_s=600)
    for act in (lock, limit):  # within the shipped policy's gpu section; an operator decides
        assert decide(act, PlantState(), policy, act["created_ms"]).verdict == NEEDS_APPROVAL
    sink = GpuSink(kafka_settings, policy, node="gpu-a1", partitions=["batch"])
    seen = watch(sink)
    publish(kafka_settings, "actions.approved", "ApprovedAction", [approved(a) for a in (elsewhere, lock, limit)])
    with Running(sink):
        wait_for(lambda: len(seen) == 2, "two results")
    assert [(r["action_id"], r["status"], r["observed_effect"]) for r in seen] == [
        ("lock-1", "failed", "nothing changed"), ("limit-1", "failed", "nothing changed")]
    assert all(r["detail"].startswith("nvml_unavailable: NVML is not available on this host") for r in seen)
    assert sink.stats["ignored"] == 1  # train-b's action: not this node's GPUs
    from opsloop.connectors.ledger import Ledger
    ledger = Ledger(kafka_settings.data_dir / "ledger" / "gpu-sink-gpu-a1.sqlite")
    assert ledger.get("limit-2") is None and ledger.get("lock-1").undo is None  # nothing to restore
    assert not ledger.due_for_undo(lock["expires_ms"] + 1)
    alarms = [m for m in read_topic(kafka_settings, "alarms.raw")]
    assert len(alarms) == 2
