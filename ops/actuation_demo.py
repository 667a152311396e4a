"""The actuation part of `opsloop demo`: guard, PCS sink and Slurm sink against the simulator and a local Slurm.

With the policy's modes (PCS ``auto``, Slurm ``approve``): a PCS discharge is
approved by the guard alone, written over Modbus and verified from the ESS
power in ``telemetry.site``; a Slurm suspension that sheds GPU power waits for
an approval, which the demo's "operator" gives on ``operator.feedback``, then is
executed on the local Slurm, verified from the job states and undone when it
expires; an action on a protected partition is rejected with its reason.

The guard signs its verdicts and the demo's operator its approvals; without
``OPSLOOP_VERDICT_KEY`` and ``OPSLOOP_FEEDBACK_KEY`` the demo makes random keys that
live only as long as the run (``with_run_keys``).
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
import uuid

from opsloop.config.settings import Settings

SAFETY_NET_S = 120.0
SLURM_LIFE_S = 20


def with_run_keys(settings: Settings) -> Settings:
    """``settings`` with a random verdict and feedback key where none is set: for one process running the guard,
    the sinks and an operator together (demo, bench); a real deployment sets both keys."""
    return settings.replace(verdict_key=settings.verdict_key or f"run:{secrets.token_hex(32)}",
                            feedback_key=settings.feedback_key or f"run:{secrets.token_hex(32)}")


def _submit(cluster, partition: str, gpus: int, name: str) -> str:
    out = cluster.run("sbatch", "--parsable", "--requeue", "-p", partition, f"--gres=gpu:{gpus}", "-o", "/dev/null",
                      "-J", name, "--wrap", "sleep 3600")
    return out.strip().split(";")[0]


def _action(action_id: str, kind: str, target: str, life_s: float, **fields) -> dict:
    now = int(time.time() * 1000)
    record = {"action_id": action_id, "kind": kind, "target": target, "site": "demo", "setpoint_kw": None,
              "shed_kw": None, "job_ids": [], "params": {}, "reason": "", "expected_effect": "",
              "expected_delta_kw": None, "created_ms": now, "expires_ms": now + int(life_s * 1000), "risk": "low",
              "proposer": "opsloop demo"}
    record.update(fields)
    return record


def run_actuation_demo(settings: Settings) -> int:
    from opsloop.connectors.kafka import consumer, producer, send_record, wait_delivered
    from opsloop.connectors.pcs import parse_endpoint
    from opsloop.streams.pcs_sink import PcsSink
    from opsloop.connectors.slurm import ScontrolBackend
    from opsloop.streams.slurm_sink import SlurmSink
    from opsloop.models.jobs import flexible_gpu_kw
    from opsloop.ops.pcs_sim import from_site
    from opsloop.config.policy import load_policy
    from opsloop.config.site import load_site
    from opsloop.ops.slurm import LocalSlurm, SlurmSetupError
    from opsloop.models.signing import sign_feedback
    from opsloop.schemas.codec import Codec
    from opsloop.streams.guard import GuardProcessor
    from opsloop.streams.rollup import RollupProcessor

    work = settings.data_dir / "actuation"
    shutil.rmtree(work / "ledger", ignore_errors=True)
    (work / "guard.sqlite").unlink(missing_ok=True)
    run = with_run_keys(settings).replace(data_dir=work, window_s=5, grace_s=1, verify_window_s=30.0,
                           app_id=f"opsloop-demo-{uuid.uuid4().hex[:6]}")
    if run.kafka_credentials_dir is not None:  # a secure broker: the agents' ACLs for this run's own app id
        from opsloop.config.access import plan
        from opsloop.connectors.kafka import apply_acls

        apply_acls(run, plan(run))
    policy = load_policy(run.policy)
    site = load_site(run.topology)
    codec = Codec.default()
    print(f"\nactuation: policy {policy.label} (PCS {policy.mode('pcs_discharge')}, "
          f"Slurm {policy.mode('slurm_suspend')}; protected: {', '.join(policy.slurm.protected_partitions)})")

    cluster = LocalSlurm.for_site(work / "slurm", site)
    try:
        print(f"  slurm    {cluster.start()}")
    except SlurmSetupError as exc:
        print(f"  slurm    not started, the Slurm part is left out: {str(exc).splitlines()[0]}")
        cluster = None
    host, port = parse_endpoint(run.pcs_modbus)
    sim = from_site(site, port, run, telemetry_s=1.0, host=host)
    stop = threading.Event()
    threads, processors = [], []
    try:
        sim.start()
        print(f"  pcs      simulator on {host}:{port} (SunSpec 1/103/124/802, meters 203), ESS SoC {sim.battery.soc_pct:.0f}%")
        jobs = {}
        if cluster is not None:
            for partition, gpus, name in (("inference", 1, "llm-serve"), ("train-a", 1, "pretrain"),
                                          ("batch", 2, "sweep"), ("batch", 1, "etl"), ("train-b", 2, "finetune")):
                jobs[_submit(cluster, partition, gpus, name)] = (partition, gpus, name)
        backend = ScontrolBackend(cluster.env) if cluster is not None else None
        # each agent as its own Kafka principal on a secure broker (a no-op on plaintext)
        guard = GuardProcessor(run.as_principal("guard"), policy, site)
        processors = [RollupProcessor(run.as_principal("rollup")), guard,
                      PcsSink(run.as_principal("pcs-sink"), policy, site)]
        if backend is not None:
            processors.append(SlurmSink(run.as_principal("slurm-sink"), policy, backend=backend))
        for proc in processors:
            thread = threading.Thread(target=proc.run, args=(stop,), name=f"demo-{proc.name}", daemon=True)
            thread.start()
            threads.append(thread)

        deadline = time.monotonic() + SAFETY_NET_S
        while "demo" not in guard.ess or (backend and {j.state for j in backend.jobs()} != {"RUNNING"}):
            if time.monotonic() > deadline:
                raise RuntimeError("the demo's plant never came up (ESS telemetry or Slurm jobs)")
            time.sleep(0.2)
        prod = producer(run)

        def propose(record: dict) -> None:
            send_record(prod, run, "actions.proposed", record, codec)
            wait_delivered(prod)

        t0 = time.monotonic()
        propose(_action("demo-pcs-1", "pcs_discharge", "ess-1", 600, setpoint_kw=2000.0, expected_delta_kw=-2000.0,
                        reason="forecast peak above the import cap", expected_effect="ESS discharges 2,000 kW"))
        expected = {("demo-pcs-1", "verified")}
        flexible = 0.0
        if backend is not None:
            before = [j for j in backend.jobs() if j.job_id in jobs]
            flexible = flexible_gpu_kw(before, policy.slurm)
            propose(_action("demo-slurm-1", "slurm_suspend", "opsloop", SLURM_LIFE_S, shed_kw=0.4 * flexible,
                            params={"partitions": "batch,train-b", "max_jobs": "4"},
                            reason="shed flexible GPU load through the peak", expected_effect="suspend batch jobs"))
            propose(_action("demo-slurm-2", "slurm_suspend", "opsloop", SLURM_LIFE_S, shed_kw=1.0,
                            params={"partitions": "inference"}, reason="(deliberately wrong) touch inference",
                            expected_effect="none: the guard must refuse"))
            expected |= {("demo-slurm-1", "verified"), ("demo-slurm-1", "reverted"), ("demo-slurm-2", "rejected")}

        cons = consumer(run, f"demo-reader-{uuid.uuid4().hex[:6]}")
        cons.subscribe([run.topic("actions.results"), run.topic("actions.approved")])
        seen, approved_asked, approved_at = set(), False, {}
        while not expected <= seen:
            if time.monotonic() > deadline + SAFETY_NET_S:
                print(f"  (gave up waiting for {sorted(expected - seen)})")
                break
            for msg in cons.consume(100, timeout=0.2):
                if msg.error():
                    continue
                at = time.monotonic() - t0
                if msg.topic() == run.topic("actions.approved"):
                    decided = codec.decode_as("ApprovedAction", msg.value())
                    action = decided["action"]
                    if decided["verdict"] == "approved":
                        approved_at[action["action_id"]] = at
                    print(f"  {at:5.1f}s {'guard':<10} {action['action_id']:<13} {decided['verdict']:<14} "
                          f"{action['kind']}: {'; '.join(decided['reasons'])}")
                    if decided["verdict"] == "needs_approval" and not approved_asked:
                        approved_asked = True
                        feedback = {"target_id": action["action_id"], "kind": "approve_action",
                                    "operator": "demo operator", "ts_ms": int(time.time() * 1000),
                                    "comment": "peak shaving approved"}
                        send_record(prod, run, "operator.feedback", sign_feedback(feedback, run.feedback_key), codec)
                        wait_delivered(prod)
                        print(f"  {at:5.1f}s {'operator':<10} {action['action_id']:<13} approves on operator.feedback")
                    continue
                res = codec.decode_as("ActionResult", msg.value())
                seen.add((res["action_id"], res["status"]))
                if res["status"] == "verified" and res["action_id"] in approved_at:
                    res["observed_effect"] += f" ({at - approved_at[res['action_id']]:.1f} s after approval)"
                    if res["action_id"] == "demo-slurm-1" and flexible:
                        shed = -(res["observed_delta_kw"] or 0.0)
                        res["observed_effect"] += f"; shed {shed:g} of {flexible:g} kW flexible = {shed / flexible:.0%}"
                if res["status"] == "rejected":
                    continue  # the guard's verdict line above says why
                print(f"  {at:5.1f}s {res['executor']:<10} {res['action_id']:<13} {res['status']:<14} "
                      f"{res['observed_effect']}")
        cons.close()
        writes = len(sim.register_log)
        print(f"  pcs      {writes} Modbus register writes; ESS now {sim.battery.power_kw:,.0f} kW, "
              f"SoC {sim.battery.soc_pct:.2f}%")
        if backend is not None:
            print("  slurm    jobs after the expiry: "
                  + ", ".join(f"{jobs[j.job_id][2]} ({j.partition})={j.state}" for j in backend.jobs() if j.job_id in jobs))
        del prod
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        sim.stop()
        if cluster is not None:
            print(f"  slurm    {cluster.stop()}")
    return 0
