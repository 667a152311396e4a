"""`opsloop bench --suite flex`: how much flexible GPU power a shrink and a 50% LLM shift shed, how fast, held.

On a four-node local Slurm a data-parallel job (4 nodes, ``opsloop:dp:min=2``) and a tensor-parallel
job (4 nodes) run; two llama.cpp servers stream completions behind HAProxy under load from ``hey``
(Debian's HTTP load generator). The guard asks, an operator approves a ``slurm_shrink`` of the dp job to
2 nodes and an ``llm_shift`` of 50%, and the Slurm and LLM sinks act. Measured:

* flexible power: the training jobs' GPUs at the site file's per-GPU kW plus the LLM servers' dynamic
  draw (``models/llm_lever.py``: the measured token rate × J per token of the large model);
* shed: each lever's estimate (the GPUs the shrink releases, ``shift_shed_kw``), as a share of it;
* approval → verified per action; whether both hold until expiry (checked every second) and are given
  back then; requests failed (``hey``'s answers and HAProxy's own counters) and p99 time to first byte
  under the shift against the policy's SLO.

``measure`` does one run on parts the caller started (tests/integration/test_flex_shed.py asserts on it);
``run_flex_bench`` starts the parts on this host around it and prints the figures.
"""

from __future__ import annotations

import csv
import io
import json
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from opsloop.config.policy import Policy, load_policy
from opsloop.config.settings import Settings
from opsloop.config.site import Site, load_site
from opsloop.connectors.haproxy import BalancerMetrics, HaproxyRuntime
from opsloop.connectors.kafka import producer, send, wait_delivered
from opsloop.connectors.slurm import ScontrolBackend
from opsloop.models.llm_lever import EnergyPerToken, shift_shed_kw
from opsloop.models.reservation import reservation_name
from opsloop.models.signing import sign_feedback
from opsloop.ops.llm_balancer import BACKEND
from opsloop.schemas.codec import Codec
from opsloop.streams.guard import GuardProcessor
from opsloop.streams.llm_sink import LlmSink
from opsloop.streams.slurm_sink import SlurmSink

GPUS = 4  # per node, per job: the dp job and the tp job share each node's 8 GPUs
MAX_TOKENS = 4
# the production pair the two local servers stand for (both serve a 135M model here)
LARGE_PARAMS_B, SMALL_PARAMS_B = 70, 8
FRONTEND = "llm_api"
SAFETY_NET_S = 120.0
OPERATOR = "flex-bench"


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def wait_for(condition, what: str, timeout_s: float = SAFETY_NET_S) -> None:
    deadline = time.monotonic() + timeout_s  # a safety net only: reaching it ends the run
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"never happened: {what}")
        time.sleep(0.1)


def cpu_s() -> float:
    """CPU seconds of this process (the guard and sinks run in threads here) and of its finished children."""
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


class Hey:
    """``hey`` streaming completions through the balancer until interrupted; one CSV row per answered request."""

    def __init__(self, url: str, body_path: Path, clients: int = 2):
        self.argv = ["hey", "-z", "600s", "-c", str(clients), "-m", "POST", "-T", "application/json",
                     "-D", str(body_path), "-o", "csv", f"{url}/completions"]
        self.rows: list[dict] = []

    def __enter__(self):
        self.started = time.time()  # wall time: the sinks' results carry it
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGINT)  # hey stops its workers and writes its report
        out, err = self.proc.communicate(timeout=150)
        if self.proc.returncode != 0:
            raise RuntimeError(f"hey exited with {self.proc.returncode}: {err[-500:]}")
        for row in csv.DictReader(io.StringIO(out)):
            # time to first byte: connect + writing the request + waiting for the response's head
            ttfb = sum(float(row[k]) for k in ("DNS+dialup", "Request-write", "Response-delay"))
            self.rows.append({"started": self.started + float(row["offset"]), "ttfb_s": ttfb,
                              "status": int(row["status-code"])})


class Running:
    """A processor's ``run`` in a thread until the block ends."""

    def __init__(self, processor):
        self.processor, self.stop = processor, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.processor.run(self.stop)
        except BaseException as exc:  # surfaced when the block ends
            self.error = exc

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)
        if self.error is not None:
            raise self.error


