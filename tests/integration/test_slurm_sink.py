"""The Slurm sink against the real local Slurm: relocation sheds GPU power, verified, undone at expiry."""

from __future__ import annotations

import subprocess
import time

import pytest

from actuation import Running, action, approved, publish, results, watch
from opsloop.connectors.slurm import ScontrolBackend, SlurmError
from opsloop.streams.slurm_sink import SlurmSink
from opsloop.models.jobs import flexible_gpu_kw
from opsloop.models.reservation import requested
from opsloop.config.policy import load_policy
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.integration
SAFETY_NET_S = 90.0


def submit(slurm, partition: str, gpus: int, name: str) -> str:
    out = slurm.run("sbatch", "--parsable", "--requeue", "-p", partition, f"--gres=gpu:{gpus}", "-o", "/dev/null",
                    "-J", name, "--wrap", "sleep 900")
    return out.strip().split(";")[0]


def states(backend, ids) -> dict[str, str]:
    return {j.job_id: j.state for j in backend.jobs() if j.job_id in ids}


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + SAFETY_NET_S  # safety net only: reaching it fails the test
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.2)


@pytest.fixture
def jobs(slurm):
    """Seven GPUs busy: two protected jobs, three flexible ones (the name has a quote and a semicolon on purpose)."""
    spec = [("inference", 1, "serve"), ("train-a", 1, "pretrain"), ("batch", 2, "sweep'; rm -rf /tmp/x"),
            ("batch", 1, "etl"), ("train-b", 2, "finetune")]
    ids = [submit(slurm, p, g, n) for p, g, n in spec]
    backend = ScontrolBackend(slurm.env)
    wait_for(lambda: set(states(backend, ids).values()) == {"RUNNING"}, "all test jobs running")
    yield dict(zip(["inference", "train-a", "batch-2", "batch-1", "train-b"], ids))
    slurm.run("scancel", *ids)


def test_suspend_sheds_flexible_gpu_power_is_verified_and_undone_at_expiry(kafka_settings, slurm, jobs, read_topic):
    settings = kafka_settings.replace(verify_window_s=30.0)
    policy = load_policy(settings.policy)
    backend = ScontrolBackend(slurm.env)
    before = [j for j in backend.jobs() if j.job_id in jobs.values()]
    flexible = flexible_gpu_kw(before, policy.slurm)
    assert flexible == pytest.approx(5 * policy.slurm.kw_per_gpu)
    suspend = action("shed-1", "slurm_suspend", target="opsloop", partitions="batch,train-b,inference",
                     shed_kw=0.3 * flexible, life_s=600)
    shift_s = [0.0]  # the sink's clock jumps to the expiry on demand
    sink = SlurmSink(settings, policy, backend=backend, clock=lambda: time.time() + shift_s[0])
    seen = watch(sink)
    publish(settings, "actions.approved", "ApprovedAction", [approved(suspend)])
    with Running(sink) as runner:
        wait_for(lambda: any(r["status"] == "verified" for r in seen), "verification from job states")
        suspended = [j for j, s in states(backend, jobs.values()).items() if s == "SUSPENDED"]
        shed = sum(j.gpus for j in before if j.job_id in suspended) * policy.slurm.kw_per_gpu
        assert shed / flexible >= 0.25
        assert states(backend, [jobs["inference"], jobs["train-a"]]) == {jobs["inference"]: "RUNNING",
                                                                         jobs["train-a"]: "RUNNING"}
        shift_s[0] = 601.0
        wait_for(lambda: any(r["status"] == "reverted" for r in seen), "undo at expiry")
        runner.stop.set()
    assert set(states(backend, jobs.values()).values()) == {"RUNNING"}
    statuses = [r["status"] for r in results(settings, read_topic) if r["action_id"] == "shed-1"]
    assert statuses == ["executed", "verified", "reverted"]
    executed = next(r for r in seen if r["status"] == "executed")
    assert executed["observed_delta_kw"] == pytest.approx(-shed)
    assert "inference" not in executed["observed_effect"]


