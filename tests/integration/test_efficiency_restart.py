"""The efficiency agent keeps what it learnt across a restart and a SIGKILL: a day of twin telemetry, then a
cooling fault. Its advice equals one uninterrupted run's; without the checkpointed plant the restarted agent
would need another day of warm-up before judging drift, and would repeat advice it gave before."""

from __future__ import annotations

import threading

import pytest

from actuation import publish  # the integration tier's helpers
from faults import sigkill_when, start_worker

from opsloop.config.policy import load_policy
from opsloop.config.site import load_site
from opsloop.models.twin import SiteTwin
from opsloop.ops.twin import DEFAULT_DATA, read_curve
from opsloop.schemas.codec import Codec
from opsloop.streams.efficiency import EfficiencyProcessor

pytestmark = pytest.mark.integration
CODEC = Codec.default()
STEPS, FAULT_FROM, STEP_MS = 330, 305, 300_000  # 5-minute samples: the advisor's warm-up is 288 of them
FOULED = 1.3  # from FAULT_FROM on the plant draws 30 % more cooling for the same load (fouled coils)


def twin_points(settings) -> list[list[dict]]:
    """The points of each time, the fault included."""
    curve = read_curve(DEFAULT_DATA)
    twin = SiteTwin(load_site(settings.topology), curve)
    steps = []
    for step in range(STEPS):
        points = twin.points(twin.measure(curve[0][0] + step * STEP_MS))
        if step >= FAULT_FROM:
            extra = next(p["value"] for p in points if p["metric"] == "cooling_kw") * (FOULED - 1)
            points = [{**p, "value": p["value"] + extra} if p["metric"] in ("cooling_kw", "facility_kw") else p
                      for p in points]
        steps.append(points)
    return steps


def uninterrupted(settings, points: list[dict]) -> set:
    site = load_site(settings.topology)
    processor = EfficiencyProcessor(settings, site, load_policy(settings.policy).cooling)
    return {(r["reason_code"], r["ts_ms"]) for p in points for r in processor.on_point(p)}


def advice(settings, read_topic) -> list[tuple]:
    return [(a["reason_code"], a["ts_ms"]) for a in (CODEC.decode_as("EfficiencyAdvice", m.value())
                                                     for m in read_topic(settings, "advice.efficiency"))]


def run_to_idle(settings) -> dict:
    site = load_site(settings.topology)
    return EfficiencyProcessor(settings, site, load_policy(settings.policy).cooling).run(threading.Event(),
                                                                                      exit_when_idle=True)


def by_site(p: dict) -> bytes:
    return p["site"].encode()


def test_a_restart_judges_drift_at_once_from_the_checkpointed_model(kafka_settings, read_topic):
    steps = twin_points(kafka_settings)
    expected = uninterrupted(kafka_settings, [p for s in steps for p in s])
    fault_ms = steps[FAULT_FROM][0]["ts_ms"]
    assert [ts >= fault_ms for code, ts in expected if code == "cooling_drift"] == [True]  # the fault, seen once

    publish(kafka_settings, "telemetry.raw", "TelemetryPoint", [p for s in steps[:FAULT_FROM - 10] for p in s],
            key=by_site)
    first = run_to_idle(kafka_settings)
    assert first["samples"] == FAULT_FROM - 11 and first["checkpoints"] >= 1
    publish(kafka_settings, "telemetry.raw", "TelemetryPoint", [p for s in steps[FAULT_FROM - 10:] for p in s],
            key=by_site)
    second = run_to_idle(kafka_settings)  # a new process: what it knows comes from the changelog

    got = advice(kafka_settings, read_topic)
    assert sorted(got) == sorted(expected)  # drift judged at once, nothing advised twice
    assert second["samples"] == STEPS - FAULT_FROM + 10 and second["dead_letters"] == 0  # the open sample kept


def test_sigkill_then_restart_gives_the_advice_of_an_uninterrupted_run(kafka_settings, read_topic, tmp_path):
    steps = twin_points(kafka_settings)
    points = [p for s in steps for p in s]
    expected = uninterrupted(kafka_settings, points)
    half = sum(len(s) for s in steps[:STEPS // 2])  # the kill lands in the first half (or just after it, checkpointed)
    publish(kafka_settings, "telemetry.raw", "TelemetryPoint", points[:half], key=by_site)

    log = tmp_path / "worker.log"
    proc = start_worker(kafka_settings, "efficiency", log, OPSLOOP_BATCH_SIZE="100",
                        OPSLOOP_ANOMALY_CHECKPOINT_S="0.05", OPSLOOP_IDLE_CLOSE_S="3600")
    # some samples in, perhaps a checkpoint behind them
    sigkill_when(proc, lambda: advice(kafka_settings, read_topic), "advice", log)
    assert advice(kafka_settings, read_topic)
    publish(kafka_settings, "telemetry.raw", "TelemetryPoint", points[half:], key=by_site)

    again = run_to_idle(kafka_settings)
    assert again["dead_letters"] == 0
    assert set(advice(kafka_settings, read_topic)) == expected  # none lost, none invented, none re-timed
    assert again["points"] + again["replayed_skipped"] < len(points)  # the restart resumed, not started over
