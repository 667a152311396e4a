"""The README's first-run path, typed as a new user types it: real `opsloop` processes on a fresh broker.

`opsloop up` (the broker and the PCS simulator, whose live telemetry starts flowing at once), then
`opsloop worker --agents rollup,peaks` before any replayed data, then a NOC user and
`opsloop noc --with-views`, and `opsloop replay --days 2` before or after the NOC starts; then Ctrl-C on
the foreground processes and `opsloop down`. Each step is its own process with the settings in its
environment (``OPSLOOP_*``), as in a terminal; nothing runs in the test's process but the checks.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from actuation import TEST_FEEDBACK_KEY, TEST_VERDICT_KEY, free_port  # the integration tier's helpers
from opsloop.config.settings import Settings
from opsloop.ops.cli import BUNDLED_DATA
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.integration
PASSWORD = "first-run password 42"
REPLAYED_WINDOWS, POINTS_PER_WINDOW = 96, 17  # 2 days of half-hours; the demo site maps 17 streams per row
Y2001_MS = 978_307_200_000  # replayed windows are from the year 2000; the simulator's are from today


class FirstRun:
    """A terminal: runs `opsloop` commands with one environment and keeps the foreground ones to stop them."""

    def __init__(self, data_dir: Path, kafka_port: int):
        self.noc_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLOOP_")}
        # the port alone, as `opsloop up` asks when 9092 is taken: every command then finds that broker
        self.env = {**env, "OPSLOOP_DATA_DIR": str(data_dir), "OPSLOOP_KAFKA_PORT": str(kafka_port),
                    "OPSLOOP_PCS_MODBUS": f"127.0.0.1:{free_port()}",
                    "OPSLOOP_CACHE_DIR": str(Settings.from_env().cache_dir),
                    "OPSLOOP_VERDICT_KEY": TEST_VERDICT_KEY, "OPSLOOP_FEEDBACK_KEY": TEST_FEEDBACK_KEY}
        self.settings = Settings.from_env(self.env)
        assert self.settings.broker == f"127.0.0.1:{kafka_port}"
        self.data_dir = data_dir
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def run(self, *args: str, stdin: str | None = None, timeout_s: float = 150) -> str:
        done = subprocess.run([sys.executable, "-m", "opsloop.ops.cli", *args], env=self.env, input=stdin,
                              capture_output=True, text=True, timeout=timeout_s)
        assert done.returncode == 0, f"opsloop {' '.join(args)} -> {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.data_dir / f"{name}.out"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "opsloop.ops.cli", *args], env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = (proc, log)
        return proc

    def output(self, name: str) -> str:
        return self.procs[name][1].read_text(errors="replace")

    def wait_for_line(self, name: str, pattern: str, timeout_s: float = 60) -> None:
        proc, _ = self.procs[name]
        wait_until(lambda: re.search(pattern, self.output(name)) or proc.poll() is not None,
                   f"{pattern!r} from {name}", timeout_s)
        assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{self.output(name)[-3000:]}"

    def interrupt(self, name: str, timeout_s: float = 60) -> int:
        """Ctrl-C, as in the terminal it runs in; returns its exit status."""
        proc, _ = self.procs[name]
        proc.send_signal(signal.SIGINT)
        return proc.wait(timeout_s)

    def kill_all(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def sql(self, query: str) -> list[str]:
        """The one row `opsloop sql` prints for ``query``, as its cells."""
        lines = self.run("sql", query).splitlines()
        assert lines[-1] == "(1 row)", lines
        return lines[2].split()


class Noc:
    """A browser without JavaScript: cookies, the CSRF token of the login form, the NOC's own Origin."""

    def __init__(self, port: int):
        self.host, self.port, self.cookies = "127.0.0.1", port, {}

    def request(self, method: str, path: str, form: dict | None = None) -> tuple[int, dict, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {"Host": f"{self.host}:{self.port}"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers.update({"Origin": f"http://{self.host}:{self.port}",
                            "Content-Type": "application/x-www-form-urlencoded"})
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            page = resp.read().decode()
        finally:
            conn.close()
        for cookie in resp.headers.get_all("Set-Cookie") or []:
            name, value = cookie.split(";")[0].split("=", 1)
            self.cookies[name] = value
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, page  # names are case-insensitive

    def login(self, name: str, password: str) -> str:
        _, _, form = self.request("GET", "/login")
        token = re.search(r'name="csrf_token" value="([^"]*)"', form).group(1)
        status, headers, _ = self.request("POST", "/login", {"csrf_token": token, "username": name,
                                                             "password": password})
        assert (status, headers.get("location")) == (303, "/"), status
        status, _, page = self.request("GET", "/")
        assert status == 200
        return page


def wait_until(condition, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s"
        time.sleep(0.5)


def end_offsets(settings: Settings, names: list[str]) -> dict[tuple[str, int], int]:
    from confluent_kafka import TopicPartition

    from opsloop.connectors.kafka import consumer

    cons = consumer(settings, "first-run-offsets")
    try:
        ends = {}
        for name in names:
            topic = settings.topic(name)
            for p in cons.list_topics(topic, timeout=10).topics[topic].partitions:
                ends[(topic, p)] = cons.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        return ends
    finally:
        cons.close()


def caught_up(settings: Settings, agent: str, ends: dict[tuple[str, int], int]) -> bool:
    """Whether ``agent``'s group has committed every offset up to ``ends`` (the views' commits follow DuckDB's)."""
    from confluent_kafka import Consumer, TopicPartition

    cons = Consumer({"bootstrap.servers": settings.broker, "group.id": settings.group(agent),
                     "enable.auto.commit": False})
    try:
        wanted = [TopicPartition(t, p) for (t, p), end in ends.items() if end > 0]
        return all(tp.offset >= ends[(tp.topic, tp.partition)] for tp in cons.committed(wanted, timeout=10))
    finally:
        cons.close()


def replayed_windows(settings: Settings, read_topic) -> int:
    codec = Codec.default()
    snaps = (codec.decode_as("SiteSnapshot", m.value()) for m in read_topic(settings, "telemetry.site"))
    return len({s["window_start_ms"] for s in snaps if s["window_start_ms"] < Y2001_MS})


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/status") as status:
            return "State:\tZ" not in status.read()
    except OSError:  # gone meanwhile
        return False


@pytest.mark.parametrize("replay", ["after-noc", "before-noc"])
def test_the_readme_first_run_path_loses_nothing(tmp_path, free_port_pair, read_topic, replay):
    """Proves: on the README's manual path, with the worker started before its sources and the simulator's
    live telemetry flowing from `opsloop up` beside the replay, no point is late; each of the 96 replayed
    half-hours is one complete window (17 points) in the NOC's DuckDB; the NOC logs a new operator in and shows
    the demo site's power, a peak forecast and 0 dead letters; Ctrl-C stops the worker and the NOC cleanly and
    `opsloop down` stops the broker and the simulator, leaving no process behind."""
    term = FirstRun(tmp_path / "var", free_port_pair)
    settings, pids = term.settings, {}
    pid_files = {"kafka": term.data_dir / "kafka" / "kafka.pid", "pcs-sim": term.data_dir / "pcs-sim.pid"}
    try:
        try:
            up = term.run("up")
        finally:  # whatever `up` started is stopped at the end, even when it failed half-way
            pids = {name: int(f.read_text()) for name, f in pid_files.items() if f.exists()}
        assert "ready on" in up and "PCS simulator on" in up, up

        term.start("worker", "worker", "--agents", "rollup,peaks")
        term.wait_for_line("worker", r"rollup assigned partitions")
        time.sleep(settings.idle_close_s + 1)  # every partition read to its end and let go, as a user is slower

        term.run("noc", "user", "add", "olivia", "--role", "operator", stdin=PASSWORD + "\n")
        if replay == "before-noc":
            replayed = term.run("replay", "--data", str(BUNDLED_DATA), "--days", "2")
        term.start("noc", "noc", "--with-views", "--port", str(term.noc_port))
        term.wait_for_line("noc", r"opsloop NOC on http://")
        if replay == "after-noc":
            replayed = term.run("replay", "--data", str(BUNDLED_DATA), "--days", "2")
        assert f"replayed {REPLAYED_WINDOWS} rows as {REPLAYED_WINDOWS * POINTS_PER_WINDOW} points" in replayed

        wait_until(lambda: replayed_windows(settings, read_topic) >= REPLAYED_WINDOWS, "96 replayed windows", 120)
        rolled = end_offsets(settings, ["telemetry.site"])
        wait_until(lambda: caught_up(settings, "peaks", rolled), "peaks caught up", 60)
        stored = end_offsets(settings, ["telemetry.site", "forecasts.peak", "deadletter"])
        wait_until(lambda: caught_up(settings, "views", stored), "views caught up", 60)

        page = Noc(term.noc_port).login("olivia", PASSWORD)
        assert re.search(r'<h2>demo <span class="meta">as of ', page), page[-4000:]  # the site's overview
        assert re.search(r'id="grid-now">[\d,]+ kW</span>', page), page[-4000:]
        assert "<strong>Forecast:</strong>" in page and "No peak forecast yet" not in page
        assert '<span id="dead-letters">0 rejected messages' in page

        assert term.interrupt("noc") == 130  # Ctrl-C: the views agent stops and the DuckDB file is closed
        assert term.interrupt("worker") == 0, term.output("worker")[-3000:]
        rollup = dict(re.findall(r"(\w+)=(\d+)", re.search(r"^rollup: (.*)$", term.output("worker"), re.M)[1]))
        # the simulator's live points went through the same topic and rollup beside the replayed ones
        assert int(rollup["points"]) > REPLAYED_WINDOWS * POINTS_PER_WINDOW and rollup["dead_letters"] == "0", rollup
        assert not [name for name in ("worker", "noc") if "Traceback" in term.output(name)]

        assert term.sql("SELECT count(*) FROM v_deadletter") == ["0"]
        assert term.sql(f"SELECT count(DISTINCT window_start_ms), min(samples), max(samples) FROM telemetry_site "
                        f"WHERE site = 'demo' AND window_start_ms < {Y2001_MS}") == [
            str(REPLAYED_WINDOWS), str(POINTS_PER_WINDOW), str(POINTS_PER_WINDOW)]
        assert term.sql("SELECT count(*) FROM v_site_power WHERE site = 'demo' AND minute < '2001-01-01'") == [
            str(REPLAYED_WINDOWS)]

        down = term.run("down")
        assert "stopped PCS simulator" in down and "Kafka stopped" in down, down
        assert not [name for name, pid in pids.items() if alive(pid)]
        assert "Traceback" not in (term.data_dir / "pcs-sim.log").read_text()
    finally:
        term.kill_all()
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)  # kafka and the simulator lead their own sessions: nothing else
