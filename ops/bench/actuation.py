"""`opsloop bench` (actuation part): from an approved action on Kafka to the PCS register write, p50/p99.

One approved ``pcs_discharge`` at a time is produced to ``actions.approved``;
the PCS sink (streams/pcs_sink.py) consumes it, claims it in its ledger
(fsynced SQLite), writes SunSpec model 124 over Modbus TCP and reads it back.
Latency = the simulator's clock at the first register write of the action
minus the time just before it was produced. Baseline, in the same run: the
same setpoint write through ``PcsClient`` alone (no Kafka, no ledger).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid

from opsloop.config.settings import Settings
from opsloop.models.signing import sign_verdict
from opsloop.ops.actuation_demo import with_run_keys

TARGET_P99_MS = 200.0
SAFETY_NET_S = 30.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile.

    >>> percentile(list(range(1, 101)), 99), percentile([5.0], 50)
    (99, 5.0)
    """
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100)
    return ordered[int(rank) - 1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _approved(action_id: str, kw: float, settings: Settings, policy_label: str, codec) -> dict:
    now = int(time.time() * 1000)
    action = {"action_id": action_id, "kind": "pcs_discharge", "target": "ess-1", "site": "demo", "setpoint_kw": kw,
              "shed_kw": None, "job_ids": [], "params": {}, "reason": "bench", "expected_effect": "bench",
              "expected_delta_kw": None, "created_ms": now, "expires_ms": now + 600_000, "risk": "low",
              "proposer": "bench"}
    record = {"action": action, "verdict": "approved", "reasons": ["bench"], "policy_version": policy_label,
              "decided_ms": now, "approved_by": None}
    # signed as the guard signs it: the sink executes nothing else
    return sign_verdict(codec.decode_as("ApprovedAction", codec.encode("ApprovedAction", record)), settings.verdict_key)


def run_actuation_bench(settings: Settings, actions: int = 300) -> int:
    from opsloop.connectors.kafka import producer, send_record, wait_delivered
    from opsloop.connectors.pcs import PcsClient
    from opsloop.streams.pcs_sink import PcsSink
    from opsloop.ops.kafka import scratch_topics
    from opsloop.ops.pcs_sim import from_site
    from opsloop.config.policy import load_policy
    from opsloop.config.site import load_site
    from opsloop.schemas.codec import Codec

    codec = Codec.default()
    site = load_site(settings.topology)
    run_id = uuid.uuid4().hex[:6]  # fresh action ids: the ledger would (rightly) refuse to run old ones again
    with scratch_topics(settings, f"bench-act-{uuid.uuid4().hex[:6]}.") as bench, \
            from_site(site, _free_port(), soc_pct=80.0) as sim:
        bench = bench.replace(pcs_modbus=f"127.0.0.1:{sim.port}", data_dir=settings.data_dir / "bench-actuation",
                              app_id=f"bench-{uuid.uuid4().hex[:6]}")
        client = PcsClient("127.0.0.1", sim.port)
        direct = []
        for i in range(actions):
            t0 = time.time()
            client.write_setpoint(1000.0 + i % 50, 600)
            direct.append((sim.register_log[-2][0] - t0) * 1000)
        client.close()

        bench = with_run_keys(bench)
        policy = load_policy(bench.policy)
        sink = PcsSink(bench, policy, site)
        stop = threading.Event()
        thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
        thread.start()
        prod = producer(bench, **{"linger.ms": 0})
        latencies = []
        try:
            for i in range(actions + 1):
                writes_before = len(sim.register_log)
                t0 = time.time()
                send_record(prod, bench, "actions.approved", _approved(f"bench-{run_id}-{i}", 1500.0 + i % 50, bench,
                                                                        policy.label, codec), codec)
                prod.poll(0)
                deadline = time.monotonic() + SAFETY_NET_S
                while len(sim.register_log) < writes_before + 2:
                    if time.monotonic() > deadline or not thread.is_alive():
                        raise RuntimeError(f"the PCS sink wrote nothing for action {i} within {SAFETY_NET_S:.0f} s")
                    time.sleep(0.0005)
                if i > 0:  # the first pays the consumer group join
                    latencies.append((sim.register_log[writes_before][0] - t0) * 1000)
            wait_delivered(prod)
        finally:
            del prod
            stop.set()
            thread.join(30)
    p50, p99, worst = percentile(latencies, 50), percentile(latencies, 99), max(latencies)
    d50, d99 = percentile(direct, 50), percentile(direct, 99)
    print(f"\nbench: approved action -> PCS register write, {actions} actions one at a time "
          f"(Kafka on loopback, fsynced ledger, Modbus TCP to the simulator)")
    print(f"  baseline  PcsClient write alone (no Kafka, no ledger)     p50 {d50:6.1f} ms   p99 {d99:6.1f} ms")
    print(f"  sink      actions.approved -> first register write         p50 {p50:6.1f} ms   p99 {p99:6.1f} ms"
          f"   max {worst:.1f} ms")
    print(f"  ratio     sink p99 / baseline p99 = {p99 / d99:.1f}; p99 target < {TARGET_P99_MS:.0f} ms: "
          f"{'met' if p99 < TARGET_P99_MS else 'NOT met'}")
    return 0