def counters(metrics: BalancerMetrics) -> dict[str, float]:
    """The balancer's own request, 2xx and abort counters for the API frontend and the LLM backend."""
    wanted = {("haproxy_frontend_http_requests_total", FRONTEND): "requests",
              ("haproxy_backend_client_aborts_total", BACKEND): "client_aborts",
              ("haproxy_backend_server_aborts_total", BACKEND): "server_aborts",
              ("haproxy_backend_response_errors_total", BACKEND): "response_errors",
              ("haproxy_backend_connection_errors_total", BACKEND): "connection_errors"}
    out = dict.fromkeys(wanted.values(), 0.0) | {"2xx": 0.0}
    for name, labels, value in metrics.samples():
        key = wanted.get((name, labels.get("proxy")))
        if key:
            out[key] += value
        elif name == "haproxy_frontend_http_responses_total" and labels.get("proxy") == FRONTEND \
                and labels.get("code") == "2xx":
            out["2xx"] += value
    return out


def proposal(action_id: str, kind: str, target: str, life_s: float, shed_kw: float, reason: str,
             job_ids=(), **params) -> dict:
    now = int(time.time() * 1000)
    return {"action_id": action_id, "kind": kind, "target": target, "site": "demo", "setpoint_kw": None,
            "shed_kw": shed_kw, "job_ids": list(job_ids), "params": {k: str(v) for k, v in params.items()},
            "reason": reason, "expected_effect": f"about {shed_kw:.3g} kW less", "expected_delta_kw": -shed_kw,
            "created_ms": now, "expires_ms": now + int(life_s * 1000), "risk": "low", "proposer": "flex-bench"}


def publish(settings: Settings, topic: str, record_name: str, records: list[dict]) -> None:
    codec, prod = Codec.default(), producer(settings)
    for record in records:
        send(prod, settings.topic(topic), b"flex", codec.encode(record_name, record))
    wait_delivered(prod)


def approval(settings: Settings, action_id: str) -> dict:
    """The operator's yes, signed as the NOC signs it."""
    return sign_feedback({"target_id": action_id, "kind": "approve_action", "operator": OPERATOR,
                          "ts_ms": int(time.time() * 1000), "comment": None}, settings.feedback_key)


def submit(slurm, partition: str, nodes: int, comment: str, name: str) -> str:
    out = slurm.run("sbatch", "--parsable", "-p", partition, "-N", str(nodes), f"--gres=gpu:{GPUS}",
                    f"--comment={comment}", "-o", "/dev/null", "-J", name, "--wrap", "sleep 900")
    return out.strip().split(";")[0]


@dataclass
class FlexRun:
    """One run's figures (``report``) and the evidence behind them."""

    report: dict
    approved_at: float
    verified_at: dict[str, float]  # sink -> wall time of its verified result
    expiry: dict[str, float]  # sink -> its action's expiry
    reverted_at: dict[str, float]
    held: list[tuple[float, bool, bool]]  # (time, dp on 2 nodes with 2 held, weights 50/50) before expiry
    statuses: dict[str, list[str]]
    weights_after: dict[str, int]
    hold_left: bool  # the shrink's node hold still exists after the give-back
    tp_untouched: bool
    rows: list[dict] = field(default_factory=list)  # hey's answers
    balancer: dict[str, float] = field(default_factory=dict)  # HAProxy's counters over the run


