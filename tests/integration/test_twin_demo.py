"""`opsloop demo`'s path, briefly: one warm-up day and one measured day on the twin at the demo's speed.

The demo starts its own Kafka, local Slurm, PCS simulator, twin and worker as a new user's `make demo` does;
the summary's figures must hang together and nothing it started may outlive it.
"""

from __future__ import annotations

import os
import socket

import pytest

from opsloop.config.settings import Settings
from opsloop.ops.kafka import free_port_pair
from opsloop.ops.twin_demo import run_twin_demo

pytestmark = pytest.mark.integration

SPEED = 2000.0  # the demo's default


def test_one_demo_day_shows_a_lower_billed_peak_with_every_figure_consistent(tmp_path, capsys):
    port = free_port_pair()
    settings = Settings(data_dir=tmp_path, kafka_port=port, broker=f"127.0.0.1:{port}",
                        cache_dir=Settings.from_env().cache_dir)
    figures = run_twin_demo(settings, days=1, speed=SPEED, warmup_days=1, failures=3)
    printed = capsys.readouterr().out

    [day] = figures["days"]
    without, with_loop, offline = figures["without"][day], figures["with"][day], figures["offline"][day]
    live_cut, offline_cut = without - with_loop, without - offline
    assert offline_cut > 300, "the offline evaluation finds nothing to shave: the day tests nothing"
    assert with_loop < without - 100, "the billed peak on the twin's meter did not fall"
    assert live_cut >= 0.6 * offline_cut, f"live cut {live_cut:.0f} kW against the offline {offline_cut:.0f} kW"
    assert figures["max_discharge_kw"] > 100

    statuses, verdicts = figures["statuses"], figures["verdicts"]
    assert figures["proposed"] >= sum(verdicts.values()) > 0
    assert verdicts["approved"] >= statuses["executed"] > 0
    settled = statuses.get("verified", 0) + statuses.get("reverted", 0) + statuses.get("failed", 0)
    assert settled >= 0.9 * statuses["executed"], statuses

    point, run, meter = figures["latencies"]
    for hop in (point, run, meter):
        assert hop.twin_s and len(hop.twin_s) == len(hop.wall_s), hop.name
        assert all(w >= 0 for w in hop.wall_s), hop.name
    assert len(run.twin_s) <= statuses["executed"]
    # proposed -> executed is timed by the sink on the run's clock: twin time is wall time x speed
    for twin_s, wall_s in zip(run.twin_s, run.wall_s):
        assert twin_s == pytest.approx(wall_s * SPEED, abs=0.05 * SPEED)

    correlated = [i for i in figures["incidents"] if i["member_count"] > 1]
    assert correlated, "no injected failure became an incident"
    assert all(i["incident_id"] in figures["narratives"] for i in figures["incidents"]), "an incident not narrated"
    assert "Probable root cause" in printed and "billed peak per day" in printed and "opsloop noc" in printed

    # what the demo started is gone: the worker and the broker
    with pytest.raises(ProcessLookupError):
        os.kill(figures["worker_pid"], 0)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the demo's Kafka still listens"
