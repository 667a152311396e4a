"""Issue 17's shedding target end to end: a quarter of the flexible GPU power shed and verified within 30 s of
the operator's approval, held for the period asked, then given back; no request fails under a 50% LLM shift.

The run itself is ``opsloop.ops.bench.flex.measure`` (also ``opsloop bench --suite flex``): a dp job
(4 nodes, min 2) and a tp job on the four-node Slurm, two llama.cpp servers behind HAProxy under load
from ``hey``, the guard asking and an operator approving a shrink and a 50% shift on Kafka, the Slurm
and LLM sinks acting.
"""

from __future__ import annotations

import json
import shutil

import pytest

from opsloop.config.policy import load_policy
from opsloop.config.site import load_site
from opsloop.ops.bench.flex import OPERATOR, measure
from opsloop.schemas.codec import Codec
from test_llm_lever import balanced_llms, lever_settings  # noqa: F401  (a fixture, shared)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_shrink_and_a_50_percent_shift_shed_a_quarter_of_flexible_power_within_30_s_and_hold(
        kafka_settings, slurm_nodes, balanced_llms, read_topic, tmp_path):
    if shutil.which("hey") is None:
        pytest.skip("hey is not installed (make system-deps)")
    balancer, _servers = balanced_llms
    settings = lever_settings(kafka_settings, balancer).replace(verify_window_s=30.0)
    run = measure(settings, load_policy(settings.policy), load_site(settings.topology), slurm_nodes, balancer,
                  tmp_path, hold_s=60)
    print(f"\nflex shed: {json.dumps(run.report)}")

    # the guard asked, the operator approved: the sinks acted on the guard's signed verdicts only
    codec, verdicts = Codec.default(), {}
    for message in read_topic(settings, "actions.approved"):
        record = codec.decode_as("ApprovedAction", message.value())
        verdicts.setdefault(record["action"]["action_id"], []).append((record["verdict"], record["approved_by"]))
    asked_then_approved = [("needs_approval", None), ("approved", OPERATOR)]
    assert verdicts == {"flex-shrink": asked_then_approved, "flex-shift": asked_then_approved}

    assert run.report["shed_share"] >= 0.25
    assert all(t - run.approved_at <= 30.0 for t in run.verified_at.values())
    assert run.held and all(a and b for _t, a, b in run.held), f"not held: {[h for h in run.held if not all(h[1:])]}"
    assert all(t >= run.expiry[s] for s, t in run.reverted_at.items())  # given back at expiry, not before
    assert run.statuses == {"slurm": ["executed", "verified", "reverted"], "llm": ["executed", "verified", "reverted"]}
    assert run.weights_after == {"large": 100, "small": 0} and not run.hold_left
    assert run.tp_untouched
    # no request failed: every answer hey got was a 200, every request the balancer took was answered 2xx
    # with no abort on either side, and hey got an answer for each of them
    assert run.report["failed"] == 0 and run.report["under_shift"] >= 8
    assert run.balancer["requests"] == run.balancer["2xx"] == len(run.rows)
    assert run.balancer["client_aborts"] == run.balancer["server_aborts"] == run.balancer["response_errors"] == 0
    assert run.balancer["connection_errors"] == 0
