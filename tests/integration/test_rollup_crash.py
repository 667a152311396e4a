"""SIGKILL the rollup worker mid-stream, restart it: every window comes out, once in content, none lost."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from opsloop.config.site import load_site
from opsloop.connectors.replay import replay, replay_spec
from opsloop.ops.cli import BUNDLED_DATA
from opsloop.schemas.codec import Codec
from opsloop.streams import worker

pytestmark = pytest.mark.integration


def worker_env(settings, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLOOP_")}
    env.update(OPSLOOP_BROKER=settings.broker, OPSLOOP_TOPIC_PREFIX=settings.topic_prefix,
               OPSLOOP_APP_ID=settings.app_id, OPSLOOP_DATA_DIR=str(settings.data_dir), **extra)
    return env


def test_sigkill_then_restart_loses_no_window_and_counts_no_point_twice(kafka_settings, read_topic):
    spec = replay_spec(load_site(kafka_settings.topology))
    stats = replay(kafka_settings, spec, BUNDLED_DATA)  # the whole file: 4,032 half-hours, 68,544 points
    codec = Codec.default()

    # Small batches and no idle flush, so the worker is mid-stream when it is killed.
    proc = subprocess.Popen([sys.executable, "-m", "opsloop.ops.cli", "worker", "--agents", "rollup"],
                            env=worker_env(kafka_settings, OPSLOOP_BATCH_SIZE="200", OPSLOOP_IDLE_CLOSE_S="3600"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not read_topic(kafka_settings, "telemetry.site"):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no snapshot within 60 s"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before_restart = len(read_topic(kafka_settings, "telemetry.site"))

    again = worker.run(kafka_settings, ["rollup"], exit_when_idle=True)["rollup"]
    assert again["dead_letters"] == 0  # points handled before the kill are not judged late

    windows: dict[int, list[dict]] = {}
    for msg in read_topic(kafka_settings, "telemetry.site"):
        snap = codec.decode_as("SiteSnapshot", msg.value())
        windows.setdefault(snap["window_start_ms"], []).append(snap)
    with open(BUNDLED_DATA) as f:
        demand = {int(datetime.fromisoformat(r["timestamp"]).replace(tzinfo=timezone.utc).timestamp() * 1000):
                  float(r["demand_mw"]) for r in csv.DictReader(f)}
    assert 0 < before_restart < len(demand), "the kill should land mid-stream"
    assert sorted(windows) == sorted(demand)
    for start, copies in windows.items():
        assert all(c == copies[0] for c in copies), f"window {start} re-emitted with other content"
        assert copies[0]["grid_kw"] == pytest.approx(demand[start])
        assert copies[0]["samples"] == len(spec.streams)  # each point counted exactly once
    assert stats.points == len(demand) * len(spec.streams)
