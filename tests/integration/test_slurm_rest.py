"""The slurmrestd backend against the real local Slurm and its real slurmrestd (JWT auth, unprivileged user)."""

from __future__ import annotations

import time

import pytest

from actuation import Running, action, approved, publish, results, watch
from opsloop.connectors.slurm import ScontrolBackend, SlurmError, UnsupportedCommand
from opsloop.streams.slurm_sink import SlurmSink
from opsloop.connectors.slurm_backends import make_backend
from opsloop.connectors.slurm_rest import RestBackend
from opsloop.config.policy import load_policy
from opsloop.config.settings import Settings

pytestmark = pytest.mark.integration
SAFETY_NET_S = 90.0


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + SAFETY_NET_S  # safety net only: reaching it fails the test
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.2)


def submit(slurm, partition: str, name: str, *extra: str) -> str:
    out = slurm.run("sbatch", "--parsable", "-p", partition, "--gres=gpu:1", "-o", "/dev/null", "-J", name, *extra,
                    "--wrap", "sleep 900")
    return out.strip().split(";")[0]


def squeue(slurm, job_id: str, fmt: str) -> str:
    return slurm.run("squeue", "-h", "-j", job_id, "-o", fmt).strip()


@pytest.fixture(scope="module")
def rest(slurm) -> RestBackend:
    slurm.start_rest()
    return make_backend(Settings(slurm_backend="slurmrestd", slurm_rest_url=slurm.rest_url),
                        env={"SLURM_JWT": slurm.rest_token(lifespan_s=1800)})


@pytest.fixture
def later(slurm):
    """A job that stays pending (it may start only in an hour)."""
    job_id = submit(slurm, "batch", "later", "--begin=now+3600")
    yield job_id
    slurm.run("scancel", job_id)


def test_rest_lists_the_jobs_squeue_lists(slurm, rest, later):
    assert isinstance(rest, RestBackend) and rest.user == "root"
    by_rest = {j.job_id: j for j in rest.jobs()}
    by_squeue = {j.job_id: j for j in ScontrolBackend(slurm.env).jobs()}
    assert by_rest[later] == by_squeue[later]
    assert (by_rest[later].partition, by_rest[later].state, by_rest[later].gpus) == ("batch", "PENDING", 1)
    assert rest.slurm_release.startswith("22.05")  # learnt from the server, as the errors below quote it


def test_hold_and_release_through_rest_show_in_squeue(slurm, rest, later):
    rest.act("hold", later)
    assert squeue(slurm, later, "%r").startswith("JobHeld") and squeue(slurm, later, "%Q") == "0"
    rest.act("release", later)
    assert not squeue(slurm, later, "%r").startswith("JobHeld") and int(squeue(slurm, later, "%Q")) > 0


def test_bad_ids_and_bad_tokens_are_refused_clearly(slurm, rest):
    for bad in ("1; rm -rf /", "../jobs", "12 13"):
        with pytest.raises(SlurmError, match="refusing job id"):
            rest.act("hold", bad)
    with pytest.raises(SlurmError, match="is SLURM_JWT a valid, unexpired token for user 'root'"):
        RestBackend(slurm.rest_url, "not-a-token", user="root").jobs()
    with pytest.raises(SlurmError, match="SLURM_JWT"):
        make_backend(Settings(slurm_backend="slurmrestd", slurm_rest_url=slurm.rest_url), env={})


@pytest.mark.parametrize("command", ["suspend", "resume", "requeuehold"])
def test_what_the_api_lacks_is_refused_naming_the_version_and_the_alternative(rest, command):
    with pytest.raises(UnsupportedCommand, match=r"Slurm 22\.05.*slurm_backend=scontrol"):
        rest.act(command, "1")


def test_sink_holds_through_rest_and_reports_an_unsupported_suspend_as_failed(kafka_settings, slurm, rest, later,
                                                                              read_topic):
    running = submit(slurm, "batch", "busy")
    try:
        wait_for(lambda: squeue(slurm, running, "%T") == "RUNNING", "the busy job runs")
        policy = load_policy(kafka_settings.policy)
        hold = action("rest-hold", "slurm_hold", target="opsloop", partitions="batch", job_ids=[later], life_s=600)
        suspend = action("rest-suspend", "slurm_suspend", target="opsloop", partitions="batch", job_ids=[running],
                         shed_kw=0.5)
        sink = SlurmSink(kafka_settings, policy, backend=rest)
        seen = watch(sink)
        publish(kafka_settings, "actions.approved", "ApprovedAction", [approved(hold), approved(suspend)])
        with Running(sink) as runner:
            wait_for(lambda: {("rest-hold", "verified"), ("rest-suspend", "failed")}
                     <= {(r["action_id"], r["status"]) for r in seen}, "hold verified, suspend failed")
            runner.stop.set()
        assert squeue(slurm, later, "%r").startswith("JobHeld")
        assert squeue(slurm, running, "%T") == "RUNNING"  # the refused suspend touched nothing
        published = [r for r in results(kafka_settings, read_topic) if r["action_id"] == "rest-suspend"]
        assert [r["status"] for r in published] == ["failed"]
        assert "Slurm 22.05" in published[0]["detail"] and "slurm_backend=scontrol" in published[0]["detail"]
    finally:
        slurm.run("scancel", running)