def measure(settings: Settings, policy: Policy, site: Site, slurm, balancer, workdir: Path, hold_s: float = 60,
            clients: int = 2) -> FlexRun:
    """One run on a started four-node ``slurm`` (``LocalSlurm``) and ``balancer`` (``LocalBalancer``)."""
    kw_per_gpu = {p.slurm_partition: p.kw_per_gpu for p in site.gpu_pods if p.slurm_partition}
    backend, runtime = ScontrolBackend(slurm.env), HaproxyRuntime(str(balancer.socket))
    metrics = BalancerMetrics(balancer.metrics_url)
    body = Path(workdir) / "completion.json"
    body.write_text(json.dumps({"prompt": "Name one colour.", "max_tokens": MAX_TOKENS, "stream": True,
                                "temperature": 0}))
    dp = submit(slurm, "batch", 4, "opsloop:dp:min=2", "dp-train")
    tp = submit(slurm, "train-b", 4, "opsloop:tp", "tp-train")
    try:
        wait_for(lambda: all(backend.job_shape(j).state == "RUNNING" for j in (dp, tp)), "dp and tp jobs running")
        dp_shape, tp_shape = backend.job_shape(dp), backend.job_shape(tp)
        guard = GuardProcessor(settings, policy, site)
        sinks = {"slurm": SlurmSink(settings, policy, backend=backend, site=site), "llm": LlmSink(settings, policy)}
        seen: dict[str, list[dict]] = {name: [] for name in sinks}
        for name, sink in sinks.items():
            sink.on_result = seen[name].append

        def have(status: str) -> bool:
            return all(any(r["status"] == status for r in rs) for rs in seen.values())

        held: list[tuple[float, bool, bool]] = []
        before = counters(metrics)
        with Hey(balancer.url, body, clients) as load, Running(guard), Running(sinks["slurm"]), \
                Running(sinks["llm"]):
            time.sleep(8)  # the load before: the LLM servers' token rate, everything on the large one
            answered_per_s = (counters(metrics)["2xx"] - before["2xx"]) / (time.time() - load.started)
            tokens_per_s = answered_per_s * MAX_TOKENS  # at most max_tokens each: an upper bound
            llm_kw = tokens_per_s * EnergyPerToken().joules_per_token(LARGE_PARAMS_B) / 1000
            train_kw = (len(dp_shape.nodes) * dp_shape.gpus_per_node * kw_per_gpu["batch"]
                        + len(tp_shape.nodes) * tp_shape.gpus_per_node * kw_per_gpu["train-b"])
            shrink_kw = 2 * dp_shape.gpus_per_node * kw_per_gpu["batch"]
            shift_kw = shift_shed_kw(tokens_per_s, 50, LARGE_PARAMS_B, SMALL_PARAMS_B)
            shrink = proposal("flex-shrink", "slurm_shrink", "opsloop", hold_s, shrink_kw, "flex shed: dp job to 2",
                              job_ids=[dp], partitions="batch", nodes=2, job_nodes=4, comment=dp_shape.comment,
                              gpus=2 * dp_shape.gpus_per_node)
            shift = proposal("flex-shift", "llm_shift", BACKEND, hold_s, shift_kw, "flex shed: half to the small model",
                             shift_pct=50)
            publish(settings, "actions.proposed", "Action", [shrink, shift])
            wait_for(lambda: guard.stats["needs_approval"] == 2, "the guard asks the operator for both")
            approved_at, cpu0 = time.time(), cpu_s()
            publish(settings, "operator.feedback", "Feedback", [approval(settings, "flex-shrink"),
                                                                approval(settings, "flex-shift")])
            wait_for(lambda: have("verified"), "both actions verified", timeout_s=60)
            cpu_to_verified = cpu_s() - cpu0
            verified_at = {s: next(r["ts_ms"] for r in rs if r["status"] == "verified") / 1000
                           for s, rs in seen.items()}
            expiry = {"slurm": shrink["expires_ms"] / 1000, "llm": shift["expires_ms"] / 1000}
            hold = reservation_name("flex-shrink")
            while not have("reverted"):  # held until expiry: dp on two nodes, two held free, weights at 50/50
                if time.time() > max(expiry.values()) + 60:
                    raise TimeoutError(f"never given back: {seen}")
                if time.time() < min(expiry.values()) - 0.5:  # still asked for
                    shrunk = backend.job_shape(dp).nodes == dp_shape.nodes[:2] and backend.reservation(hold)
                    weights = {n: s.weight for n, s in runtime.servers(BACKEND).items()}
                    held.append((time.time(), bool(shrunk), weights == {"large": 50, "small": 50}))
                time.sleep(1.0)
            reverted_at = {s: next(r["ts_ms"] for r in rs if r["status"] == "reverted") / 1000
                           for s, rs in seen.items()}
            tp_after = backend.job_shape(tp)
            time.sleep(3)  # requests keep flowing across the give-back
        delta = {k: v - before[k] for k, v in counters(metrics).items()}
        weights_after = {n: s.weight for n, s in runtime.servers(BACKEND).items()}
        hold_left = backend.reservation(hold) is not None
    finally:
        slurm.run("scancel", dp, tp)

    flexible_kw = train_kw + llm_kw
    executed_kw = -next(r for r in seen["slurm"] if r["status"] == "executed")["observed_delta_kw"]
    under_shift = [r for r in load.rows if max(verified_at.values()) <= r["started"] <= expiry["llm"]]
    report = {
        "flexible_kw": round(flexible_kw, 3), "train_kw": round(train_kw, 3), "llm_kw": round(llm_kw, 4),
        "llm_tokens_per_s": round(tokens_per_s, 2),
        "shed_kw": {"slurm_shrink": round(executed_kw, 3), "llm_shift": round(shift_kw, 4)},
        "shed_share": round((executed_kw + shift_kw) / flexible_kw, 4),
        "approval_to_verified_s": {s: round(t - approved_at, 2) for s, t in verified_at.items()},
        "cpu_s_approval_to_verified": round(cpu_to_verified, 2),
        "held_checks": len(held), "held_ok": sum(1 for _t, a, b in held if a and b),
        "reverted_after_expiry_s": {s: round(t - expiry[s], 2) for s, t in reverted_at.items()},
        "requests": len(load.rows), "under_shift": len(under_shift),
        "failed": sum(1 for r in load.rows if r["status"] != 200),
        "balancer": {k: int(v) for k, v in delta.items()},
        "p99_ttfb_s": round(p99([r["ttfb_s"] for r in under_shift]), 3) if under_shift else None,
        "slo_ttfb_s": policy.llm.slo_ttfb_s}
    return FlexRun(report, approved_at, verified_at, expiry, reverted_at, held,
                   {s: [r["status"] for r in rs] for s, rs in seen.items()}, weights_after, hold_left,
                   (tp_after.state, tp_after.nodes) == ("RUNNING", tp_shape.nodes), load.rows, delta)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_flex_bench(settings: Settings) -> dict:
    """Starts a four-node Slurm, two LLM servers and HAProxy here, runs ``measure`` once on fresh topics."""
    from opsloop.ops.kafka import scratch_topics
    from opsloop.ops.llm_balancer import LocalBalancer
    from opsloop.ops.llm_server import LocalLlm
    from opsloop.ops.slurm import LocalSlurm

    if shutil.which("hey") is None:
        raise RuntimeError("hey is not installed (make system-deps)")
    site = load_site(settings.topology)
    with tempfile.TemporaryDirectory(prefix="flex-bench-") as tmp, \
            scratch_topics(settings, f"flexbench{uuid.uuid4().hex[:6]}.") as scratch:
        root = Path(tmp)
        # the bench's own keys when none are set: its guard signs, its sinks check, nothing else reads them
        bench = scratch.replace(verify_window_s=30.0, data_dir=root / "data",
                                verdict_key=settings.verdict_key or f"flex-v:{secrets.token_hex(16)}",
                                feedback_key=settings.feedback_key or f"flex-f:{secrets.token_hex(16)}")
        slurm = LocalSlurm.for_site(root / "slurm", site, nodes=4)
        servers = {n: LocalLlm(free_port(), root / n / "server.log", threads=1, interrupt_requests=False)
                   for n in ("large", "small")}
        balancer = None
        slurm.start()
        try:
            for server in servers.values():
                server.start()
                # the first completion loads the weights; a standby model is warm in production too
                with urllib_post(f"{server.url}/completions", {"prompt": "warm up", "max_tokens": 1}):
                    pass
            balancer = LocalBalancer(root / "haproxy", {"large": ("127.0.0.1", servers["large"].port, 100),
                                                        "small": ("127.0.0.1", servers["small"].port, 0)},
                                     port=free_port(), metrics_port=free_port()).start()
            bench = bench.replace(haproxy_socket=str(balancer.socket), haproxy_metrics_url=balancer.metrics_url)
            run = measure(bench, load_policy(bench.policy), site, slurm, balancer, root)
        finally:
            if balancer is not None:
                balancer.stop()
            for server in servers.values():
                server.stop()
            slurm.stop()
    print(f"flex shed: {json.dumps(run.report)}")
    return run.report


def urllib_post(url: str, body: dict):
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=120)
