"""The LLM-serving lever end to end: real HAProxy in front of two real llama.cpp servers, the LLM sink on Kafka.

The two servers stand for the large and the small model (both serve the packaged
SmolLM2-135M; which is which is only the balancer's naming). A load generator
streams completions through the balancer the whole time and records, per
request, the time to first byte (the response's head), the time to the first
token (the first streamed event) and whether the stream finished.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, replace

import httpx
import pytest

from actuation import Running, action, approved, free_port, publish, results, watch
from opsloop.config.policy import load_policy
from opsloop.connectors.haproxy import BalancerMetrics, HaproxyRuntime
from opsloop.ops.llm_balancer import BACKEND, LocalBalancer
from opsloop.schemas.codec import Codec
from opsloop.streams.llm_sink import LlmSink

pytestmark = pytest.mark.integration
SAFETY_NET_S = 120.0


@dataclass
class Served:
    started: float
    ttfb_s: float | None  # the response's first byte: its head
    ttft_s: float | None  # the first streamed event: the first token
    ok: bool
    error: str = ""


class Load:
    """``clients`` threads streaming short completions through the balancer until stopped."""

    def __init__(self, url: str, clients: int):
        self.url, self.clients = url, clients
        self.served: list[Served] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _one(self, client: httpx.Client, i: int) -> Served:
        started = time.monotonic()
        body = {"prompt": f"Client {i}: name one colour.", "max_tokens": 4, "stream": True, "temperature": 0}
        ttfb = ttft = None
        done = False
        try:
            with client.stream("POST", f"{self.url}/completions", json=body) as reply:
                ttfb = time.monotonic() - started
                if reply.status_code != 200:
                    return Served(started, ttfb, None, False, f"HTTP {reply.status_code}")
                for line in reply.iter_lines():
                    if ttft is None and line.strip():
                        ttft = time.monotonic() - started
                    if line.strip() == "data: [DONE]":
                        done = True
        except httpx.HTTPError as exc:
            return Served(started, ttfb, ttft, False, repr(exc))
        return Served(started, ttfb, ttft, done, "" if done else "stream ended without [DONE]")

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                self.served.append(self._one(client, i))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(150)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def wait_for(condition, what: str, timeout_s: float = SAFETY_NET_S) -> None:
    deadline = time.monotonic() + timeout_s  # safety net only: reaching it fails the test
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def server_responses(metrics: BalancerMetrics) -> dict[str, float]:
    """HTTP responses per server so far (connections are reused, so sessions would undercount requests)."""
    counts: dict[str, float] = {}
    for name, labels, value in metrics.samples():
        if name == "haproxy_server_http_responses_total" and labels.get("proxy") == BACKEND:
            counts[labels["server"]] = counts.get(labels["server"], 0.0) + value
    return counts


@pytest.fixture(scope="module")
def balanced_llms(tmp_path_factory):
    """Two llama.cpp servers (large, small) behind a real HAProxy; large takes everything at first."""
    try:
        import llama_cpp  # noqa: F401  (built by `make llm-deps`)
        from opsloop.ops.llm_server import LocalLlm

        servers = {name: LocalLlm(free_port(), tmp_path_factory.mktemp(name) / "server.log", threads=1,
                                    interrupt_requests=False)
                   for name in ("large", "small")}
    except (ImportError, RuntimeError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no local LLM server ({exc}); run `make llm-deps`")
    if shutil.which("haproxy") is None and not os.environ.get("CI"):
        pytest.skip("haproxy is not installed (make system-deps)")
    try:
        for server in servers.values():
            server.start()
            # the first completion loads the weights (seconds); a standby model is warm in production too
            httpx.post(f"{server.url}/completions", json={"prompt": "warm up", "max_tokens": 1}, timeout=120)
        balancer = LocalBalancer(tmp_path_factory.mktemp("haproxy"),
                                 {"large": ("127.0.0.1", servers["large"].port, 100),
                                  "small": ("127.0.0.1", servers["small"].port, 0)},
                                 port=free_port(), metrics_port=free_port()).start()
        try:
            yield balancer, servers
        finally:
            balancer.stop()
    finally:
        for server in servers.values():
            server.stop()


def lever_settings(kafka_settings, balancer):
    return kafka_settings.replace(haproxy_socket=str(balancer.socket), haproxy_metrics_url=balancer.metrics_url)


def lever_policy(settings, **llm):
    """The shipped policy, its ``llm`` limits changed where a test says so."""
    policy = load_policy(settings.policy)
    return replace(policy, llm=replace(policy.llm, **llm))


def test_a_50_percent_shift_moves_half_the_traffic_drops_nothing_and_keeps_p99_ttfb_within_slo(
        kafka_settings, balanced_llms, read_topic):
    balancer, servers = balanced_llms
    settings = lever_settings(kafka_settings, balancer)
    runtime, metrics = HaproxyRuntime(str(balancer.socket)), BalancerMetrics(balancer.metrics_url)
    pids = {name: s.pid for name, s in servers.items()}
    shift = action("shift-50", "llm_shift", target=BACKEND, life_s=600, shed_kw=3.1, shift_pct=50)
    clock_shift = [0.0]  # the sink's clock jumps to the expiry on demand
    sink = LlmSink(settings, lever_policy(settings), clock=lambda: time.time() + clock_shift[0])
    seen = watch(sink)
    with Load(balancer.url, clients=2) as load, Running(sink) as runner:
        time.sleep(5)  # before: everything to the large server
        before = server_responses(metrics)
        publish(settings, "actions.approved", "ApprovedAction", [approved(shift)])
        wait_for(lambda: any(r["status"] == "verified" for r in seen), "the shift verified within the SLO")
        assert {n: s.weight for n, s in runtime.servers(BACKEND).items()} == {"large": 50, "small": 50}
        shifted_at, during_start = time.monotonic(), server_responses(metrics)
        wait_for(lambda: len([s for s in load.served if s.started >= shifted_at]) >= 8, "8 requests under the shift")
        during = server_responses(metrics)
        clock_shift[0] = 601.0
        wait_for(lambda: any(r["status"] == "reverted" for r in seen), "revert at expiry")
        reverted_at = time.monotonic()
        time.sleep(5)  # requests keep flowing across the revert
        runner.stop.set()
    assert {n: s.weight for n, s in runtime.servers(BACKEND).items()} == {"large": 100, "small": 0}
    assert {name: s.pid for name, s in servers.items()} == pids  # no server restarted
    failed = [s for s in load.served if not s.ok]
    assert not failed, f"{len(failed)} of {len(load.served)} requests failed: {failed[:3]}"
    under_shift = [s for s in load.served if shifted_at <= s.started <= reverted_at]
    small_share = (during["small"] - during_start["small"]) / sum(during[n] - during_start[n] for n in during)
    slo_s = sink.policy.llm.slo_ttfb_s
    report = {"requests": len(load.served), "under_shift": len(under_shift), "slo_ttfb_s": slo_s,
              "p99_ttfb_s": round(p99([s.ttfb_s for s in under_shift]), 3),
              "p99_ttft_s": round(p99([s.ttft_s for s in under_shift]), 3),
              "small_share": round(small_share, 3), "before_small": before.get("small", 0)}
    print(f"\nllm_shift 50%: {json.dumps(report)}")
    assert before.get("small", 0) == 0
    assert 0.35 <= small_share <= 0.65
    assert len(under_shift) >= 8
    assert p99([s.ttfb_s for s in under_shift]) <= slo_s
    statuses = [r["status"] for r in results(settings, read_topic) if r["action_id"] == "shift-50"]
    assert statuses == ["executed", "verified", "reverted"]


def test_a_forced_slo_breach_is_reverted_within_10_s_and_raises_an_alarm(kafka_settings, balanced_llms, read_topic):
    balancer, servers = balanced_llms
    settings = lever_settings(kafka_settings, balancer)
    runtime, metrics = HaproxyRuntime(str(balancer.socket)), BalancerMetrics(balancer.metrics_url)
    # two requests at a time on the large server while six clients ask: the queue crosses an SLO of 2 as soon
    # as the requests already running there (the cap cuts none) finish, which takes a while on a busy CPU
    cap = action("cap-1", "llm_cap", target=BACKEND, life_s=600, servers="large", maxconn=2)
    sink = LlmSink(settings, lever_policy(settings, slo_queue=2))
    seen = watch(sink)
    breach_seen: list[float] = []

    def watch_queue(stop: threading.Event) -> None:
        while not stop.is_set() and not breach_seen:
            load_now = metrics.load(BACKEND)
            if load_now is not None and load_now.queue > 2:
                breach_seen.append(time.monotonic())
            time.sleep(0.1)

    with Load(balancer.url, clients=6) as load, Running(sink) as runner:
        time.sleep(3)
        stop_watch = threading.Event()
        watcher = threading.Thread(target=watch_queue, args=(stop_watch,), daemon=True)
        watcher.start()
        publish(settings, "actions.approved", "ApprovedAction", [approved(cap)])
        wait_for(lambda: any(r["status"] == "executed" for r in seen), "the cap applied")
        capped_at = time.monotonic()
        wait_for(lambda: any(r["status"] == "reverted" for r in seen),
                 f"the SLO guard's revert (results {[r['status'] for r in seen]}, "
                 f"servers {runtime.servers(BACKEND)}, load {metrics.load(BACKEND)})")
        reverted_at = time.monotonic()
        stop_watch.set()
        time.sleep(3)
        runner.stop.set()
    assert runtime.servers(BACKEND)["large"].maxconn == 64
    failed = [s for s in load.served if not s.ok]
    assert not failed, f"{len(failed)} of {len(load.served)} requests failed: {failed[:3]}"
    assert breach_seen, "the queue never crossed the SLO: the breach was not forced"
    report = {"cap_to_revert_s": round(reverted_at - capped_at, 2),
              "breach_to_revert_s": round(reverted_at - breach_seen[0], 2), "requests": len(load.served)}
    print(f"\nforced SLO breach: {json.dumps(report)}")
    assert reverted_at - breach_seen[0] <= 10.0
    reverted = next(r for r in seen if r["status"] == "reverted")
    assert "slo_breach" in reverted["detail"]
    statuses = [r["status"] for r in results(settings, read_topic) if r["action_id"] == "cap-1"]
    assert statuses[0] == "executed" and statuses[-1] == "reverted"
    codec = Codec.default()
    alarms = [codec.decode_as("Alarm", m.value()) for m in read_topic(settings, "alarms.raw")]
    assert [a["code"] for a in alarms] == ["LLM_SLO_BREACH"]
