"""SIGKILL the anomaly worker mid-stream, restart it: the alarms are those of one uninterrupted run."""

from __future__ import annotations

import random

import pytest

from faults import sigkill_when, start_worker  # the integration tier's helpers

from opsloop.connectors.kafka import producer, send, wait_delivered
from opsloop.models.anomaly import EarlyWarning
from opsloop.schemas.codec import Codec
from opsloop.streams import worker

pytestmark = pytest.mark.integration

CODEC = Codec.default()
SERIES, POINTS = 12, 2000
SPIKES = (450, 800, 1150, 1500, 1850)
HALF = 1000  # after the second spike of every series


def values(series: int) -> list[float]:
    rng = random.Random(series)
    out = [100.0 + 10 * series + rng.gauss(0, 3) for _ in range(POINTS)]
    for k, at in enumerate(SPIKES):
        out[at + series] += 60.0 + 40 * k  # each spike beyond every value before it
    return out


def point(series: int, i: int, value: float) -> dict:
    device = f"rack-{'ab'[series // 8]}0{series % 8 + 1}"  # racks of the demo site: declared devices
    return {"ts_ms": 1_700_000_000_000 + i * 60_000, "site": "demo", "device": device, "device_type": "pdu",
            "metric": "it_kw", "value": value, "unit": "kW", "source": "test"}


def publish(settings, series_values, points: range) -> None:
    prod = producer(settings)
    for i in points:  # interleaved, as devices report
        for s in range(SERIES):
            p = point(s, i, series_values[s][i])
            send(prod, settings.topic("telemetry.raw"), p["device"].encode(), CODEC.encode("TelemetryPoint", p))
    wait_delivered(prod)


def test_sigkill_then_restart_gives_the_alarms_of_an_uninterrupted_run(kafka_settings, read_topic, tmp_path):
    series_values = [values(s) for s in range(SERIES)]
    expected = set()
    for s in range(SERIES):
        ew = EarlyWarning()
        for i, v in enumerate(series_values[s]):
            if t := ew.update(v, point(s, i, v)["ts_ms"]):
                expected.add((point(s, i, v)["device"], t.ts_ms, t.state))
    assert len(expected) >= SERIES * len(SPIKES)  # every spike raises (and most clear)

    # The first part holds two spikes; the rest comes after the kill, so a worker that outruns the kill on a fast
    # machine still dies before the stream's end. Small batches and frequent checkpoints, so the kill lands after some.
    publish(kafka_settings, series_values, range(HALF))
    log = tmp_path / "worker.log"
    proc = start_worker(kafka_settings, "anomaly", log, OPSLOOP_BATCH_SIZE="100", OPSLOOP_ANOMALY_CHECKPOINT_S="0.05",
                        OPSLOOP_IDLE_CLOSE_S="3600")
    sigkill_when(proc, lambda: read_topic(kafka_settings, "alarms.raw"), "alarm", log, poll_s=0.1)
    before = {(a["device"], a["ts_ms"], a["state"])
              for a in (CODEC.decode_as("Alarm", m.value()) for m in read_topic(kafka_settings, "alarms.raw"))}
    assert 0 < len(before) < len(expected), "the kill should land mid-stream"
    publish(kafka_settings, series_values, range(HALF, POINTS))

    again = worker.run(kafka_settings, ["anomaly"], exit_when_idle=True)["anomaly"]
    assert again["dead_letters"] == 0

    got = [CODEC.decode_as("Alarm", m.value()) for m in read_topic(kafka_settings, "alarms.raw")]
    assert {(a["device"], a["ts_ms"], a["state"]) for a in got} == expected  # none lost, none invented
    assert again["points"] + again["replayed_skipped"] < SERIES * POINTS  # the restart resumed, not started over
