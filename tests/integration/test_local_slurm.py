"""The local Slurm runs real jobs on fake GPUs and obeys hold, release, suspend and requeue."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.integration


def _state(slurm, job_id: str) -> str:
    return slurm.run("squeue", "-h", "-j", job_id, "-o", "%T").strip()


def _wait_state(slurm, job_id: str, wanted: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = _state(slurm, job_id)
        if state == wanted:
            return state
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} is {state!r}, expected {wanted!r}")


def _submit(slurm, partition: str, gpus: int, *extra: str) -> str:
    out = slurm.run("sbatch", "--parsable", "-p", partition, f"--gres=gpu:{gpus}", "-o", "/dev/null",
                    "-J", f"test-{partition}", *extra, "--wrap", "sleep 600")
    return out.strip().split(";")[0]


def test_partitions_come_from_the_site_topology(slurm):
    partitions = slurm.run("sinfo", "-h", "-o", "%R").split()
    assert partitions == ["train-a", "train-b", "batch", "inference"]
    assert "gpu:8" in slurm.scontrol("show", "node", slurm.host)


def test_gpu_jobs_run_and_obey_scheduler_commands(slurm):
    running = _submit(slurm, "batch", 2)
    held = _submit(slurm, "batch", 1, "--hold")
    try:
        _wait_state(slurm, running, "RUNNING")
        assert "TresPerNode=gres:gpu:2" in slurm.scontrol("show", "job", running)
        assert _state(slurm, held) == "PENDING"

        slurm.scontrol("suspend", running)
        _wait_state(slurm, running, "SUSPENDED")
        slurm.scontrol("resume", running)
        _wait_state(slurm, running, "RUNNING")

        slurm.scontrol("release", held)
        _wait_state(slurm, held, "RUNNING")

        slurm.scontrol("requeuehold", running)
        _wait_state(slurm, running, "PENDING")
        assert "held" in slurm.run("squeue", "-h", "-j", running, "-o", "%r")
    finally:
        slurm.run("scancel", running, held)
