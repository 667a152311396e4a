"""`opsloop slurm up --rest --foreground`, as the compose twin profile's twin-slurm runs it, against the real local
Slurm: a client reads a job through the slurmrestd backend with the token from the file it keeps, and SIGTERM
stops every daemon and removes the token."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from opsloop.config.settings import Settings
from opsloop.connectors.slurm_backends import make_backend
from opsloop.ops.kafka import free_ports
from opsloop.ops.slurm import DAEMONS, LocalSlurm, _alive

pytestmark = pytest.mark.integration
SAFETY_NET_S = 90.0


def wait_for(condition, what: str, process: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + SAFETY_NET_S  # safety net only: reaching it fails the test
    while not condition():
        assert process.poll() is None, f"the foreground Slurm ended ({process.returncode}):\n{log.read_text()}"
        assert time.monotonic() < deadline, f"never happened: {what}\n{log.read_text()}"
        time.sleep(0.2)


def test_foreground_slurm_serves_the_rest_backend_a_token_by_file_and_stops_on_sigterm(tmp_path):
    data_dir, token_file, log = tmp_path / "data", tmp_path / "run" / "jwt", tmp_path / "slurm.log"
    [port] = free_ports(1)
    env = {**os.environ, "OPSLOOP_DATA_DIR": str(data_dir)}
    env.pop("SLURM_JWT", None)
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "opsloop.ops.cli", "slurm", "up", "--rest", "--foreground", "--rest-host", "0.0.0.0",
             "--rest-port", str(port), "--token-file", str(token_file)],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    cluster = LocalSlurm(data_dir / "slurm", ())  # its files only: the ports and pids the process wrote
    try:
        wait_for(lambda: token_file.exists(), "the token file", process, log)
        job = cluster.run("sbatch", "--parsable", "-p", "batch", "--gres=gpu:1", "-o", "/dev/null", "-J", "compose",
                          "--begin=now+3600", "--wrap", "sleep 900").strip().split(";")[0]
        # 127.0.0.2: slurmrestd listens on every address (a socket bound to 127.0.0.1 alone would refuse it), as
        # twin-slurm must for the other containers
        backend = make_backend(Settings(slurm_backend="slurmrestd", slurm_rest_url=f"http://127.0.0.2:{port}",
                                        slurm_jwt_file=token_file), env={})
        jobs = {j.job_id: j for j in backend.jobs()}
        assert (jobs[job].partition, jobs[job].state, jobs[job].gpus, jobs[job].name) == ("batch", "PENDING", 1,
                                                                                         "compose")
        backend.act("hold", job)
        assert cluster.run("squeue", "-h", "-j", job, "-o", "%r").strip().startswith("JobHeld")
        assert token_file.read_text().strip() not in log.read_text()  # the token never reaches the log
        pids = {name: cluster._pid(name) for name in (*DAEMONS, "slurmrestd")}
        assert all(pids.values()), pids

        process.send_signal(signal.SIGTERM)  # what `docker compose stop` sends
        assert process.wait(timeout=60) == 0, log.read_text()
        assert not token_file.exists()
        assert not any(_alive(pid) for pid in pids.values()), pids
        assert "stopped slurmrestd, slurmd, slurmctld, munged" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        cluster.stop()  # a no-op unless the test failed midway