def test_hold_and_release_of_pending_jobs_by_undo_of(kafka_settings, slurm, jobs, read_topic):
    waiting = submit(slurm, "batch", 8, "too-big-for-now")  # pending: the GPUs are busy
    backend = ScontrolBackend(slurm.env)
    try:
        policy = load_policy(kafka_settings.policy)
        hold = action("hold-1", "slurm_hold", target="opsloop", partitions="batch", life_s=600)
        release = action("release-1", "slurm_release", target="opsloop", partitions="batch", undo_of="hold-1")
        sink = SlurmSink(kafka_settings, policy, backend=backend)
        seen = watch(sink)
        publish(kafka_settings, "actions.approved", "ApprovedAction", [approved(hold)])
        with Running(sink):
            wait_for(lambda: any(r["status"] == "verified" for r in seen), "hold verified")
            reason = slurm.run("squeue", "-h", "-j", waiting, "-o", "%r").strip()
            assert reason.startswith("JobHeld")
            publish(kafka_settings, "actions.approved", "ApprovedAction", [approved(release)])
            wait_for(lambda: any(r["action_id"] == "release-1" for r in seen), "release")
        reason = slurm.run("squeue", "-h", "-j", waiting, "-o", "%r").strip()
        assert not reason.startswith("JobHeld")
        assert [r["status"] for r in seen if r["action_id"] == "release-1"] == ["executed"]
    finally:
        slurm.run("scancel", waiting)


def test_a_shedding_action_touches_no_more_gpus_than_it_declared(kafka_settings, slurm, jobs):
    """The guard charges the declared GPUs to the Slurm budget; the sink must not take more than that."""
    backend = ScontrolBackend(slurm.env)
    sink = SlurmSink(kafka_settings, load_policy(kafka_settings.policy), backend=backend)
    greedy = action("declared", "slurm_suspend", target="opsloop", partitions="batch,train-b", shed_kw=100.0, gpus=2)
    status, record, _undo = sink.execute(greedy)  # 100 kW asks for every flexible job; 2 GPUs allow one
    suspended = [j for j in backend.jobs() if j.job_id in jobs.values() and j.state == "SUSPENDED"]
    assert status == "executed" and sum(j.gpus for j in suspended) == 2, (record, suspended)


def test_job_ids_never_reach_a_command_line_unchecked(slurm):
    backend = ScontrolBackend(slurm.env)
    for bad in ("1; rm -rf /", "$(reboot)", "-1", "12 13", ""):
        with pytest.raises(SlurmError, match="refusing job id"):
            backend.act("hold", bad)


class ResumedBehindOurBack(ScontrolBackend):
    """Real Slurm, plus someone who resumes every job right after we suspend it (an operator, a script)."""

    def act(self, command: str, job_id: str) -> None:
        super().act(command, job_id)
        if command == "suspend":
            super().act("resume", job_id)


def test_an_effect_that_does_not_show_fails_verification_is_reverted_and_raises_an_alarm(kafka_settings, slurm, jobs,
                                                                                         read_topic):
    settings = kafka_settings.replace(verify_window_s=0.0)  # the state must already show at the first check
    policy = load_policy(settings.policy)
    backend = ResumedBehindOurBack(slurm.env)
    suspend = action("meddled", "slurm_suspend", target="opsloop", partitions="batch", max_jobs=1, shed_kw=0.5)
    sink = SlurmSink(settings, policy, backend=backend)
    seen = watch(sink)
    publish(settings, "actions.approved", "ApprovedAction", [approved(suspend)])
    with Running(sink):
        wait_for(lambda: any(r["status"] == "reverted" for r in seen), "revert after failed verification")
    assert [r["status"] for r in results(settings, read_topic) if r["action_id"] == "meddled"] == [
        "executed", "failed", "reverted"]
    failed = next(r for r in seen if r["status"] == "failed")
    assert "is RUNNING (expected SUSPENDED)" in failed["observed_effect"]
    codec = Codec.default()
    [alarm] = [codec.decode_as("Alarm", m.value()) for m in read_topic(settings, "alarms.raw")]
    assert (alarm["code"], alarm["device_type"], alarm["attributes"]["action_id"]) == (
        "ACTION_VERIFY_FAILED", "slurm", "meddled")
    assert set(states(backend, jobs.values()).values()) == {"RUNNING"}


def reservations(slurm, name: str) -> list[str]:
    """The ``scontrol -o show reservation`` lines called ``name`` (read in UTC)."""
    out = subprocess.run(["scontrol", "-o", "show", "reservation"], env={**slurm.env, "TZ": "UTC"},
                         capture_output=True, text=True, timeout=30).stdout
    return [line for line in out.splitlines() if line.startswith(f"ReservationName={name} ")]


