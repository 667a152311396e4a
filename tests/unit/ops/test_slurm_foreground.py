"""`opsloop slurm up --foreground` (ops.slurm.serve) as a container's main process, on a fake cluster: up until
told to stop, then down; the token file for slurmrestd's clients written, renewed and removed; no Slurm needed."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from opsloop.ops.slurm import SlurmSetupError, serve, write_token

pytestmark = pytest.mark.unit


class FakeCluster:
    """What serve uses of LocalSlurm; it sets ``stop`` once it has issued ``tokens_before_stop`` tokens."""

    def __init__(self, token_file: Path | None, stop: threading.Event, tokens_before_stop: int = 1):
        self.token_file, self.stop_event, self.tokens_before_stop = token_file, stop, tokens_before_stop
        self.layout = type("Layout", (), {"conf": Path("/state/slurm.conf")})()
        self.started, self.stopped, self.tokens, self.daemons_up = None, 0, [], True
        self.token_at_start = "unset"

    def start(self, **options):
        self.token_at_start = self.token_file.exists() if self.token_file else None
        self.started = options
        return "Slurm up"

    def running(self):
        return self.daemons_up

    def rest_running(self):
        return self.daemons_up

    def rest_token(self, lifespan_s):
        self.tokens.append(f"token-{len(self.tokens) + 1}")
        if len(self.tokens) >= self.tokens_before_stop:
            self.stop_event.set()
        return self.tokens[-1]

    def stop(self):
        self.stopped += 1
        return "stopped"


def test_it_removes_a_stale_token_before_start_writes_one_after_and_stops_everything_when_told(tmp_path):
    token_file = tmp_path / "run" / "jwt"
    write_token(token_file, "stale-from-an-earlier-run")
    stop = threading.Event()
    cluster = FakeCluster(token_file, stop)
    seen_in_file = []
    lines = []

    def out(line):
        lines.append(line)
        if token_file.exists():
            seen_in_file.append(token_file.read_text().strip())

    code = serve(cluster, stop, rest=True, rest_host="0.0.0.0", rest_port=6820, token_file=token_file,
                 token_lifespan_s=3600, check_s=0.01, out=out)
    assert code == 0
    assert cluster.token_at_start is False  # the stale token was gone before Slurm started
    assert cluster.started == {"rest": True, "rest_host": "0.0.0.0", "rest_port": 6820}
    assert seen_in_file == ["token-1"]  # written once slurmrestd was up, and the only one a client could read
    assert cluster.stopped == 1 and not token_file.exists()  # stopped, and no token left to pass for readiness
    assert not any("token-1" in line for line in lines)  # never in the logs


def test_the_token_is_renewed_at_half_its_lifespan(tmp_path):
    token_file = tmp_path / "jwt"
    stop = threading.Event()
    renewed = []

    class Renewing(FakeCluster):
        def rest_token(self, lifespan_s):
            if token_file.exists():
                renewed.append(token_file.read_text().strip())
            return super().rest_token(lifespan_s)

    cluster = Renewing(token_file, stop, tokens_before_stop=3)
    assert serve(cluster, stop, rest=True, token_file=token_file, token_lifespan_s=1, check_s=0.01,
                 out=lambda line: None) == 0
    assert cluster.tokens == ["token-1", "token-2", "token-3"] and renewed == ["token-1", "token-2"]


def test_a_daemon_that_dies_ends_it_with_exit_1_after_stopping_the_rest(tmp_path):
    token_file = tmp_path / "jwt"
    stop = threading.Event()
    cluster = FakeCluster(token_file, stop, tokens_before_stop=99)
    cluster.daemons_up = False
    lines = []
    assert serve(cluster, stop, rest=True, token_file=token_file, check_s=0.01, out=lines.append) == 1
    assert cluster.stopped == 1 and not token_file.exists()
    assert any("stopped by itself" in line for line in lines)


def test_a_failed_start_still_stops_what_did_start(tmp_path):
    stop = threading.Event()
    cluster = FakeCluster(None, stop)

    def fail(**options):
        raise SlurmSetupError("slurmd did not stay up")

    cluster.start = fail
    with pytest.raises(SlurmSetupError, match="slurmd did not stay up"):
        serve(cluster, stop, check_s=0.01, out=lambda line: None)
    assert cluster.stopped == 1


def test_a_token_file_needs_slurmrestd(tmp_path):
    with pytest.raises(SlurmSetupError, match="token file is for slurmrestd"):
        serve(FakeCluster(None, threading.Event()), threading.Event(), rest=False, token_file=tmp_path / "jwt")


def test_a_token_is_written_whole_for_its_folders_owner_alone(tmp_path):
    folder = tmp_path / "tokens"
    folder.mkdir()
    write_token(folder / "jwt", "first")
    write_token(folder / "jwt", "second")  # over a read-only file: a new one renamed over it
    assert (folder / "jwt").read_text() == "second\n"
    assert stat.S_IMODE((folder / "jwt").stat().st_mode) == 0o400
    assert [p.name for p in folder.iterdir()] == ["jwt"]  # no temporary file left


@pytest.mark.skipif(os.getuid() != 0, reason="only root gives files away")
def test_as_root_the_token_goes_to_the_owner_of_its_folder(tmp_path):
    folder = tmp_path / "volume"
    folder.mkdir()
    os.chown(folder, 10001, 10001)  # a volume mounted for the image's opsloop user
    write_token(folder / "jwt", "t")
    assert ((folder / "jwt").stat().st_uid, (folder / "jwt").stat().st_gid) == (10001, 10001)


def _cli(argv, monkeypatch, tmp_path):
    from opsloop.ops import cli

    monkeypatch.setenv("OPSLOOP_DATA_DIR", str(tmp_path))
    return cli.main(argv)


@pytest.mark.parametrize("argv", [["slurm", "status", "--token-file", "x"], ["slurm", "up", "--rest-port", "6820"],
                                  ["slurm", "down", "--foreground"]])
def test_options_that_need_up_or_rest_are_refused(argv, monkeypatch, tmp_path, capsys):
    assert _cli(argv, monkeypatch, tmp_path) == 2
    assert "only with" in capsys.readouterr().err


def test_up_foreground_serves_until_sigterm(monkeypatch, tmp_path):
    from opsloop.ops import slurm

    calls = {}

    def fake_serve(cluster, stop, **options):
        calls.update(options, state_dir=cluster.layout.state_dir)
        os.kill(os.getpid(), signal.SIGTERM)  # what `docker stop` sends the container's main process
        assert stop.wait(5)
        return 0

    monkeypatch.setattr(slurm, "serve", fake_serve)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert _cli(["slurm", "up", "--rest", "--foreground", "--rest-host", "0.0.0.0", "--rest-port", "6820",
                     "--token-file", str(tmp_path / "run" / "jwt")], monkeypatch, tmp_path) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert calls["state_dir"] == (tmp_path / "slurm").resolve()
    assert (calls["rest"], calls["rest_host"], calls["rest_port"]) == (True, "0.0.0.0", 6820)
    assert calls["token_file"] == tmp_path / "run" / "jwt" and calls["token_lifespan_s"] == 86_400


def test_a_pid_file_counts_only_while_its_process_runs_that_daemon(tmp_path):
    import subprocess

    from opsloop.ops.slurm import LocalSlurm

    cluster = LocalSlurm(tmp_path, ("batch",), ports=(1, 2))
    (tmp_path / "slurmctld.pid").write_text(f"{os.getpid()}\n")  # a live pid, but python's: left by an earlier run
    assert cluster._pid("slurmctld") is None and not cluster.running()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 10  # Popen may return a moment before the child's name becomes sleep's
        while Path(f"/proc/{sleeper.pid}/comm").read_text().strip() != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)
        (tmp_path / "sleep-node1.pid").write_text(f"{sleeper.pid}\n")  # a daemon named as slurmd-node1 is
        assert cluster._pid("sleep-node1") == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def test_up_rest_with_a_token_file_writes_the_token_there_and_prints_where_not_what(monkeypatch, tmp_path, capsys):
    from opsloop.ops.slurm import LocalSlurm

    monkeypatch.setattr(LocalSlurm, "start", lambda self, **options: f"Slurm up {options}")
    monkeypatch.setattr(LocalSlurm, "rest_token", lambda self, lifespan_s: f"secret-{lifespan_s}")
    monkeypatch.setattr(LocalSlurm, "rest_url", "http://127.0.0.1:6820")
    token_file = tmp_path / "run" / "jwt"
    assert _cli(["slurm", "up", "--rest", "--token-file", str(token_file), "--token-lifespan-s", "600"],
                monkeypatch, tmp_path) == 0
    printed = capsys.readouterr().out
    assert token_file.read_text() == "secret-600\n" and "secret" not in printed
    assert f"OPSLOOP_SLURM_JWT_FILE={token_file}" in printed and "OPSLOOP_SLURM_BACKEND=slurmrestd" in printed
