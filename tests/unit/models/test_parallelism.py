"""Which jobs a shrink naming only a partition takes nodes from (``parallelism.choose_releases``)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from opsloop.models.parallelism import CODES, JobShape, choose_releases, declared

pytestmark = pytest.mark.unit
NODES = [f"n{i}" for i in range(1, 9)]

shapes = st.builds(
    lambda job_id, state, nodes, gpus, comment: JobShape(str(job_id), state, "batch", tuple(nodes), gpus, comment),
    st.integers(1, 999), st.sampled_from(["RUNNING"] * 4 + ["PENDING", "SUSPENDED"]),
    st.lists(st.sampled_from(NODES), min_size=0, max_size=8, unique=True), st.integers(0, 8),
    st.one_of(st.sampled_from(["opsloop:dp", "opsloop:tp", "opsloop:ep", "", "opsloop:dp opsloop:tp"]),
              st.integers(0, 9).map(lambda m: f"opsloop:dp:min={m}")))


@settings(max_examples=1000, deadline=None)
@given(st.lists(shapes, max_size=6, unique_by=lambda s: s.job_id), st.integers(0, 64), st.integers(1, 5))
def test_a_pick_releases_no_more_than_asked_only_from_running_dp_jobs_above_their_minimum(jobs, gpus, max_jobs):
    releases, problems = choose_releases(jobs, gpus, max_jobs)
    assert bool(releases) != bool(problems) and {code for code, _ in problems} <= CODES
    assert sum(r.gpus for r in releases) <= gpus and len(releases) <= max_jobs
    freed = [node for r in releases for node in r.shape.nodes[r.keep:]]
    assert len(freed) == len(set(freed))  # no node held free for two jobs
    for r in releases:
        assert r.shape.state == "RUNNING" and declared(r.shape.comment).kind == "dp" and r.gpus > 0
        assert declared(r.shape.comment).min_nodes <= r.keep < len(r.shape.nodes)


def test_the_job_with_the_most_gpus_above_its_minimum_gives_first():
    small = JobShape("1", "RUNNING", "batch", ("n1", "n2", "n3"), 8, "opsloop:dp:min=2")  # 8 GPUs above min
    large = JobShape("2", "RUNNING", "batch", ("n4", "n5", "n6", "n7"), 8, "opsloop:dp")  # 24 above min
    releases, _ = choose_releases([small, large], gpus=32, max_jobs=4)
    assert [(r.shape.job_id, r.keep) for r in releases] == [("2", 1), ("1", 2)]
    assert [(r.shape.job_id, r.keep) for r in choose_releases([small, large], gpus=16, max_jobs=4)[0]] == [("2", 2)]
    assert [r.shape.job_id for r in choose_releases([small, large], gpus=32, max_jobs=1)[0]] == ["2"]


def test_nothing_to_give_says_why():
    tp = JobShape("3", "RUNNING", "batch", ("n1", "n2"), 8, "opsloop:tp")
    at_min = JobShape("4", "RUNNING", "batch", ("n3", "n4"), 8, "opsloop:dp:min=2")
    assert choose_releases([tp, at_min], gpus=16, max_jobs=4) == ([], [(
        "no_elastic_job", "no running opsloop:dp job with GPUs runs on more nodes than its declared minimum: "
                          "nothing to release")])
    dp = JobShape("5", "RUNNING", "batch", ("n5", "n6"), 8, "opsloop:dp")
    assert choose_releases([dp], gpus=4, max_jobs=4)[1][0] == (
        "node_over_gpus", "the smallest node an opsloop:dp job could release holds 8 GPUs, more than the 4 this action "
                          "may release")
