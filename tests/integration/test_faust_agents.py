"""`opsloop worker` running Faust agents on the real broker, alone and beside a batch processor."""

from __future__ import annotations

import logging
import threading

import pytest

from opsloop.connectors.kafka import producer, wait_delivered
from opsloop.schemas.codec import Codec
from opsloop.streams import worker
from opsloop.streams.app import catalog_topic, decode_or_dead_letter

pytestmark = pytest.mark.integration

SAFETY_NET_S = 120.0  # only reached when the agent never sees what it waits for: the test then fails


def snapshot(site: str, minute: int, grid_kw: float) -> dict:
    start = 1_700_000_040_000 + minute * 60_000
    return {"site": site, "window_start_ms": start, "window_end_ms": start + 60_000, "grid_kw": grid_kw,
            "it_kw": grid_kw / 1.2, "facility_kw": grid_kw, "ess_soc_pct": 80.0, "ess_soh_pct": 99.0,
            "ess_kw": 0.0, "gpu_kw": None, "pue": 1.2, "price_per_mwh": None, "samples": 3, "devices": 2}


def counting_agent(expected: int, stop: threading.Event, handled: list[dict], seen: list[int]):
    """A register function: decode every telemetry.site event, keep the valid ones, stop after ``expected``."""

    def register(app, settings) -> None:
        @app.agent(catalog_topic(app, settings, "telemetry.site"), name="test-agent")
        async def agent(stream):
            async for event in stream.events():
                snap = await decode_or_dead_letter(app, event, "SiteSnapshot", "test-agent")
                if snap is not None:
                    handled.append(snap)
                seen.append(event.message.offset)
                if len(seen) >= expected:
                    stop.set()

    return register


def run_until(settings, agents, stop, **kwargs) -> dict:
    timer = threading.Timer(SAFETY_NET_S, stop.set)
    timer.start()
    try:
        return worker.run(settings, agents, stop=stop, **kwargs)
    finally:
        timer.cancel()


def test_faust_agent_handles_valid_events_and_dead_letters_a_malformed_one(kafka_settings, read_topic):
    codec = Codec.default()
    topic = kafka_settings.topic("telemetry.site")
    sent = [snapshot("s1", 0, 100.0), snapshot("s2", 0, 200.0), snapshot("s1", 1, 110.0)]
    delivered = []
    prod = producer(kafka_settings)
    for snap in sent:
        prod.produce(topic, key=snap["site"].encode(), value=codec.encode("SiteSnapshot", snap))
    prod.produce(topic, key=b"s3", value=b"\xc3\x01 not a snapshot",
                 on_delivery=lambda err, msg: delivered.append((err, msg.partition(), msg.offset())))
    wait_delivered(prod)
    [(err, bad_partition, bad_offset)] = delivered
    assert err is None

    root = logging.getLogger()
    root_before = (root.level, list(root.handlers))
    stop, handled, seen = threading.Event(), [], []
    results = run_until(kafka_settings, [], stop, faust_agents={"test": counting_agent(4, stop, handled, seen)})
    assert (root.level, root.handlers) == root_before  # Faust left logging (and its DEBUG spinner) alone

    assert len(seen) == 4, f"the agent saw {len(seen)} of 4 events before the safety net stopped it"
    assert results == {"test": {}}
    key = lambda s: (s["site"], s["window_start_ms"])  # noqa: E731
    assert sorted(handled, key=key) == sorted(sent, key=key)
    [dead] = [codec.decode_as("DeadLetter", m.value()) for m in read_topic(kafka_settings, "deadletter")]
    assert (dead["topic"], dead["partition"], dead["offset"]) == (topic, bad_partition, bad_offset)
    assert dead["value"] == b"\xc3\x01 not a snapshot" and dead["key"] == b"s3"
    assert (dead["error_kind"], dead["agent"]) == ("decode", "test-agent") and dead["error"]


def test_faust_agent_runs_beside_rollup_and_one_stop_ends_both(kafka_settings):
    """rollup (a thread) turns raw points into snapshots that the Faust agent (main thread) reads."""
    codec = Codec.default()
    base = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
    prod = producer(kafka_settings)
    for minute in range(5):
        prod.produce(kafka_settings.topic("telemetry.raw"), key=b"gm", value=codec.encode("TelemetryPoint", {
            "ts_ms": base + minute * 60_000, "site": "demo", "device": "grid-meter-1", "device_type": "grid_meter",
            "metric": "grid_kw", "value": 100.0 + minute, "unit": "kW", "source": "test"}))
    wait_delivered(prod)

    stop, handled, seen = threading.Event(), [], []
    results = run_until(kafka_settings.replace(grace_s=60), ["rollup"], stop,
                        faust_agents={"test": counting_agent(5, stop, handled, seen)})

    assert len(seen) == 5, f"the agent saw {len(seen)} of 5 snapshots before the safety net stopped it"
    assert results["rollup"]["snapshots"] == 5 and results["test"] == {}
    assert sorted(s["grid_kw"] for s in handled) == [100.0 + m for m in range(5)]


def test_a_failing_faust_agent_stops_the_processors_too(kafka_settings):
    def register(app, settings) -> None:
        raise RuntimeError("bad agent module")

    stop = threading.Event()
    with pytest.raises(RuntimeError, match="agent test failed: bad agent module"):
        run_until(kafka_settings, ["rollup"], stop, faust_agents={"test": register})
    assert stop.is_set()


def test_a_failing_processor_stops_the_running_faust_worker(kafka_settings, monkeypatch):
    faust_up = threading.Event()

    class Failing:
        name = "failing"

        def run(self, stop, exit_when_idle=False):
            assert faust_up.wait(SAFETY_NET_S), "the Faust worker never started"
            raise RuntimeError("processor broke")

    def register(app, settings) -> None:
        @app.agent(catalog_topic(app, settings, "telemetry.site"), name="idle-agent")
        async def idle(stream):  # a Faust app needs one subscription to start at all
            async for _ in stream:
                pass

        @app.task
        async def started() -> None:  # app tasks run once the worker has started
            faust_up.set()

    monkeypatch.setitem(worker.AGENTS, "failing", lambda settings, site: Failing())
    stop = threading.Event()
    with pytest.raises(RuntimeError, match="agent failing failed: processor broke"):
        run_until(kafka_settings, ["failing"], stop, faust_agents={"test": register})
    assert faust_up.is_set()
