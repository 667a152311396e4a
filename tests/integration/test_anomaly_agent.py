"""The anomaly agent on the real broker: raise and clear, dead letters, detector state across a restart."""

from __future__ import annotations

import random
import threading
import time

import pytest
from telemetry import publish_points  # the integration tier's helpers

from opsloop.schemas.codec import Codec
from opsloop.streams.anomaly import AnomalyProcessor

pytestmark = pytest.mark.integration

CODEC = Codec.default()


def point(i: int, value: float, device: str = "pdu-a1") -> dict:
    return {"ts_ms": 1_700_000_000_000 + i * 60_000, "site": "demo", "device": device, "device_type": "pdu",
            "metric": "it_kw", "value": value, "unit": "kW", "source": "test"}


def publish(settings, points, raw: list[bytes] = ()) -> None:
    publish_points(settings, points, raw, b"pdu-a1")


def run_until_idle(settings) -> dict:
    return AnomalyProcessor(settings).run(threading.Event(), exit_when_idle=True)


def alarms(settings, read_topic) -> list[dict]:
    return sorted((CODEC.decode_as("Alarm", m.value()) for m in read_topic(settings, "alarms.raw")),
                  key=lambda a: a["ts_ms"])


def test_spike_raises_then_clears_and_bad_input_is_dead_lettered(kafka_settings, read_topic):
    rng = random.Random(7)
    values = [200 + rng.gauss(0, 4) for _ in range(600)]
    values[500] = 320.0
    publish(kafka_settings, [point(i, v) for i, v in enumerate(values)] +
            [point(600, float("nan"))], raw=[b"\x00garbage"])

    stats = run_until_idle(kafka_settings)
    assert stats["points"] == 600 and stats["dead_letters"] == 2

    got = alarms(kafka_settings, read_topic)
    assert [a["state"] for a in got] == ["raise", "clear"]
    raised = got[0]
    assert raised["source"] == "opsloop.anomaly" and raised["code"] == "anomaly.it_kw"
    assert raised["device"] == "pdu-a1" and raised["ts_ms"] == point(500, 0)["ts_ms"]
    reasons = [CODEC.decode_as("DeadLetter", m.value())["error_kind"] for m in read_topic(kafka_settings, "deadletter")]
    assert sorted(reasons) == ["decode", "invalid"]


def test_restart_restores_detectors_and_learns_nothing_twice(kafka_settings, read_topic):
    rng = random.Random(8)
    values = [200 + rng.gauss(0, 4) for _ in range(800)]
    values[700] = 320.0
    publish(kafka_settings, [point(i, v) for i, v in enumerate(values[:400])])
    first = run_until_idle(kafka_settings)
    assert first["points"] == 400 and first["checkpoints"] >= 1

    publish(kafka_settings, [point(i, v) for i, v in enumerate(values[400:], start=400)])
    second = run_until_idle(kafka_settings)
    assert second["points"] == 400  # only the new points: the committed ones are not read again

    # One uninterrupted detector over the same points raises at the same point.
    from opsloop.models.anomaly import EarlyWarning
    ew = EarlyWarning()
    expected = [(point(i, v)["ts_ms"], t.state) for i, v in enumerate(values) if (t := ew.update(v, point(i, v)["ts_ms"]))]
    assert [(a["ts_ms"], a["state"]) for a in alarms(kafka_settings, read_topic)] == expected
    assert expected[0] == (point(700, 0)["ts_ms"], "raise")


def test_a_detector_checkpointed_under_another_configuration_restarts_with_the_current_one(kafka_settings, read_topic):
    from opsloop.models.anomaly import EarlyWarning

    rng = random.Random(9)
    values = [200 + rng.gauss(0, 4) for _ in range(800)]
    values[750] = 320.0
    publish(kafka_settings, [point(i, v) for i, v in enumerate(values[:400])])
    silent = AnomalyProcessor(kafka_settings, new_warning=lambda: EarlyWarning(raise_at=2.0))  # never raises
    assert silent.run(threading.Event(), exit_when_idle=True)["checkpoints"] >= 1

    publish(kafka_settings, [point(i, v) for i, v in enumerate(values[400:], start=400)])
    run_until_idle(kafka_settings)  # the defaults: the old detector is not restored, a fresh one learns from 400
    ew = EarlyWarning()
    expected = [(point(i, v)["ts_ms"], t.state) for i, v in enumerate(values[400:], start=400)
                if (t := ew.update(v, point(i, v)["ts_ms"]))]
    assert expected[0] == (point(750, 0)["ts_ms"], "raise")
    assert [(a["ts_ms"], a["state"]) for a in alarms(kafka_settings, read_topic)] == expected


