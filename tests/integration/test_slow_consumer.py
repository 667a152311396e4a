"""A slow consumer: the rollup, throttled, falls thousands of points behind a live source, then catches up."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import TopicPartition

from opsloop.config.site import load_site
from opsloop.connectors.kafka import consumer, watermark_offsets
from opsloop.connectors.replay import replay, replay_spec
from opsloop.ops.cli import BUNDLED_DATA
from opsloop.streams.rollup import RollupProcessor

from faults import by_key, once_in_content

pytestmark = [pytest.mark.integration, pytest.mark.faults]

DAYS = 14  # 672 half-hours, 11,424 points
STREAM_S = 10.0  # the source's pace: ~1,100 points/s
THROTTLE_S = 8.0  # the rollup's first seconds, at ~400 points/s


class SlowRollup(RollupProcessor):
    batch_size = 100

    def __init__(self, settings, until: float):
        super().__init__(settings)
        self.until = until

    def before_batch(self) -> None:
        if time.monotonic() < self.until:
            time.sleep(0.25)


def test_a_throttled_rollup_falls_behind_then_catches_up_with_exact_counts(kafka_settings, read_topic):
    """Proves: a consumer far behind its source (its backlog grows to thousands of points while it is throttled)
    catches up once it may, and then every half-hour window comes out exactly once with every point counted
    once, none dead-lettered: falling behind costs latency, never data."""
    # lateness is another test's business; a source that stalls for longer than idle_close_s counts as gone,
    # so the hold is the production default (the tier's 1.5 s is shorter than a stall on a loaded machine)
    settings = kafka_settings.replace(window_s=1800, grace_s=21_600, idle_close_s=10.0)
    spec = replay_spec(load_site(settings.topology))
    topic = settings.topic("telemetry.raw")
    proc = SlowRollup(settings, until=time.monotonic() + THROTTLE_S)
    stop, result, behind = threading.Event(), {}, []
    agent = threading.Thread(target=lambda: result.update(proc.run(stop, exit_when_idle=True)))
    source = threading.Thread(target=replay, args=(settings, spec, BUNDLED_DATA),
                              kwargs=dict(start="2000-06-05T00:00:00", days=DAYS, speedup=DAYS * 86_400 / STREAM_S))
    probe = consumer(settings, "probe")
    parts = [TopicPartition(topic, p) for p in range(8)]
    fired = threading.Event()
    timer = threading.Timer(120, lambda: (fired.set(), stop.set()))  # a safety net: the test fails if it fires
    timer.start()
    try:
        agent.start()
        source.start()
        while agent.is_alive():
            ends = sum(watermark_offsets(probe, tp)[1] for tp in parts)
            behind.append(ends - sum(dict(proc.processed).values()))
            agent.join(0.5)
        source.join(30)
    finally:
        stop.set()  # ends the agent if an assertion above failed
        timer.cancel()
        probe.close()
    assert not fired.is_set(), "the safety net fired"
    assert max(behind) > 2000, behind  # it did fall behind
    assert result["points"] == DAYS * 48 * len(spec.streams) and result["dead_letters"] == 0
    windows = by_key(read_topic(settings, "telemetry.site"), "SiteSnapshot", lambda s: (s["site"], s["window_start_ms"]))
    assert len(windows) == DAYS * 48 and not once_in_content(windows)
    assert all(len(copies) == 1 and copies[0]["samples"] == len(spec.streams) for copies in windows.values())
