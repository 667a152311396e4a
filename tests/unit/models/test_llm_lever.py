"""The LLM-serving lever's pure parts: weights, plans, the SLO check, the shed estimate, and the guard's verdicts.

Property: no llm_shift or llm_cap the guard approves breaks a limit of the policy, whatever the
action, the limits, the mode or the actions already holding."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from opsloop.config.policy import KindRule, LlmLimits, PcsLimits, Policy, SlurmLimits
from opsloop.models.guard import (APPROVED, LLM_LEVER_BUSY, NEEDS_APPROVAL, NO_LLM_POLICY, OVER_MAX_DURATION,
                                  OVER_SHIFT_LIMIT, REASON_CODES, REJECTED, UNDER_MIN_MAXCONN, PlantState, decide,
                                  llm_servers)
from opsloop.models.llm_lever import (SLO_BREACH, SLO_UNKNOWN, WITHIN_SLO, BalancerLoad, EnergyPerToken, applied,
                                      balancer_load, cap_shed_kw, histogram_buckets, interval_quantile,
                                      lever_plan, shift_shed_kw, shifted_weights, slo_verdict)

pytestmark = pytest.mark.unit
NOW = 1_780_000_000_000
LIMITS = LlmLimits(max_shift_pct=60, min_maxconn=2, max_duration_s=3600, slo_ttfb_s=2.0, slo_queue=8)


def policy(limits: LlmLimits | None = LIMITS, mode: str = "auto") -> Policy:
    return Policy(3, 600, PcsLimits(4000, 2500, 15, 80, 3600), SlurmLimits(("batch",), (), 10, 40, 3600),
                  {"llm_shift": KindRule(mode), "llm_cap": KindRule(mode)}, llm=limits)


def shift(pct="50", life_s=600, **params) -> dict:
    return {"action_id": "s1", "kind": "llm_shift", "target": "llm", "site": "demo", "expires_ms": NOW + life_s * 1000,
            "params": {"shift_pct": pct, **params}}


def cap(maxconn="4", servers="large", life_s=600) -> dict:
    return {"action_id": "c1", "kind": "llm_cap", "target": "llm", "site": "demo", "expires_ms": NOW + life_s * 1000,
            "params": {"maxconn": maxconn, "servers": servers}}


# -- weights and plans --------------------------------------------------------------------------------------------

@given(st.integers(0, 256), st.integers(0, 256), st.floats(0, 100))
def test_a_shift_moves_the_asked_share_of_the_large_servers_traffic(large, small, pct):
    if large + small == 0:
        with pytest.raises(ValueError):
            shifted_weights(large, small, pct)
        return
    new_large, new_small = shifted_weights(large, small, pct)
    assert new_large + new_small == 100 and new_large >= 0 and new_small >= 0
    expected = large / (large + small) * (1 - pct / 100)
    assert abs(new_large / 100 - expected) <= 0.005 + 1e-9  # rounded to whole percent


def test_a_shift_plan_raises_the_small_server_first_and_its_undo_restores_the_large_one_first():
    changes, undo = lever_plan("llm_shift", {"shift_pct": "50"}, {"large": (100, 64), "small": (0, 64)})
    assert changes == [["weight", "small", 50], ["weight", "large", 50]]
    assert undo == [["weight", "large", 100], ["weight", "small", 0]]
    assert applied(changes, {"large": (50, 64), "small": (50, 64)})
    assert not applied(changes, {"large": (100, 64), "small": (0, 64)})


def test_a_cap_never_raises_a_lower_limit_and_treats_zero_as_no_limit():
    changes, undo = lever_plan("llm_cap", {"maxconn": "4", "servers": "a,b,c"}, {"a": (1, 64), "b": (1, 2), "c": (1, 0)})
    assert changes == [["maxconn", "a", 4], ["maxconn", "b", 2], ["maxconn", "c", 4]]
    assert undo == [["maxconn", "a", 64], ["maxconn", "b", 2], ["maxconn", "c", 0]]


def test_a_plan_naming_a_server_the_balancer_lacks_is_refused_with_the_servers_it_has():
    with pytest.raises(ValueError, match="no server 'huge'.*it has large, small"):
        lever_plan("llm_shift", {"shift_pct": "50", "large": "huge"}, {"large": (100, 64), "small": (0, 64)})


# -- the SLO check ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("load, code, words", [
    (BalancerLoad(0, 0.0, 0.0, 0.5), WITHIN_SLO, "first byte in 0.5 s (SLO 2 s), 0 queued (SLO 8)"),
    (BalancerLoad(0, 1.5, 0.0, 0.6), SLO_BREACH, "first byte in 2.1 s, over the SLO of 2 s"),
    (BalancerLoad(9, 0.0, 0.0, 0.1), SLO_BREACH, "9 requests queued, over the SLO of 8"),
    (BalancerLoad(8, 0.0, 0.0, 2.0), WITHIN_SLO, "first byte in 2 s (SLO 2 s), 8 queued (SLO 8)"),
    (None, SLO_UNKNOWN, "the balancer's metrics could not be read"),
])
def test_the_slo_check_says_why_with_a_code(load, code, words):
    verdict = slo_verdict(load, LIMITS.slo_ttfb_s, LIMITS.slo_queue)
    assert (verdict.code, verdict.text) == (code, words)
    assert verdict.breached == (code != WITHIN_SLO)


def test_both_breaches_are_named():
    assert slo_verdict(BalancerLoad(20, 3.0, 0.0, 0.0), 2.0, 8).text == \
        "first byte in 3 s, over the SLO of 2 s; 20 requests queued, over the SLO of 8"


def test_the_load_is_read_for_the_named_backend_only():
    samples = [(name, {"proxy": proxy}, value) for proxy, value in (("other", 50.0), ("llm", 1.0)) for name in (
        "haproxy_backend_current_queue", "haproxy_backend_queue_time_average_seconds",
        "haproxy_backend_connect_time_average_seconds", "haproxy_backend_response_time_average_seconds")]
    assert balancer_load(samples, "llm") == BalancerLoad(1.0, 1.0, 1.0, 1.0)
    assert balancer_load(samples, "absent") is None


# -- the shed estimate --------------------------------------------------------------------------------------------

def test_the_energy_model_is_linear_in_model_size_with_the_stated_default():
    energy = EnergyPerToken()
    assert energy.joules_per_token(65) == pytest.approx(3.25)  # Samsi et al.: 3-4 J/token for LLaMA-65B
    assert EnergyPerToken(0.1).joules_per_token(10) == pytest.approx(1.0)


def test_a_shift_sheds_the_energy_difference_of_the_tokens_it_moves():
    assert shift_shed_kw(2000, 50, 70, 8) == pytest.approx(1000 * (3.5 - 0.4) / 1000)
    assert shift_shed_kw(2000, 0, 70, 8) == 0
    assert shift_shed_kw(2000, 50, 8, 70) == 0  # "shifting" to a larger model sheds nothing


def test_a_cap_sheds_the_share_of_tokens_it_defers():
    assert cap_shed_kw(1000, 16, 4, 70) == pytest.approx(1000 * 0.75 * 3.5 / 1000)
    assert cap_shed_kw(1000, 0, 4, 70) == 0


# -- the guard's verdicts -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("action, code", [
    (shift("80"), OVER_SHIFT_LIMIT),
    (shift("50", life_s=7200), OVER_MAX_DURATION),
    (cap("1"), UNDER_MIN_MAXCONN),
    (shift("lots"), "invalid_params"),
    (shift("0"), "invalid_params"),
    (shift("50", large="a", small="a"), "invalid_params"),
    (cap("4", servers=""), "invalid_params"),
    (cap("four"), "invalid_params"),
])
def test_llm_rejections_carry_their_code_and_a_sentence(action, code):
    decision = decide(action, PlantState(), policy(), NOW)
    assert decision.verdict == REJECTED and decision.reason_codes == (code,)
    assert decision.reasons[0] and set(decision.reason_codes) <= REASON_CODES


def test_without_an_llm_section_the_lever_is_off():
    decision = decide(shift(), PlantState(), policy(None), NOW, operator="alice")
    assert (decision.verdict, decision.reason_codes) == (REJECTED, (NO_LLM_POLICY,))


def test_modes_decide_what_a_valid_llm_action_becomes():
    assert decide(shift(), PlantState(), policy(mode="auto"), NOW).verdict == APPROVED
    assert decide(cap(), PlantState(), policy(mode="approve"), NOW).verdict == NEEDS_APPROVAL
    assert decide(cap(), PlantState(), policy(mode="approve"), NOW, operator="alice").verdict == APPROVED
    assert decide(shift(), PlantState(), policy(mode="advise"), NOW).reason_codes == ("advise_only",)


def test_one_shift_per_backend_at_a_time_but_a_cap_beside_it_and_an_expired_one_do_not_count():
    earlier = {**shift(), "action_id": "s0"}
    busy = decide(shift(), PlantState(llm_holding=(earlier,)), policy(), NOW)
    assert busy.reason_codes == (LLM_LEVER_BUSY,)
    assert decide(cap(), PlantState(llm_holding=(earlier,)), policy(), NOW).verdict == APPROVED
    expired = {**earlier, "expires_ms": NOW}
    assert decide(shift(), PlantState(llm_holding=(expired,)), policy(), NOW).verdict == APPROVED
    other_backend = {**earlier, "target": "llm-eu"}
    assert decide(shift(), PlantState(llm_holding=(other_backend,)), policy(), NOW).verdict == APPROVED


llm_limits = st.builds(LlmLimits, max_shift_pct=st.floats(1, 100), min_maxconn=st.integers(1, 64),
                       max_duration_s=st.floats(60, 7200), slo_ttfb_s=st.floats(0.1, 10), slo_queue=st.integers(0, 50))
numbers = st.one_of(st.floats(-10, 200), st.integers(-5, 300)).map(str)
llm_actions = st.builds(
    lambda kind, action_id, target, pct, maxconn, servers, large, small, life_s: {
        "action_id": action_id, "kind": kind, "target": target, "site": "demo",
        "expires_ms": NOW + int(life_s * 1000),
        "params": ({"shift_pct": pct, "large": large, "small": small} if kind == "llm_shift"
                   else {"maxconn": maxconn, "servers": servers})},
    st.sampled_from(["llm_shift", "llm_cap"]), st.sampled_from(["a1", "a2", "a3"]), st.sampled_from(["llm", "llm-eu"]),
    st.one_of(numbers, st.just("nan"), st.just("")), st.one_of(numbers, st.just("")),
    st.sampled_from(["large", "large,small", "", " , ", "small"]), st.sampled_from(["large", "small"]),
    st.sampled_from(["small", "large"]), st.floats(-60, 10_000))


@settings(max_examples=1500, deadline=None)
@given(llm_actions, st.one_of(st.none(), llm_limits), st.sampled_from(["advise", "approve", "auto"]),
       st.lists(llm_actions, max_size=3), st.sampled_from([None, "op"]))
def test_an_approved_llm_action_breaks_no_limit(action, limits, mode, holding, operator):
    decision = decide(action, PlantState(llm_holding=tuple(holding)), policy(limits, mode), NOW, operator)
    assert len(decision.reasons) == len(decision.reason_codes) and set(decision.reason_codes) <= REASON_CODES
    if decision.verdict != APPROVED:
        return
    assert limits is not None and (mode == "auto" or operator)
    assert 0 < (action["expires_ms"] - NOW) / 1000 <= limits.max_duration_s
    params = action["params"]
    if action["kind"] == "llm_shift":
        assert 0 < float(params["shift_pct"]) <= limits.max_shift_pct and not math.isnan(float(params["shift_pct"]))
        assert len(set(llm_servers(action))) == 2
    else:
        assert int(params["maxconn"]) >= limits.min_maxconn and llm_servers(action)
    assert not [h for h in holding if h["kind"] == action["kind"] and h["target"] == action["target"]
                and h["action_id"] != action["action_id"] and h["expires_ms"] > NOW]


# -- vLLM's time to first token, where vLLM serves ----------------------------------------------------------------

INF = float("inf")


def test_the_p99_counts_only_what_the_histogram_saw_since_the_previous_read():
    before = {0.25: 1000, 1.0: 1000, 4.0: 1000, INF: 1000}  # a thousand fast requests long ago
    now = {0.25: 1000, 1.0: 1000, 4.0: 1100, INF: 1100}  # then a hundred between 1 and 4 s
    assert interval_quantile(0.99, before, now) == pytest.approx(1.0 + 3.0 * 0.99)


def test_a_quantile_in_the_open_top_bucket_is_the_highest_finite_bound_and_a_reset_tells_nothing():
    assert interval_quantile(0.99, {1.0: 0, INF: 0}, {1.0: 1, INF: 10}) == 1.0
    assert interval_quantile(0.99, {1.0: 10, INF: 10}, {1.0: 2, INF: 2}) is None


def test_vllm_buckets_add_up_over_models_and_feed_the_slo_check():
    samples = [("vllm:time_to_first_token_seconds_bucket", {"le": "1.0", "model_name": m}, 4.0) for m in "ab"]
    assert histogram_buckets(samples) == {1.0: 8.0}
    slow = BalancerLoad(0, 0.0, 0.0, 0.1, p99_ttft_s=3.0)
    verdict = slo_verdict(slow, 2.0, 8)
    assert (verdict.code, verdict.text) == (SLO_BREACH, "vLLM's p99 time to first token 3 s, over the SLO of 2 s")
    assert not slo_verdict(BalancerLoad(0, 0.0, 0.0, 0.1, p99_ttft_s=1.5), 2.0, 8).breached