def test_a_change_an_approved_battery_action_explains_raises_nothing_and_a_forged_approval_explains_nothing(
        kafka_settings, read_topic):
    from actuation import action, approved, publish as publish_records

    rng = random.Random(11)
    values = [500 + rng.gauss(0, 5) for _ in range(600)]
    for i in range(500, 540):
        values[i] = -2500.0  # the battery discharges as the guard let it
    ess = [{**point(i, v, "ess-1"), "device_type": "ess", "metric": "ess_kw"} for i, v in enumerate(values)]
    held = action("a-1", "pcs_discharge", target="ess-1", life_s=600)
    held.update(created_ms=ess[499]["ts_ms"], expires_ms=ess[540]["ts_ms"])
    forged = approved({**held, "action_id": "a-2", "target": "grid-meter-1"}, key=None)  # unsigned: not the guard's
    publish_records(kafka_settings, "actions.approved", "ApprovedAction", [approved(held), forged])
    run_until_idle(kafka_settings)  # read the hints once: the next run must read them again (nothing kept)
    publish(kafka_settings, ess + [{**p, "device": "grid-meter-1", "device_type": "grid_meter", "metric": "grid_kw",
                                    "value": 30_000 - p["value"]} for p in ess[:450]])

    stats = run_until_idle(kafka_settings)
    assert stats["explained"] >= 2 and stats["hints_refused"] == 1  # the raise and its clear, on ess-1
    assert alarms(kafka_settings, read_topic) == []

    # the same change with no action in force is raised
    other = [{**p, "device": "ess-2", "ts_ms": p["ts_ms"] + 3_600_000 * 24} for p in ess]
    publish(kafka_settings, other)
    run_until_idle(kafka_settings)
    assert [a["state"] for a in alarms(kafka_settings, read_topic)][:1] == ["raise"]


def test_every_worker_mutes_what_an_approval_explains_whichever_partitions_it_owns(kafka_settings, read_topic):
    """Two anomaly workers in one group. The battery action's approval is published to an actions.approved partition
    the worker holding the grid meter's telemetry partition was not given (approvals are keyed by target, telemetry
    by device), and that worker still mutes the raise the action causes on the grid meter: hints are read whole by
    every instance (streams/series.py), not shared out by the group."""
    from actuation import Running, action, approved

    from opsloop.connectors.kafka import producer, send, wait_delivered

    rng = random.Random(12)
    grid = [{**point(i, 29_500 + rng.gauss(0, 5), "grid-meter-1"), "device_type": "grid_meter", "metric": "grid_kw"}
            for i in range(600)]
    for p in grid[500:540]:
        p["value"] = 32_500.0  # the import moves as the battery does what the guard let it
    workers = [AnomalyProcessor(kafka_settings), AnomalyProcessor(kafka_settings)]
    telemetry, approvals = kafka_settings.topic("telemetry.raw"), kafka_settings.topic("actions.approved")
    with Running(workers[0], safety_net_s=150) as first, Running(workers[1], safety_net_s=150) as second:
        deadline = time.monotonic() + 60
        while True:  # the group has settled: each worker holds its share of telemetry.raw's 8 partitions
            shares = [{p for t, p in w.assigned if t == telemetry} for w in workers]
            if all(shares) and not shares[0] & shares[1] and len(shares[0] | shares[1]) == 8:
                break
            assert time.monotonic() < deadline, f"the two workers did not share telemetry.raw within 60 s: {shares}"
            assert first.error is None and second.error is None
            time.sleep(0.2)
        owner, other = workers
        meter_partition = min(shares[0])
        elsewhere = min(p for p in range(4) if (approvals, p) not in owner.assigned)  # never the owner's
        held = action("a-1", "pcs_discharge", target="ess-1", life_s=600)
        held.update(created_ms=grid[499]["ts_ms"], expires_ms=grid[540]["ts_ms"])
        prod = producer(kafka_settings)
        send(prod, approvals, b"ess-1", CODEC.encode("ApprovedAction", approved(held)), partition=elsewhere)
        wait_delivered(prod)
        while owner.effects.explains("demo", "grid-meter-1", "grid_meter", grid[510]["ts_ms"]) is None:
            assert time.monotonic() < deadline + 30, \
                f"the worker owning the grid meter never read the approval in actions.approved[{elsewhere}]"
            time.sleep(0.1)
        for p in grid:  # the grid meter's readings, in a partition the owner holds
            send(prod, telemetry, b"grid-meter-1", CODEC.encode("TelemetryPoint", p), partition=meter_partition)
        wait_delivered(prod)
        while owner.stats["points"] < len(grid):
            assert time.monotonic() < deadline + 90, f"only {owner.stats['points']} points scored"
            time.sleep(0.1)
    assert owner.stats["explained"] >= 1 and other.stats["points"] == 0  # the jump raised, and was muted
    assert [a for a in alarms(kafka_settings, read_topic) if a["state"] == "raise"] == []