def test_an_approved_maintenance_window_reserves_its_node_once_and_outlives_the_proposal(kafka_settings, slurm,
                                                                                       read_topic):
    start_s = (int(time.time()) // 3600 + 2) * 3600  # a whole hour, as the planner proposes
    window = dict(nodes=slurm.host, start_ms=start_s * 1000, end_ms=(start_s + 4 * 3600) * 1000)
    reserve = action("maint-test-1", "slurm_reserve", target=slurm.host, life_s=start_s - time.time(), **window)
    reserve["expires_ms"] = window["start_ms"]  # the proposal lives until the window starts
    retried = action("maint-test-2", "slurm_reserve", target=slurm.host, life_s=start_s - time.time(), **window)
    retried["expires_ms"] = window["start_ms"]
    name, retried_name = "opsloop-maint-test-1", "opsloop-maint-test-2"
    policy, shift_s = load_policy(kafka_settings.policy), [0.0]
    sink = SlurmSink(kafka_settings, policy, backend=ScontrolBackend(slurm.env), clock=lambda: time.time() + shift_s[0])
    seen = watch(sink)
    try:
        publish(kafka_settings, "actions.approved", "ApprovedAction", [approved(reserve)])
        with Running(sink):
            wait_for(lambda: any(r["status"] == "verified" for r in seen), "reservation verified")
            publish(kafka_settings, "actions.approved", "ApprovedAction", [approved(reserve)])  # a replay
            wait_for(lambda: sink.stats["skipped_duplicates"] == 1, "replay skipped")
            shift_s[0] = start_s - time.time() + 60  # the sink's clock past the proposal's expiry (the window start)
            wait_for(lambda: sink._last_check_ms > reserve["expires_ms"], "housekeeping after the expiry")
        [line] = reservations(slurm, name)
        assert f" Nodes={slurm.host} " in line and " Users=root " in line and "MAINT" in line
        assert f"StartTime={time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(start_s))} " in line
        assert f"EndTime={time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(start_s + 4 * 3600))} " in line
        statuses = [r["status"] for r in results(kafka_settings, read_topic) if r["action_id"] == "maint-test-1"]
        assert statuses == ["executed", "verified"]  # nothing reverted at the expiry

        # a crash after creating but before recording; the restarted sink finds it by name and makes no second one
        restarted = SlurmSink(kafka_settings, policy, backend=ScontrolBackend(slurm.env))
        seen = watch(restarted)
        restarted.ledger.start(retried)
        restarted.backend.reserve(requested(retried))
        publish(kafka_settings, "actions.approved", "ApprovedAction", [approved(retried)])
        with Running(restarted):
            wait_for(lambda: any(r["status"] == "verified" for r in seen), "retried reservation verified")
        assert len(reservations(slurm, retried_name)) == 1 and len(reservations(slurm, name)) == 1
        assert "not created again" in seen[0]["detail"] and restarted.stats["reconciled"] == 1
    finally:
        for reservation in (name, retried_name):
            subprocess.run(["scontrol", "delete", f"ReservationName={reservation}"], env=slurm.env,
                           capture_output=True, timeout=30)


def test_a_reservation_the_guard_should_have_refused_is_not_made(kafka_settings, slurm):
    """The device end checks again: a window already started, or a node name that is no host name."""
    sink = SlurmSink(kafka_settings, load_policy(kafka_settings.policy), backend=ScontrolBackend(slurm.env))
    now_s = int(time.time())
    started = action("maint-late", "slurm_reserve", target=slurm.host, nodes=slurm.host, start_ms=(now_s - 60) * 1000,
                     end_ms=(now_s + 3600) * 1000)
    hostile = action("maint-hostile", "slurm_reserve", target=slurm.host, nodes=f"{slurm.host} Users=nobody",
                     start_ms=(now_s + 3600) * 1000, end_ms=(now_s + 7200) * 1000)
    try:
        with pytest.raises(SlurmError, match="must start ahead of now"):
            sink.execute(started)
        with pytest.raises(SlurmError, match="refusing node name"):
            sink.execute(hostile)
        assert not reservations(slurm, "opsloop-maint-late") and not reservations(slurm, "opsloop-maint-hostile")
    finally:
        sink.close()
