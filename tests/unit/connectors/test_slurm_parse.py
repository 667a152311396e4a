"""Parsing squeue output and refusing anything that is not a job id; no Slurm needed."""

from __future__ import annotations

import pytest

from opsloop.connectors.slurm import ScontrolBackend, SlurmError, parse_gpus, parse_squeue

from opsloop.connectors.slurm_backends import make_backend
from opsloop.config.settings import Settings

pytestmark = pytest.mark.unit


def test_squeue_rows_become_jobs_and_names_may_hold_the_separator():
    text = ("12|batch|RUNNING|4294901758|gres:gpu:2|sweep|a;b\n"
            "13_4|inference|PENDING|10|N/A|serve\n"
            "garbage\n")
    jobs = parse_squeue(text)
    assert [(j.job_id, j.partition, j.state, j.priority, j.gpus, j.name) for j in jobs] == [
        ("12", "batch", "RUNNING", 4294901758, 2, "sweep|a;b"), ("13_4", "inference", "PENDING", 10, 0, "serve")]


@pytest.mark.parametrize("tres, gpus", [("gres:gpu:2", 2), ("gres/gpu:a100:4", 4), ("gres/gpu=8", 8), ("N/A", 0),
                                        ("", 0)])
def test_gpus_per_node(tres, gpus):
    assert parse_gpus(tres) == gpus


@pytest.mark.parametrize("job_id", ["1; rm -rf /", "$(id)", "-1", "1 2", "", "12\n"])
def test_job_ids_are_checked_before_any_command(job_id):
    with pytest.raises(SlurmError, match="refusing job id"):
        ScontrolBackend(env={"PATH": "/nonexistent"}).act("hold", job_id)


def test_backends_are_chosen_by_settings_and_say_what_they_lack():
    assert isinstance(make_backend(Settings(), env={}), ScontrolBackend)
    with pytest.raises(SlurmError, match="needs a JWT in env SLURM_JWT"):
        make_backend(Settings(slurm_backend="slurmrestd"), env={})
    with pytest.raises(SlurmError, match="unknown Slurm backend 'slurm'.*scontrol, slurmrestd, pyslurm"):
        make_backend(Settings(slurm_backend="slurm"), env={})


def test_a_reservation_line_read_in_utc_becomes_a_reservation():
    from opsloop.connectors.slurm import parse_reservation

    line = ("ReservationName=opsloop-maint-1 StartTime=2026-12-06T03:00:00 EndTime=2026-12-06T07:00:00 "
            "Duration=04:00:00 Nodes=gpu[1-2] NodeCnt=2 Flags=MAINT,IGNORE_JOBS,SPEC_NODES Users=root State=INACTIVE")
    got = parse_reservation(line, ("gpu2", "gpu1"))
    assert (got.name, got.nodes, got.end_s - got.start_s, got.flags) == (
        "opsloop-maint-1", ("gpu1", "gpu2"), 4 * 3600, ("MAINT", "IGNORE_JOBS", "SPEC_NODES"))
    assert got.start_s == 1796526000  # 2026-12-06 03:00 UTC


@pytest.mark.parametrize("node", ["a b", "gpu[1-2]", "-x", "", "n;id"])
def test_node_names_never_reach_a_command_line_unchecked(node):
    from opsloop.connectors.slurm import check_node_name

    with pytest.raises(SlurmError, match="refusing node name"):
        check_node_name(node)
