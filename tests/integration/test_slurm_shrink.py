"""slurm_shrink on a real four-node Slurm: a data-parallel job gives nodes back through the real sink, verified
from Slurm, held free until expiry and returned then; a job that is not data parallel is refused."""

from __future__ import annotations

import resource
import time

import pytest

from actuation import Running, action, approved, publish, watch
from faults import dying_after
from opsloop.config.policy import load_policy
from opsloop.config.site import load_site
from opsloop.connectors.slurm import ScontrolBackend
from opsloop.models.guard import APPROVED, NEEDS_APPROVAL, REJECTED, PlantState, decide
from opsloop.models.reservation import reservation_name
from opsloop.streams.slurm_sink import SlurmSink

pytestmark = pytest.mark.integration
SAFETY_NET_S = 90.0
GPUS = 4  # per node, per job: a dp job and an ep job share each node's 8 GPUs


def cpu_s() -> tuple[float, float]:
    """CPU seconds so far of this process (the sink runs in a thread here) and of its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def submit(slurm, partition: str, nodes: int, comment: str, name: str) -> str:
    out = slurm.run("sbatch", "--parsable", "-p", partition, "-N", str(nodes), f"--gres=gpu:{GPUS}",
                    f"--comment={comment}", "-o", "/dev/null", "-J", name, "--wrap", "sleep 900")
    return out.strip().split(";")[0]


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + SAFETY_NET_S  # safety net only: reaching it fails the test
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def shrink_action(action_id: str, job_id: str, comment: str, keep: int, nodes: int, partition: str, **extra):
    return action(action_id, "slurm_shrink", target="opsloop", partitions=partition, job_ids=[job_id], life_s=600,
                  nodes=keep, job_nodes=nodes, comment=comment, gpus=(nodes - keep) * GPUS, **extra)


@pytest.fixture
def jobs(slurm_nodes):
    """A dp job on all four nodes (min 2), an ep job on all four, and a queued job that wants a node."""
    dp = submit(slurm_nodes, "batch", 4, "opsloop:dp:min=2", "dp-train")
    ep = submit(slurm_nodes, "train-b", 4, "opsloop:ep", "moe-train")
    backend = ScontrolBackend(slurm_nodes.env)
    wait_for(lambda: all(backend.job_shape(j).state == "RUNNING" for j in (dp, ep)), "dp and ep jobs running")
    queued = submit(slurm_nodes, "batch", 1, "", "queued")
    yield {"dp": dp, "ep": ep, "queued": queued}
    slurm_nodes.run("scancel", dp, ep, queued)


def test_a_dp_job_shrinks_to_its_minimum_is_verified_held_and_given_back(kafka_settings, slurm_nodes, jobs):
    settings = kafka_settings.replace(verify_window_s=30.0)
    policy, site = load_policy(settings.policy), load_site(settings.topology)
    kw_per_gpu = next(p.kw_per_gpu for p in site.gpu_pods if p.slurm_partition == "batch")
    backend = ScontrolBackend(slurm_nodes.env)
    before = backend.job_shape(jobs["dp"])
    assert before.nodes == ("node1", "node2", "node3", "node4") and before.gpus_per_node == GPUS

    shrink = shrink_action("shrink-dp", jobs["dp"], before.comment, 2, 4, "batch")
    # the guard: within every limit, and the shipped policy asks an operator
    assert decide(shrink, PlantState(), policy, shrink["created_ms"]).verdict == NEEDS_APPROVAL
    assert decide(shrink, PlantState(), policy, shrink["created_ms"], "op").verdict == APPROVED

    shift_s = [0.0]
    sink = SlurmSink(settings, policy, backend=backend, clock=lambda: time.time() + shift_s[0], site=site)
    seen = watch(sink)
    with Running(sink) as runner:
        # the sink has joined its group and read to the end: the time below is the approval's own
        publish(settings, "actions.approved", "ApprovedAction", [approved(action("warm-up", "pcs_idle"))])
        wait_for(lambda: sink.stats["ignored"] >= 1, "the sink reading actions.approved")
        cpu0, wall0, sent_ms = cpu_s(), time.monotonic(), time.time() * 1000
        publish(settings, "actions.approved", "ApprovedAction", [approved(shrink)])
        wait_for(lambda: any(r["status"] == "verified" for r in seen), "shrink verified from Slurm")
        wall_s, used = time.monotonic() - wall0, [b - a for a, b in zip(cpu0, cpu_s())]
        executed_s = (next(r for r in seen if r["status"] == "executed")["ts_ms"] - sent_ms) / 1000
        print(f"\napproval published -> executed {executed_s:.2f} s, -> verified {wall_s:.2f} s wall; CPU "
              f"{used[0]:.2f} s in this process (sink thread), {used[1]:.2f} s in its squeue/scontrol children")
        assert wall_s < 30.0

        # Slurm's own view: the job runs on two nodes, the two released ones are held free (MAINT)
        assert slurm_nodes.run("squeue", "-h", "-j", jobs["dp"], "-o", "%D %N %T").split() == [
            "2", "node[1-2]", "RUNNING"]
        assert "NumNodes=2 " in slurm_nodes.scontrol("show", "job", jobs["dp"])
        used = dict(line.split("|") for line in slurm_nodes.run("sinfo", "-h", "-N", "-p", "batch", "-O",
                                                                "NodeList:|,GresUsed:").split())
        assert used == {"node1": "gpu:8", "node2": "gpu:8", "node3": "gpu:4", "node4": "gpu:4"}  # dp left 3 and 4
        held = slurm_nodes.scontrol("-o", "show", "reservation", reservation_name("shrink-dp"))
        assert "Nodes=node[3-4] " in held and "State=ACTIVE" in held and "MAINT" in held
        assert slurm_nodes.run("squeue", "-h", "-j", jobs["queued"], "-o", "%T").strip() == "PENDING"
        assert backend.job_shape(jobs["ep"]).nodes == before.nodes  # the ep job is untouched

        executed = next(r for r in seen if r["status"] == "executed")
        assert executed["observed_delta_kw"] == pytest.approx(-2 * GPUS * kw_per_gpu)
        assert "released node3,node4" in executed["observed_effect"]

        shift_s[0] = 601.0  # the peak is over: the action expires
        wait_for(lambda: any(r["status"] == "reverted" for r in seen), "give-back at expiry")
        runner.stop.set()
    given_back = next(r for r in seen if r["status"] == "reverted")
    assert f"ended reservation {reservation_name('shrink-dp')}" in given_back["observed_effect"]
    assert "allocated GRES" in given_back["observed_effect"]
    assert backend.reservation(reservation_name("shrink-dp")) is None
    # the nodes are back in the pool: the queued job starts on one of them
    wait_for(lambda: backend.job_shape(jobs["queued"]).state == "RUNNING", "queued job runs on a returned node")
    assert backend.job_shape(jobs["queued"]).nodes[0] in ("node3", "node4")
    assert [r["status"] for r in seen] == ["executed", "verified", "reverted"]


def test_an_ep_job_is_refused_by_the_guard_and_again_by_the_sink(kafka_settings, slurm_nodes, jobs):
    policy = load_policy(kafka_settings.policy)
    backend = ScontrolBackend(slurm_nodes.env)
    ep = backend.job_shape(jobs["ep"])
    asked = shrink_action("shrink-ep", jobs["ep"], ep.comment, 2, 4, "train-b")
    decision = decide(asked, PlantState(), policy, asked["created_ms"], "op")
    assert decision.verdict == REJECTED and decision.reason_codes == ("not_elastic",)
    assert decision.reasons == ("the job declares expert parallelism (opsloop:ep): it is held or suspended whole, "
                                "never shrunk",)
    # a proposal that misreads the job as dp is approved by the guard; the sink reads the job from Slurm and refuses
    lying = shrink_action("shrink-ep-2", jobs["ep"], "opsloop:dp:min=1", 2, 4, "train-b")
    sink = SlurmSink(kafka_settings, policy, backend=backend)
    seen = watch(sink)
    with Running(sink):
        publish(kafka_settings, "actions.approved", "ApprovedAction", [approved(lying)])
        wait_for(lambda: seen, "a result")
    assert seen[0]["status"] == "failed"
    assert seen[0]["detail"].startswith("not_elastic: the job declares expert parallelism (opsloop:ep)")
    assert backend.job_shape(jobs["ep"]).nodes == ep.nodes
    assert backend.reservation(reservation_name("shrink-ep-2")) is None


def test_a_shrink_interrupted_before_slurm_acted_is_never_repeated(kafka_settings, slurm_nodes, jobs):
    """The ledger holds the plan (and the hold) of a sink killed before its scontrol update: after the restart the
    job keeps its four nodes, the hold is removed and the action is reported failed, not run again."""
    policy = load_policy(kafka_settings.policy)
    backend = ScontrolBackend(slurm_nodes.env)
    shrink = shrink_action("shrink-crash", jobs["dp"], "opsloop:dp:min=2", 2, 4, "batch")
    first = SlurmSink(kafka_settings, policy, backend=backend)
    hold = reservation_name("shrink-crash")
    assert first.ledger.start(shrink)  # what execute() had done when the process died: claimed, planned, held
    first.ledger.plan("shrink-crash", [["slurm_give_back", jobs["dp"], hold, ["node1", "node2"], ["node3", "node4"]]])
    first._hold_nodes(hold, ("node3", "node4"), shrink)
    first.close()
    assert backend.reservation(hold) is not None

    publish(kafka_settings, "actions.approved", "ApprovedAction", [approved(shrink)])  # redelivered after the crash
    restarted = SlurmSink(kafka_settings, policy, backend=backend)
    seen = watch(restarted)
    with Running(restarted):
        wait_for(lambda: seen, "a result")
    assert [r["status"] for r in seen] == ["failed"] and "not repeated" in seen[0]["detail"]
    assert len(backend.job_shape(jobs["dp"]).nodes) == 4
    assert backend.reservation(hold) is None


# SIGKILL the worker right after one step of the shrink, restart it: Slurm shows one shrink at most.
KILL_AFTER = {
    "ledger-record": ("opsloop.connectors.ledger", "Ledger", "finish"),  # shrunk and recorded, result not published
    "resize": ("opsloop.connectors.slurm", "ScontrolBackend", "resize"),  # shrunk, not recorded
    "hold": ("opsloop.connectors.slurm", "ScontrolBackend", "reserve"),  # nodes held, job not shrunk yet
}


def worker(settings, env: dict, kill_after: str | None):
    import os
    import subprocess
    import sys
    import textwrap

    code = dying_after(KILL_AFTER[kill_after] if kill_after else None) + textwrap.dedent("""
        import sys
        from opsloop.ops.cli import main
        sys.exit(main(["worker", "--agents", "slurm-sink", "--exit-when-idle"]))
    """)
    full_env = {**env, "OPSLOOP_BROKER": settings.broker, "OPSLOOP_TOPIC_PREFIX": settings.topic_prefix,
                "OPSLOOP_APP_ID": settings.app_id, "OPSLOOP_DATA_DIR": str(settings.data_dir),
                "OPSLOOP_VERIFY_WINDOW_S": "30", "OPSLOOP_VERDICT_KEY": settings.verdict_key}
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-c", code], cwd=repo, env=full_env, capture_output=True, text=True,
                          timeout=180)


@pytest.mark.parametrize("kill_after, nodes_after, statuses, counted", [
    ("ledger-record", 2, ["executed", "verified"], "skipped_duplicates=1"),
    ("resize", 2, ["executed", "verified"], "reconciled=1"),
    ("hold", 4, ["failed"], "reconciled=1"),
])
def test_a_shrink_killed_mid_way_acts_on_slurm_at_most_once(kafka_settings, slurm_nodes, jobs, read_topic, kill_after,
                                                           nodes_after, statuses, counted):
    import signal

    from actuation import results

    backend = ScontrolBackend(slurm_nodes.env)
    shrink = shrink_action(f"kill-{kill_after}", jobs["dp"], "opsloop:dp:min=2", 2, 4, "batch")
    publish(kafka_settings, "actions.approved", "ApprovedAction", [approved(shrink)])
    first = worker(kafka_settings, slurm_nodes.env, kill_after)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    at_crash = len(backend.job_shape(jobs["dp"]).nodes)
    second = worker(kafka_settings, slurm_nodes.env, None)
    assert second.returncode == 0, second.stderr[-2000:]
    assert counted in second.stdout and "executed=0" in second.stdout
    assert len(backend.job_shape(jobs["dp"]).nodes) == nodes_after == (2 if kill_after != "hold" else at_crash)
    hold = backend.reservation(reservation_name(shrink["action_id"]))
    assert (hold is not None) == (nodes_after == 2)  # a hold only beside a shrink that happened
    assert [r["status"] for r in results(kafka_settings, read_topic) if r["action_id"] == shrink["action_id"]] == \
        statuses
    if hold is not None:
        backend.unreserve(hold.name)


@pytest.fixture
def dp_and_tp(slurm_nodes):
    """A dp job (min 2) and a tp job side by side on all four nodes of one partition."""
    dp = submit(slurm_nodes, "batch", 4, "opsloop:dp:min=2", "dp-train")
    tp = submit(slurm_nodes, "batch", 4, "opsloop:tp", "tp-train")
    backend = ScontrolBackend(slurm_nodes.env)
    wait_for(lambda: all(backend.job_shape(j).state == "RUNNING" for j in (dp, tp)), "dp and tp jobs running")
    yield {"dp": dp, "tp": tp}
    slurm_nodes.run("scancel", dp, tp)


def test_a_shrink_naming_a_partition_releases_nodes_of_its_dp_job_and_never_touches_the_tp_job(
        kafka_settings, slurm_nodes, dp_and_tp):
    """What the live peaks loop proposes: "release up to 12 GPUs in batch". The sink picks the dp job from Slurm (the
    tp job beside it declares a split model), releases two nodes (8 GPUs: a third would take it below its min),
    holds them, verifies, gives them back at expiry; asked again, nothing in batch can give anything."""
    settings = kafka_settings.replace(verify_window_s=30.0)
    policy, site = load_policy(settings.policy), load_site(settings.topology)
    backend = ScontrolBackend(slurm_nodes.env)
    dp, tp = dp_and_tp["dp"], dp_and_tp["tp"]
    tp_nodes = backend.job_shape(tp).nodes
    assert tp_nodes == ("node1", "node2", "node3", "node4")

    shrink = action("shrink-part", "slurm_shrink", target="opsloop", partitions="batch", life_s=600, gpus=12)
    assert shrink["job_ids"] == [] and decide(shrink, PlantState(), policy, shrink["created_ms"], "op").verdict == \
        APPROVED
    hold = reservation_name(f"shrink-part-{dp}")
    shift_s = [0.0]
    sink = SlurmSink(settings, policy, backend=backend, clock=lambda: time.time() + shift_s[0], site=site)
    seen = watch(sink)
    with Running(sink) as runner:
        publish(settings, "actions.approved", "ApprovedAction", [approved(action("warm-up", "pcs_idle"))])
        wait_for(lambda: sink.stats["ignored"] >= 1, "the sink reading actions.approved")
        cpu0, wall0 = cpu_s(), time.monotonic()
        publish(settings, "actions.approved", "ApprovedAction", [approved(shrink)])
        wait_for(lambda: any(r["status"] == "verified" for r in seen), "shrink verified from Slurm")
        wall_s, used = time.monotonic() - wall0, [b - a for a, b in zip(cpu0, cpu_s())]
        print(f"\npartition shrink: approval published -> verified {wall_s:.2f} s wall; CPU {used[0]:.2f} s in the "
              f"sink thread, {used[1]:.2f} s in its squeue/scontrol children")
        assert wall_s < 30.0
        assert backend.job_shape(dp).nodes == ("node1", "node2")
        assert backend.job_shape(tp).nodes == tp_nodes and backend.job_shape(tp).state == "RUNNING"
        held = slurm_nodes.scontrol("-o", "show", "reservation", hold)
        assert "Nodes=node[3-4] " in held and "MAINT" in held
        executed = next(r for r in seen if r["status"] == "executed")
        assert executed["observed_effect"].startswith(f"shrank job {dp} (batch) from 4 to 2 nodes: released "
                                                      f"node3,node4 (8 GPUs")
        assert f"job {tp} " not in executed["observed_effect"]

        shift_s[0] = 601.0  # expiry: the nodes go back to the pool
        wait_for(lambda: any(r["status"] == "reverted" for r in seen), "give-back at expiry")
        assert backend.reservation(hold) is None

        again = action("shrink-part-2", "slurm_shrink", target="opsloop", partitions="batch", life_s=600, gpus=12)
        again["created_ms"] += 601_000
        again["expires_ms"] += 601_000
        publish(settings, "actions.approved", "ApprovedAction", [approved(again)])
        wait_for(lambda: any(r["action_id"] == "shrink-part-2" for r in seen), "a result for the second shrink")
        runner.stop.set()
    refused = next(r for r in seen if r["action_id"] == "shrink-part-2")
    assert refused["status"] == "failed" and refused["detail"].startswith("no_elastic_job: no running opsloop:dp job")
    assert backend.job_shape(dp).nodes == ("node1", "node2") and backend.job_shape(tp).nodes == tp_nodes
    assert [r["status"] for r in seen if r["action_id"] == "shrink-part"] == ["executed", "verified", "reverted"]
