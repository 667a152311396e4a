"""SIGKILL an actuator worker between execution and offset commit, restart it: the device shows one execution."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from actuation import action, approved, free_port, publish, results
from faults import dying_after
from opsloop.connectors.haproxy import HaproxyRuntime
from opsloop.connectors.slurm import ScontrolBackend
from opsloop.ops.llm_balancer import BACKEND, LocalBalancer
from opsloop.ops.pcs_sim import from_site
from opsloop.config.site import load_site
from opsloop.config.settings import Settings

pytestmark = pytest.mark.integration
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Patches applied inside the worker process: die right after the chosen step, as SIGKILL would.
KILL_AFTER = {
    "ledger-record": ("opsloop.connectors.ledger", "Ledger", "finish"),  # executed and recorded, result not published
    "device-write": ("opsloop.connectors.pcs", "PcsClient", "write_setpoint"),  # executed, not even recorded
    "first-weight": ("opsloop.connectors.haproxy", "HaproxyRuntime", "set_weight"),  # half a shift applied
}


def worker(settings: Settings, agent: str, env: dict, kill_after: str | None) -> subprocess.CompletedProcess:
    code = dying_after(KILL_AFTER[kill_after] if kill_after else None) + textwrap.dedent(f"""
        import sys
        from opsloop.ops.cli import main
        sys.exit(main(["worker", "--agents", {agent!r}, "--exit-when-idle"]))
    """)
    full_env = {**env, "OPSLOOP_BROKER": settings.broker, "OPSLOOP_TOPIC_PREFIX": settings.topic_prefix,
                "OPSLOOP_APP_ID": settings.app_id, "OPSLOOP_DATA_DIR": str(settings.data_dir),
                "OPSLOOP_PCS_MODBUS": settings.pcs_modbus, "OPSLOOP_VERIFY_WINDOW_S": "30",
                "OPSLOOP_VERDICT_KEY": settings.verdict_key}  # secrets reach a worker through its environment
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=180)


@pytest.mark.parametrize("kill_after", ["ledger-record", "device-write"])
def test_pcs_sink_killed_mid_action_writes_the_registers_once(kafka_settings, read_topic, kill_after):
    with from_site(load_site(kafka_settings.topology), free_port(), soc_pct=80.0) as sim:
        settings = kafka_settings.replace(pcs_modbus=f"127.0.0.1:{sim.port}")
        publish(settings, "actions.approved", "ApprovedAction",
                [approved(action("crash-pcs", "pcs_discharge", setpoint_kw=2000.0))])
        first = worker(settings, "pcs-sink", dict(os.environ), kill_after)
        assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
        writes_after_crash = list(sim.register_log)
        second = worker(settings, "pcs-sink", dict(os.environ), None)
        assert second.returncode == 0, second.stderr[-2000:]
        assert sim.register_log == writes_after_crash and len(writes_after_crash) == 2  # rates + mode, once
        assert sim.battery.setpoint_kw == 2000.0
    statuses = [r["status"] for r in results(settings, read_topic) if r["action_id"] == "crash-pcs"]
    assert statuses == ["executed"]
    expected = "skipped_duplicates=1" if kill_after == "ledger-record" else "reconciled=1"
    assert expected in second.stdout and "executed=0" in second.stdout


def test_slurm_sink_killed_mid_action_changes_the_jobs_once(kafka_settings, slurm, read_topic):
    ids = [slurm.run("sbatch", "--parsable", "--requeue", "-p", "batch", "--gres=gpu:1", "-o", "/dev/null",
                     "-J", f"crash-{i}", "--wrap", "sleep 900").strip().split(";")[0] for i in range(4)]
    backend = ScontrolBackend(slurm.env)
    try:
        import time

        deadline = time.monotonic() + 60
        while {j.state for j in backend.jobs() if j.job_id in ids} != {"RUNNING"}:
            assert time.monotonic() < deadline, "test jobs never all ran"
            time.sleep(0.3)
        suspend = action("crash-slurm", "slurm_suspend", target="opsloop", partitions="batch", max_jobs=2,
                         shed_kw=1.0, life_s=600)  # 0.7 kW a GPU: two jobs
        publish(kafka_settings, "actions.approved", "ApprovedAction", [approved(suspend)])
        first = worker(kafka_settings, "slurm-sink", slurm.env, "ledger-record")
        assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
        suspended_at_crash = {j.job_id for j in backend.jobs() if j.job_id in ids and j.state == "SUSPENDED"}
        assert len(suspended_at_crash) == 2
        second = worker(kafka_settings, "slurm-sink", slurm.env, None)
        assert second.returncode == 0, second.stderr[-2000:]
        suspended = {j.job_id for j in backend.jobs() if j.job_id in ids and j.state == "SUSPENDED"}
        assert suspended == suspended_at_crash  # a second execution would have suspended two more
        statuses = [r["status"] for r in results(kafka_settings, read_topic) if r["action_id"] == "crash-slurm"]
        assert statuses == ["executed", "verified"]
    finally:
        slurm.run("scancel", *ids)


@pytest.mark.parametrize("kill_after", ["ledger-record", "first-weight"])
def test_llm_sink_killed_mid_shift_changes_the_balancer_once(kafka_settings, read_topic, tmp_path, kill_after):
    if shutil.which("haproxy") is None and not os.environ.get("CI"):
        pytest.skip("haproxy is not installed (make system-deps)")
    lb = LocalBalancer(tmp_path / "haproxy", {"large": ("127.0.0.1", free_port(), 100),
                                              "small": ("127.0.0.1", free_port(), 0)},
                       port=free_port(), metrics_port=free_port()).start()
    try:
        runtime = HaproxyRuntime(str(lb.socket))
        env = {**os.environ, "OPSLOOP_HAPROXY_SOCKET": str(lb.socket), "OPSLOOP_HAPROXY_METRICS_URL": lb.metrics_url}
        shift = action("crash-llm", "llm_shift", target=BACKEND, shift_pct=50, life_s=600)
        publish(kafka_settings, "actions.approved", "ApprovedAction", [approved(shift)])
        first = worker(kafka_settings, "llm-sink", env, kill_after)
        assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
        at_crash = {name: s.weight for name, s in runtime.servers(BACKEND).items()}
        if kill_after == "ledger-record":
            assert at_crash == {"large": 50, "small": 50}
            runtime.set_weight(BACKEND, "small", 10)  # a change made since: a second execution would undo it
        else:
            assert at_crash == {"large": 100, "small": 50}  # killed between the two weights
        second = worker(kafka_settings, "llm-sink", env, None)
        assert second.returncode == 0, second.stderr[-2000:]
        after = {name: s.weight for name, s in runtime.servers(BACKEND).items()}
        statuses = [r["status"] for r in results(kafka_settings, read_topic) if r["action_id"] == "crash-llm"]
        if kill_after == "ledger-record":
            assert after == {"large": 50, "small": 10} and "skipped_duplicates=1" in second.stdout
            assert statuses == ["executed", "verified"]
        else:  # half a shift is restored, never completed by a second execution
            assert after == {"large": 100, "small": 0} and "reconciled=1" in second.stdout
            assert statuses == ["failed"]
        assert "executed=0" in second.stdout
    finally:
        lb.stop()
