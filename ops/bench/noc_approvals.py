"""Approval latency in `opsloop bench --suite noc`: from an operator's Approve (the POST) to the guard's verdict
showing on the page the operator has open.

A broker of its own (scratch topics), the real guard, the real views agent and the NOC reading through it
(``--with-views``), all in this process; an operator logged in over HTTP with the page's event stream
(``/events``) open. Each round proposes an action the policy sends to an operator (``slurm_suspend``), waits
until the page offers it, then POSTs the approval as the page's script does and reads the event stream until
the action's row says "approved by" the operator. Two figures per round: the POST's answer (the feedback and
its audit record acked by the broker) and the verdict on the page.
"""

from __future__ import annotations

import http.client
import re
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

from argon2 import PasswordHasher

from opsloop.config.policy import load_policy
from opsloop.config.settings import Settings
from opsloop.config.site import load_site
from opsloop.connectors.kafka import producer, send_record, wait_delivered
from opsloop.ops.actuation_demo import with_run_keys
from opsloop.ops.bench.noc import percentile
from opsloop.ops.kafka import scratch_topics
from opsloop.ops.noc import LiveViews, make_access, make_server
from opsloop.ops.noc_auth import Role, UserStore
from opsloop.streams.guard import GuardProcessor
from opsloop.streams.views import ViewsSink

OPERATOR, PASSWORD = "bench-operator", "the bench operator's password"
SAFETY_NET_S = 60.0  # a round that never shows its verdict fails the bench rather than hang it


class Browser:
    """What the page does over HTTP: its session cookie, its CSRF token, its event stream."""

    def __init__(self, host: str, port: int):
        self.host, self.port, self.jar = host, port, {}
        self.csrf = ""

    def call(self, method: str, path: str, form: dict | None = None, accept: str = "text/html") -> tuple[int, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.jar.items()), "Accept": accept}
        if form is not None:
            headers.update({"Origin": f"http://{self.host}:{self.port}",
                            "Content-Type": "application/x-www-form-urlencoded"})
        conn.request(method, path, urlencode(form) if form is not None else None, headers)
        resp = conn.getresponse()
        body = resp.read().decode()
        for cookie in resp.headers.get_all("Set-Cookie") or []:
            key, value = cookie.split(";")[0].split("=", 1)
            self.jar[key] = value
        conn.close()
        return resp.status, body

    def login(self) -> None:
        token = re.search(r'name="csrf_token" value="([^"]*)"', self.call("GET", "/login")[1]).group(1)
        self.call("POST", "/login", {"csrf_token": token, "username": OPERATOR, "password": PASSWORD})
        self.csrf = re.search(r'name="csrf_token" value="([^"]*)"', self.call("GET", "/actions")[1]).group(1)

    def events(self, page: str) -> "EventStream":
        conn = http.client.HTTPConnection(self.host, self.port, timeout=SAFETY_NET_S)
        conn.request("GET", "/events?" + urlencode({"page": page}),
                     headers={"Cookie": "; ".join(f"{k}={v}" for k, v in self.jar.items()),
                              "Accept": "text/event-stream"})
        return EventStream(conn, conn.getresponse())


class EventStream:
    """The page's server-sent events, read as the browser reads them: one ``live`` fragment at a time."""

    def __init__(self, conn, resp):
        self.conn, self.resp = conn, resp

    def next_live(self) -> str:
        event, data = "", []
        while True:
            line = self.resp.fp.readline()
            if not line:
                raise ConnectionError("the event stream ended")
            line = line.decode().rstrip("\n")
            if not line:
                if event == "live":
                    return "\n".join(data)
                event, data = "", []
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])

    def until(self, pattern: re.Pattern, deadline: float) -> float:
        """Read fragments until one matches; returns when it arrived (perf_counter)."""
        while time.monotonic() < deadline:
            if pattern.search(self.next_live()):
                return time.perf_counter()
        raise TimeoutError(f"no fragment matched {pattern.pattern} in time")

    def close(self) -> None:
        self.conn.close()


def _row(action_id: str, inside: str) -> re.Pattern:
    return re.compile(rf'<tr id="action-{re.escape(action_id)}"[^>]*>(?:(?!</tr>).)*?{inside}', re.S)


