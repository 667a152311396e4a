"""`opsloop demo`'s path, briefly: one warm-up day and one measured day on the twin at the demo's speed.

The demo starts its own Kafka, local Slurm, PCS simulator, twin, sources and worker as a new user's `make demo` does;
the summary's figures must hang together and nothing it started may outlive it.
"""

from __future__ import annotations

import os
import socket

import pytest

from opsloop.config.settings import Settings
from opsloop.ops.kafka import free_port_pair
from opsloop.ops.twin_demo import run_twin_demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEED = 1440.0  # the demo's default


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
    assert live_cut >= 0.5 * offline_cut, f"live cut {live_cut:.0f} kW against the offline {offline_cut:.0f} kW"
    assert figures["max_discharge_kw"] > 100
    # every reader was up when the run's time began: the loop learned the warm-up from its first step
    assert figures["first_step_ms"] - figures["first_sample_ms"] <= 2 * 900_000, figures["first_step_ms"]
    # the site was read as a site is read: the twin published no point itself, the sources read its meters, its
    # page and the PCS, and every poll's points were taken
    assert figures["twin_points"] == 0 and figures["sources"]["twin-1"]["points"] == 0  # the twin's own health
    for name in ("sunspec-pcs", "prom-twin"):
        health = figures["sources"][name]
        assert health["points"] > 1000 and health["dead_letters"] == 0 and health["dropped"] == 0, (name, health)

    statuses, verdicts = figures["statuses"], figures["verdicts"]
    assert figures["proposed"] >= sum(verdicts.values()) > 0
    assert statuses["executed"] > 0 and verdicts["approved"] > 0
    # the sink executes approved proposals and the guard's reverts, each once
    assert statuses["executed"] <= verdicts["approved"] + statuses.get("reverted", 0)
    settled = statuses.get("verified", 0) + statuses.get("reverted", 0) + statuses.get("failed", 0)
    assert settled >= 0.9 * statuses["executed"], statuses

    point, run, meter, twin = figures["latencies"]
    for hop in (point, run, meter, twin):
        assert hop.twin_s and len(hop.twin_s) == len(hop.wall_s), hop.name
        assert all(w >= 0 for w in hop.wall_s) and all(t >= 0 for t in hop.twin_s), hop.name
    assert len(run.twin_s) <= statuses["executed"]
    # one clock: from proposal to write, twin time is wall time x speed; a sample is published at or after its
    # twin time, so from write to meter the wall time is at least the twin time / speed
    for twin_s, wall_s in zip(run.twin_s, run.wall_s):
        assert twin_s == pytest.approx(wall_s * SPEED, abs=0.05 * SPEED)
    assert all(wall_s * SPEED >= twin_s - 0.05 * SPEED for twin_s, wall_s in zip(meter.twin_s, meter.wall_s))

    correlated = [i for i in figures["incidents"] if i["member_count"] > 1]
    assert correlated, "no injected failure became an incident"
    assert all(i["incident_id"] in figures["narratives"] for i in figures["incidents"]), "an incident not narrated"
    assert "Probable root cause" in printed and "billed peak per day" in printed and "opsloop noc" in printed

    # what the demo started is gone: the worker, the sources and the broker
    for pid in (figures["worker_pid"], figures["sources_pid"]):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the demo's Kafka still listens"


@pytest.mark.secure
def test_the_demo_closes_the_loop_on_the_secure_broker_every_agent_as_its_own_principal(tmp_path, capsys):
    """`opsloop demo --secure`, briefly: its own TLS + SASL/SCRAM broker with ACLs, the worker's agents each as its
    own principal; actions must go the whole way (proposed, approved, written to the PCS) and no client may be
    refused by the broker."""
    port = free_port_pair()
    settings = Settings(data_dir=tmp_path, kafka_port=port, broker=f"127.0.0.1:{port}",
                        cache_dir=Settings.from_env().cache_dir)
    figures = run_twin_demo(settings, days=0.25, speed=SPEED, warmup_days=0.5, failures=1, secure=True)
    printed = capsys.readouterr().out

    assert "SASL_SSL" in printed, "the NOC line does not name the secure protocol"
    assert figures["proposed"] > 0 and figures["verdicts"].get("approved", 0) > 0
    assert figures["statuses"].get("executed", 0) > 0, figures["statuses"]
    worker_log = (tmp_path / "twin-demo" / "run" / "worker.log").read_text()
    assert "AUTHORIZATION_FAILED" not in worker_log and "Authentication failed" not in worker_log
    with pytest.raises(ProcessLookupError):
        os.kill(figures["worker_pid"], 0)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the demo's secure Kafka still listens"


def test_an_interrupted_demo_stops_everything_it_started(tmp_path):
    import re
    import signal
    import subprocess
    import sys
    import time

    from opsloop.config.site import load_site
    from opsloop.ops.slurm import LocalSlurm

    port = free_port_pair()
    env = {**os.environ, "OPSLOOP_DATA_DIR": str(tmp_path), "OPSLOOP_KAFKA_PORT": str(port),
           "OPSLOOP_CACHE_DIR": str(Settings.from_env().cache_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("OPSLOOP_BROKER", None)
    # Ctrl-C as in a terminal (a test run in the background inherits SIGINT ignored: undo that for the demo)
    demo = subprocess.Popen([sys.executable, "-m", "opsloop.ops.cli", "demo", "--days", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    worker_pid, lines = None, []
    try:
        for line in demo.stdout:  # interrupt once the twin runs
            lines.append(line)
            if match := re.search(r"worker +pid (\d+)", line):
                worker_pid = int(match.group(1))
            if line.lstrip().startswith("pcs "):
                break
        assert worker_pid, "".join(lines)
        time.sleep(5)
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, "".join(lines) + out
    assert "interrupted" in out
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the demo's Kafka still listens"
    cluster = LocalSlurm.for_site(tmp_path / "twin-demo" / "slurm", load_site(Settings().topology))
    assert cluster.stop() == "Slurm was not running", "the demo's Slurm daemons outlived it"
