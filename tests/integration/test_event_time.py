"""Event times the pipeline must not believe, and the README's first-run path, on the real broker.

Each test states what it proves and counts end to end: what was sent, what came out, what
went to ``deadletter`` and why.
"""

from __future__ import annotations

import collections
import threading
import time

import pytest

from opsloop.config.site import load_site
from opsloop.connectors.kafka import producer, wait_delivered
from opsloop.connectors.replay import replay, replay_spec
from opsloop.models.dedup import DedupConfig, clean_alarm, decide, fingerprint
from opsloop.models.noise import NoiseScorer
from opsloop.models.records import alarm as alarm_record
from opsloop.ops import pcs_sim
from opsloop.ops.cli import BUNDLED_DATA
from opsloop.schemas.codec import Codec
from opsloop.streams import worker
from opsloop.streams.correlate import CorrelateProcessor
from opsloop.streams.rollup import RollupProcessor

pytestmark = pytest.mark.integration
HALF_HOUR, DAY = 1_800_000, 86_400_000
Y2100 = 4_102_444_800_000
JUNE_2000 = 960_163_200_000


def dead_letters(settings, read_topic) -> collections.Counter:
    codec = Codec.default()
    return collections.Counter((d["agent"], d["error_kind"]) for d in
                               (codec.decode_as("DeadLetter", m.value()) for m in read_topic(settings, "deadletter")))


def snapshots(settings, read_topic) -> list[dict]:
    codec = Codec.default()
    return [codec.decode_as("SiteSnapshot", m.value()) for m in read_topic(settings, "telemetry.site")]


def test_points_before_the_epoch_or_in_2100_are_invalid_and_move_no_watermark_across_restarts(kafka_settings,
                                                                                               read_topic):
    """Proves: a schema-valid point at -2**62 ms or in 2100 neither crashes the rollup nor moves its watermark
    (in memory or in the commit metadata); both go to deadletter as invalid and every real point of the day
    after counts."""
    codec, prod = Codec.default(), producer(kafka_settings)
    topic = kafka_settings.topic("telemetry.raw")

    def send(ts_ms, value=100.0):  # one key: one partition, this order
        prod.produce(topic, key=b"gm", value=codec.encode("TelemetryPoint", {
            "ts_ms": ts_ms, "site": "demo", "device": "grid-meter-1", "device_type": "grid_meter", "metric": "grid_kw",
            "value": value, "unit": "kW", "source": "test"}))

    send(JUNE_2000)
    send(Y2100)
    for i in range(1, 48):
        send(JUNE_2000 + i * HALF_HOUR)
    wait_delivered(prod)
    first = worker.run(kafka_settings, ["rollup"], exit_when_idle=True)["rollup"]
    assert (first["points"], first["snapshots"], first["dead_letters"]) == (48, 48, 1)

    send(-2**62)  # to a restarted rollup that resumes from its commit metadata, with the next day
    for i in range(48):
        send(JUNE_2000 + DAY + i * HALF_HOUR)
    wait_delivered(prod)
    second = worker.run(kafka_settings, ["rollup"], exit_when_idle=True)["rollup"]
    assert (second["points"], second["snapshots"], second["dead_letters"]) == (48, 48, 1)

    assert dead_letters(kafka_settings, read_topic) == {("rollup", "invalid"): 2}
    snaps = snapshots(kafka_settings, read_topic)
    assert sorted(s["window_start_ms"] for s in snaps) == [JUNE_2000 + i * HALF_HOUR for i in range(96)]
    assert all(s["samples"] == 1 for s in snaps)


def test_an_alarm_dated_2100_does_not_resolve_a_real_open_incident(kafka_settings, read_topic):
    """Proves: the correlator refuses an alarm dated 2100 (deadletter, invalid) instead of letting it move the
    site's event time and time out the real incident; the real incident stays open."""
    codec, prod = Codec.default(), producer(kafka_settings)
    config, scorer = DedupConfig(), NoiseScorer()
    now = int(time.time() * 1000)
    site = load_site(kafka_settings.topology)
    for ts, device in [(now - 60_000, "pdu-a1"), (Y2100, "pdu-b1")]:
        raw = alarm_record(ts, site.id, device, "pdu", "bms", "PWR_INPUT_LOST", "input lost", severity="major")
        fp = fingerprint(raw, config)
        state, decision = decide(None, raw, fp, config)
        prod.produce(kafka_settings.topic("alarms.clean"), key=site.id.encode(),
                     value=codec.encode("CleanAlarm", clean_alarm(raw, fp, state, decision, scorer)))
    wait_delivered(prod)
    stats = CorrelateProcessor(kafka_settings, [site]).run(threading.Event(), exit_when_idle=True)
    assert (stats["in"], stats["dead_letters"]) == (1, 1)

    incidents = [codec.decode_as("Incident", m.value()) for m in read_topic(kafka_settings, "incidents")]
    assert [(i["state"], i["root_device"]) for i in incidents] == [("open", "pdu-a1")]
    assert dead_letters(kafka_settings, read_topic) == {("correlate", "invalid"): 1}


@pytest.mark.parametrize("first", ["replay", "pcs-sim"])
def test_a_worker_started_before_its_sources_loses_nothing(kafka_settings, read_topic, free_port_pair, first):
    """The README's manual path: `opsloop up` (broker and PCS simulator), `opsloop worker --agents rollup`,
    then `opsloop replay --days 2`, with the sources started in either order after the worker has read every
    partition to its end. Proves: no point is late, and each of the 96 replayed windows holds all 17 points of
    its half-hour, while the simulator's wall-clock telemetry for the same site flows through the same topic."""
    # idle_close_s is also how long a partition read to its end holds a lane: room for a loaded machine
    settings = kafka_settings.replace(pcs_modbus=f"127.0.0.1:{free_port_pair}", idle_close_s=3.0)
    site = load_site(settings.topology)
    spec = replay_spec(site)
    rollup, stop = RollupProcessor(settings), threading.Event()
    failures: list[BaseException] = []

    def run_worker():
        try:
            rollup.run(stop)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    def wait_for(condition, what, timeout_s=60.0):
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert not failures, failures
            assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s: {rollup.stats}"
            time.sleep(0.1)

    sim = pcs_sim.from_site(site, free_port_pair, settings, telemetry_s=0.2)
    thread = threading.Thread(target=run_worker, name="rollup")
    thread.start()
    try:
        wait_for(lambda: rollup.assigned and rollup.caught_up >= rollup.assigned, "partition ends")
        time.sleep(settings.idle_close_s + 0.5)  # every partition let go: the state that lost the data
        stats = None
        for source in ([first] + [s for s in ("replay", "pcs-sim") if s != first]):
            if source == "pcs-sim":
                sim.start()
                wait_for(lambda: rollup.stats["points"] > 0, "simulator telemetry folded in")
            else:
                stats = replay(settings, spec, BUNDLED_DATA, days=2)
        wait_for(lambda: sum(s["window_start_ms"] < 10**12 for s in snapshots(settings, read_topic)) >= 96,
                 "96 replayed windows")
    finally:
        sim.stop()
        stop.set()
        thread.join()
    assert not failures, failures
    assert stats.rows == 96 and stats.points == 96 * len(spec.streams) == 1632
    assert dead_letters(settings, read_topic) == {}
    replayed = [s for s in snapshots(settings, read_topic) if s["window_start_ms"] < 10**12]
    assert len(replayed) == 96 and len({s["window_start_ms"] for s in replayed}) == 96
    assert all(s["samples"] == len(spec.streams) for s in replayed)
    assert all(s["site"] == site.id and s["ess_soc_pct"] == 80.0 for s in replayed)