def _action(action_id: str, site: str) -> dict:
    now = int(time.time() * 1000)
    return {"action_id": action_id, "kind": "slurm_suspend", "target": "opsloop", "site": site, "setpoint_kw": None,
            "shed_kw": 0.7, "job_ids": [], "params": {"partitions": "batch", "max_jobs": "1", "gpus": "1"},
            "reason": "bench", "expected_effect": "bench", "expected_delta_kw": None, "created_ms": now,
            "expires_ms": now + 600_000, "risk": "low", "proposer": "bench"}


def run(settings: Settings, approvals: int = 20) -> list[str]:
    """``approvals`` rounds (at most 20: the policy's Slurm budget is 20 jobs an hour, one job each)."""
    site = load_site(settings.topology)
    with tempfile.TemporaryDirectory(prefix="opsloop-noc-approvals-") as tmp, \
            scratch_topics(settings, f"bench-noc-{uuid.uuid4().hex[:6]}.") as scratch:
        bench = with_run_keys(scratch.replace(data_dir=Path(tmp), duckdb_path=Path(tmp) / "noc.duckdb",
                                              app_id=f"bench-noc-{uuid.uuid4().hex[:6]}"))
        guard = GuardProcessor(bench, load_policy(bench.policy), site)
        sink = ViewsSink(bench)
        stop = threading.Event()
        agents = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in (guard, sink)]
        for agent in agents:
            agent.start()
        users = UserStore(Path(tmp) / "users.json", hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
        users.add(OPERATOR, Role.OPERATOR, PASSWORD)
        server = make_server(bench, "127.0.0.1", 0, LiveViews(sink))
        host, port = server.server_address[:2]
        server.access = make_access(bench, host, port, users)
        web = threading.Thread(target=server.serve_forever, daemon=True)
        web.start()
        prod = producer(bench, **{"linger.ms": 0})
        posts, shown = [], []
        stream = None
        try:
            now = int(time.time() * 1000)  # the guard decides on fresh plant state
            send_record(prod, bench, "telemetry.site", {
                "site": site.id, "window_start_ms": now - 60_000, "window_end_ms": now, "grid_kw": 30000.0,
                "it_kw": 25000.0, "facility_kw": 30000.0, "ess_soc_pct": 80.0, "ess_soh_pct": 97.0, "ess_kw": 0.0,
                "gpu_kw": None, "pue": 1.2, "price_per_mwh": None, "samples": 3, "devices": 3})
            wait_delivered(prod)
            browser = Browser(host, port)
            for _ in range(200):
                try:
                    browser.login()
                    break
                except (OSError, AttributeError):
                    time.sleep(0.1)  # uvicorn still starting
            stream = browser.events("/actions")
            run_id = uuid.uuid4().hex[:6]
            for i in range(approvals):
                action_id = f"bench-{run_id}-{i}"
                send_record(prod, bench, "actions.proposed", _action(action_id, site.id))
                wait_delivered(prod)
                deadline = time.monotonic() + SAFETY_NET_S
                stream.until(_row(action_id, r'value="approve_action"'), deadline)  # the buttons are on the page
                clicked = time.perf_counter()
                status, body = browser.call("POST", "/feedback", {"action_id": action_id, "kind": "approve_action",
                                                                  "csrf_token": browser.csrf}, "application/json")
                answered = time.perf_counter()
                if status != 200:
                    raise RuntimeError(f"approval of {action_id} answered {status}: {body[:300]}")
                seen = stream.until(_row(action_id, rf'class="verdict">approved by {OPERATOR}<'), deadline)
                posts.append((answered - clicked) * 1000)
                shown.append((seen - clicked) * 1000)
        finally:
            if stream is not None:
                stream.close()
            server.shutdown()
            server.server_close()
            stop.set()
            for agent in agents:
                agent.join(30)
            prod.flush(5)

    def line(name, values):
        return (f"{name:48s} {statistics.median(values):8.0f} {percentile(values, 0.99):8.0f} {max(values):8.0f}")

    return [f"NOC approvals: {len(shown)} clicks, real guard and views agent, the page's event stream "
            f"(refresh: {'on change' if hasattr(sink, 'version') else 'every second'})",
            f"{'approval (ms from the POST)':48s} {'p50':>8s} {'p99':>8s} {'max':>8s}",
            line("POST answered (feedback + audit acked)", posts),
            line("guard's verdict shown on the page", shown)]


if __name__ == "__main__":
    print("\n".join(run(Settings.from_env())))
