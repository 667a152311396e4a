"""The guard's verdicts. Properties: no approved action ever breaks a limit of the policy, and the Slurm
actions approved for a site within any budget window stay within the budget together."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from opsloop.models.battery import Battery
from opsloop.models.guard import (APPROVED, NEEDS_APPROVAL, REASON_CODES, REJECTED, Decision, EssState, PlantState,
                                  SlurmSpend, action_limits, decide, operator_rejection, revert_approval)
from opsloop.models.jobs import Job, select_jobs
from opsloop.config.policy import KindRule, PcsLimits, Policy, SlurmLimits, Window

pytestmark = pytest.mark.unit
NOW = 1_780_000_000_000  # a Tuesday
PARTITIONS = ["batch", "train-a", "train-b", "inference", "debug"]

pcs_limits = st.builds(PcsLimits, max_kw=st.floats(10, 5000), ramp_kw_per_min=st.floats(10, 5000),
                       reserve_soc_pct=st.floats(0, 50), min_soh_pct=st.floats(50, 100),
                       max_duration_s=st.floats(60, 7200), max_soc_pct=st.floats(51, 100))
slurm_limits = st.builds(
    lambda touch, prot, jobs, gpuh, hold: SlurmLimits(tuple(touch), tuple(p for p in prot if p not in touch), jobs,
                                                      gpuh, hold),
    st.lists(st.sampled_from(PARTITIONS), unique=True, min_size=1, max_size=4), st.lists(st.sampled_from(PARTITIONS), unique=True),
    st.integers(1, 30), st.floats(1, 500), st.floats(60, 7200))
modes = st.sampled_from(["advise", "approve", "auto"])
policies = st.builds(lambda pcs, slurm, mode_by_kind, age: Policy(1, 600, pcs, slurm, mode_by_kind, age),
                     pcs_limits, slurm_limits,
                     st.fixed_dictionaries({kind: modes.map(KindRule) for kind in (
                         "pcs_discharge", "pcs_charge", "pcs_idle", "slurm_hold", "slurm_requeue", "slurm_suspend",
                         "slurm_release", "slurm_resume")}),
                     st.floats(10, 600))
def batteries(capacity_kwh) -> st.SearchStrategy[Battery]:
    """Ratings the guard reads (capacity, efficiency); the PCS ratings are the policy's business here."""
    return st.builds(Battery, capacity_kwh=capacity_kwh, pcs_charge_kw=st.just(1e9), pcs_discharge_kw=st.just(1e9),
                     round_trip_efficiency=st.floats(0.7, 1.0))


ess_states = st.builds(EssState, soc_pct=st.floats(0, 100), soh_pct=st.floats(40, 100),
                       power_kw=st.floats(-5000, 5000), battery=batteries(st.floats(100, 20000)),
                       ts_ms=st.integers(NOW - 900_000, NOW),
                       last_change_ms=st.one_of(st.none(), st.integers(NOW - 3_600_000, NOW)))
pcs_actions = st.builds(lambda kind, kw, life_s: {"action_id": "a", "kind": kind, "setpoint_kw": kw,
                                                  "expires_ms": NOW + int(life_s * 1000), "job_ids": [], "params": {}},
                        st.sampled_from(["pcs_discharge", "pcs_charge", "pcs_idle"]),
                        st.one_of(st.floats(-6000, 6000), st.just(0.0), st.just(math.nan), st.none()),
                        st.floats(-60, 10_000))


def near_limits(data, policy: Policy) -> tuple[dict, EssState]:
    """An action and a state drawn around the policy's limits, so that many are approved and many are not."""
    limits = policy.pcs
    kind = data.draw(st.sampled_from(["pcs_discharge", "pcs_charge", "pcs_idle"]))
    magnitude = data.draw(st.floats(0.1, 1.2 * limits.max_kw))
    kw = {"pcs_discharge": magnitude, "pcs_charge": -magnitude, "pcs_idle": 0.0}[kind]
    life_s = data.draw(st.floats(1, 1.2 * limits.max_duration_s))
    ess = data.draw(st.builds(
        EssState, soc_pct=st.floats(0, 100), soh_pct=st.floats(limits.min_soh_pct - 5, 100),
        power_kw=st.floats(-1.5, 1.5).map(lambda r: kw + r * limits.ramp_kw_per_min),
        battery=batteries(st.floats(1000, 50000)),
        ts_ms=st.integers(NOW - int(policy.max_state_age_s * 1200), NOW),
        last_change_ms=st.one_of(st.none(), st.integers(NOW - 600_000, NOW))))
    action = {"action_id": "a", "kind": kind, "setpoint_kw": kw, "expires_ms": NOW + int(life_s * 1000),
              "job_ids": [], "params": {}}
    return action, ess


@settings(max_examples=1500, deadline=None)
@given(st.data(), policies, st.sampled_from([None, "op"]))
def test_an_approved_pcs_action_breaks_no_limit(data, policy, operator):
    action, ess = data.draw(st.one_of(st.tuples(pcs_actions, ess_states), st.builds(lambda d: near_limits(d, policy),
                                                                                    st.data())))
    decision = decide(action, PlantState(ess), policy, NOW, operator)
    assert decision.reasons
    assert len(decision.reason_codes) == len(decision.reasons) and set(decision.reason_codes) <= REASON_CODES
    if decision.verdict != APPROVED:
        return
    limits, kw = policy.pcs, action["setpoint_kw"] or 0.0
    duration_s = (action["expires_ms"] - NOW) / 1000
    assert policy.mode(action["kind"]) in ("auto", "approve") and (operator or policy.mode(action["kind"]) == "auto")
    assert 0 < duration_s
    if action["kind"] == "pcs_idle":
        assert kw == 0
        return
    assert abs(kw) <= limits.max_kw and duration_s <= limits.max_duration_s
    assert ess.soh_pct >= limits.min_soh_pct and NOW - ess.ts_ms <= policy.max_state_age_s * 1000
    minutes = 1 if ess.last_change_ms is None else max(1, (NOW - ess.last_change_ms) / 60_000)
    assert abs(kw - ess.power_kw) <= limits.ramp_kw_per_min * minutes
    # Independent of the battery model's arithmetic: the whole action's energy, sqrt(round trip) lost each way.
    one_way = math.sqrt(ess.battery.round_trip_efficiency)
    drawn_kwh = kw * duration_s / 3600 * (1 / one_way if kw > 0 else one_way)
    end_soc = ess.soc_pct - drawn_kwh / (ess.battery.capacity_kwh * ess.soh_pct / 100) * 100
    assert end_soc >= limits.reserve_soc_pct - 1e-6 if kw > 0 else end_soc <= limits.max_soc_pct + 1e-6


slurm_actions = st.builds(
    lambda kind, parts, jobs, max_jobs, gpus, life_s: {
        "action_id": "s", "kind": kind, "setpoint_kw": None, "expires_ms": NOW + int(life_s * 1000),
        "job_ids": [str(j) for j in jobs],
        "params": {"partitions": ",".join(parts), **({"max_jobs": str(max_jobs)} if max_jobs else {}),
                   **({"gpus": str(gpus)} if gpus is not None else {})}},
    st.sampled_from(["slurm_hold", "slurm_requeue", "slurm_suspend", "slurm_release", "slurm_resume"]),
    st.lists(st.sampled_from(PARTITIONS[:3]), min_size=1, max_size=2, unique=True),
    st.lists(st.integers(1, 999), max_size=40, unique=True),
    st.one_of(st.none(), st.integers(1, 50)), st.one_of(st.none(), st.integers(0, 512)),
    st.one_of(st.floats(1, 7200), st.floats(-60, 10_000)))


@settings(max_examples=1000, deadline=None)
@given(slurm_actions, policies)
def test_an_approved_slurm_action_touches_only_touchable_partitions_within_budget(action, policy):
    decision = decide(action, PlantState(), policy, NOW, "op")
    if decision.verdict != APPROVED:
        return
    limits = policy.slurm
    partitions = action["params"]["partitions"].split(",")
    assert partitions and all(p in limits.touchable_partitions and p not in limits.protected_partitions
                              for p in partitions)
    if action["kind"] in ("slurm_hold", "slurm_requeue", "slurm_suspend"):
        hold_s = (action["expires_ms"] - NOW) / 1000
        assert 0 < hold_s <= limits.max_hold_s
        assert len(action["job_ids"]) <= limits.max_jobs_per_event
        assert int(action["params"].get("max_jobs", 0)) <= limits.max_jobs_per_event
        assert int(action["params"].get("gpus", 0)) * hold_s / 3600 <= limits.max_gpu_hours_per_event + 1e-9


jobs = st.lists(st.builds(Job, st.integers(1, 10_000).map(str), st.sampled_from(PARTITIONS),
                          st.sampled_from(["RUNNING", "PENDING", "SUSPENDED"]), st.integers(0, 10_000),
                          st.integers(0, 8)), max_size=60, unique_by=lambda j: j.job_id)


@settings(max_examples=400, deadline=None)
@given(jobs, st.sampled_from(["slurm_hold", "slurm_requeue", "slurm_suspend"]),
       st.lists(st.sampled_from(PARTITIONS), max_size=4), st.one_of(st.none(), st.floats(0, 100)), slurm_limits,
       st.floats(0, 7200))
def test_job_selection_never_breaks_a_limit(all_jobs, kind, declared, shed_kw, limits, hold_s):
    chosen = select_jobs(all_jobs, kind, declared, shed_kw, limits, hold_s)
    assert len(chosen) <= limits.max_jobs_per_event
    assert sum(j.gpus for j in chosen) * hold_s / 3600 <= limits.max_gpu_hours_per_event + 1e-9
    for job in chosen:
        assert job.partition not in limits.protected_partitions
        assert job.partition in limits.touchable_partitions and job.partition in declared
    assert len({j.job_id for j in chosen}) == len(chosen)


def policy_with(**modes) -> Policy:
    return Policy(1, 600, PcsLimits(4000, 2500, 15, 80, 3600, 95),
                  SlurmLimits(("batch",), ("inference",), 10, 100, 3600), {k: KindRule(v) for k, v in modes.items()})


BATTERY = Battery(10_000, 5000, 5000, round_trip_efficiency=1.0)
ESS = EssState(soc_pct=80, soh_pct=97, power_kw=0, battery=BATTERY, ts_ms=NOW - 30_000)


def pcs(kw: float, life_s: float = 1800, kind: str = "pcs_discharge") -> dict:
    return {"action_id": "a", "kind": kind, "setpoint_kw": kw, "expires_ms": NOW + int(life_s * 1000),
            "job_ids": [], "params": {}}


def test_modes_decide_what_a_valid_action_becomes():
    auto = decide(pcs(1000), PlantState(ESS), policy_with(pcs_discharge="auto"), NOW)
    assert auto.verdict == APPROVED and auto.reason_codes == ("within_limits",)
    asked = decide(pcs(1000), PlantState(ESS), policy_with(pcs_discharge="approve"), NOW)
    assert asked.verdict == NEEDS_APPROVAL and asked.reason_codes == ("needs_approval",)
    approved = decide(pcs(1000), PlantState(ESS), policy_with(pcs_discharge="approve"), NOW, operator="alice")
    assert approved.verdict == APPROVED and approved.reason_codes == ("operator_approved",)
    advised = decide(pcs(1000), PlantState(ESS), policy_with(pcs_discharge="advise"), NOW)
    assert advised.verdict == REJECTED and "advise-only" in advised.reasons[0]
    assert advised.reason_codes == ("advise_only",)


def test_the_agents_own_decisions_carry_codes_too():
    assert operator_rejection("bob") == Decision(REJECTED, ("rejected by operator bob",), ("operator_rejected",))
    revert = revert_approval("a1")
    assert (revert.verdict, revert.reason_codes) == (APPROVED, ("revert_failed_verification",))
    assert set(revert.reason_codes) <= REASON_CODES
    assert decide(pcs(1000), PlantState(ESS), policy_with(), NOW).verdict == REJECTED  # unlisted kind: advise


@pytest.mark.parametrize("action, ess, reason, code", [
    (pcs(1000, life_s=-1), ESS, "expired", "expired"),
    (pcs(1000), None, "no ESS telemetry", "no_ess_state"),
    (pcs(1000), EssState(80, 97, 0, BATTERY, NOW - 3_600_000), "telemetry is 3600 s old", "stale_ess_state"),
    (pcs(1000), EssState(80, 97, math.nan, BATTERY, NOW), "non-finite values", "invalid_ess_state"),
    (pcs(1000), EssState(80, 70, 0, BATTERY, NOW), "state of health 70%", "soh_below_minimum"),
    (pcs(3500, life_s=3000), EssState(40, 100, 3000, BATTERY, NOW), "below the 15% reserve", "soc_below_reserve"),
    (pcs(-3000, life_s=3000, kind="pcs_charge"), EssState(90, 100, -3000, BATTERY, NOW), "above the 95% maximum",
     "soc_above_maximum"),
    (pcs(3000), EssState(80, 97, 0, BATTERY, NOW, last_change_ms=NOW), "ramp limit of 2500 kW", "over_ramp_limit"),
    (pcs(5000), EssState(80, 97, 5000, BATTERY, NOW), "policy limit of 4000 kW", "over_power_limit"),
    (pcs(1000, life_s=7200), ESS, "longer than the policy's 3600 s", "over_max_duration"),
    (pcs(-1000), ESS, "needs a positive setpoint", "invalid_setpoint"),
    ({**pcs(1000), "kind": "pcs_explode"}, ESS, "unknown action kind", "unknown_kind"),
])
def test_pcs_rejections_say_why(action, ess, reason, code):
    decision = decide(action, PlantState(ess), policy_with(pcs_discharge="auto", pcs_charge="auto"), NOW)
    assert decision.verdict == REJECTED and any(reason in r for r in decision.reasons), decision.reasons
    assert code in decision.reason_codes and set(decision.reason_codes) <= REASON_CODES
    assert decision.reason_codes[decision.reasons.index(next(r for r in decision.reasons if reason in r))] == code


def test_protected_partitions_are_rejected_even_with_an_operator():
    action = {"action_id": "s", "kind": "slurm_suspend", "expires_ms": NOW + 600_000, "job_ids": [],
              "params": {"partitions": "batch,inference"}}
    decision = decide(action, PlantState(), policy_with(slurm_suspend="approve"), NOW, operator="alice")
    assert decision.verdict == REJECTED
    assert decision.reasons == ("partition(s) inference are protected and never touched",)
    assert decision.reason_codes == ("protected_partition",)


@pytest.mark.parametrize("params, code", [
    ({}, "no_partitions"),
    ({"partitions": "scratch"}, "untouchable_partition"),
    ({"partitions": "batch", "max_jobs": "many"}, "invalid_params"),
    ({"partitions": "batch", "max_jobs": "999"}, "too_many_jobs"),
    ({"partitions": "batch", "gpus": "100000"}, "over_gpu_hours"),
])
def test_slurm_rejections_carry_their_code(params, code):
    action = {"action_id": "s", "kind": "slurm_hold", "expires_ms": NOW + 600_000, "job_ids": [], "params": params}
    decision = decide(action, PlantState(), policy_with(slurm_hold="auto"), NOW)
    assert decision.verdict == REJECTED and decision.reason_codes == (code,), decision.reasons


def test_a_hold_longer_than_the_policy_allows_carries_its_code():
    action = {"action_id": "s", "kind": "slurm_hold", "expires_ms": NOW + 7_200_000, "job_ids": [],
              "params": {"partitions": "batch"}}
    decision = decide(action, PlantState(), policy_with(slurm_hold="auto"), NOW)
    assert "over_max_hold" in decision.reason_codes, decision.reasons


def test_time_windows_bound_when_a_kind_may_run():
    night = Window(("mon", "tue", "wed", "thu", "fri", "sat", "sun"), 0, 6 * 60)
    policy = Policy(1, 600, policy_with().pcs, policy_with().slurm, {"pcs_discharge": KindRule("auto", (night,))})
    minute = (NOW // 60_000) % (24 * 60)
    decision = decide(pcs(1000), PlantState(ESS), policy, NOW)
    assert (decision.verdict == APPROVED) == (minute < 360)
    if minute >= 360:
        assert "outside the time windows" in decision.reasons[-1] and decision.reason_codes[-1] == "outside_window"


# -- Slurm budgets across actions ---------------------------------------------------------------

SHEDDING = ("slurm_hold", "slurm_requeue", "slurm_suspend")


def charged(action: dict, limits: SlurmLimits, now_ms: int) -> tuple[int, float]:
    """The spec, written out: declared jobs and GPU-hours, or the whole per-event limit where none are declared."""
    params, job_ids = action["params"], action["job_ids"]
    jobs = int(params["max_jobs"]) if "max_jobs" in params else (len(job_ids) or limits.max_jobs_per_event)
    hold_h = (action["expires_ms"] - now_ms) / 3_600_000
    gpu_hours = float(params["gpus"]) * hold_h if "gpus" in params else limits.max_gpu_hours_per_event
    return max(jobs, len(job_ids)), gpu_hours


small_slurm_actions = st.builds(  # mostly within the per-event limits, so that the budget decides
    lambda kind, jobs, max_jobs, gpus, life_s: {
        "action_id": "s", "kind": kind, "setpoint_kw": None, "expires_ms": NOW + int(life_s * 1000),
        "job_ids": [str(j) for j in jobs],
        "params": {"partitions": "batch", **({"max_jobs": str(max_jobs)} if max_jobs is not None else {}),
                   **({"gpus": str(gpus)} if gpus is not None else {})}},
    st.sampled_from(["slurm_hold", "slurm_requeue", "slurm_suspend", "slurm_release", "slurm_resume"]),
    st.lists(st.integers(1, 999), max_size=6, unique=True), st.none() | st.integers(0, 12) | st.integers(0, 6),
    st.none() | st.integers(0, 16) | st.integers(0, 4), st.floats(60, 1800))


@settings(max_examples=300, deadline=None)
@given(st.builds(lambda jobs, gpuh, hold, window: SlurmLimits(("batch", "train-a", "train-b"), ("inference",), jobs,
                                                              gpuh, hold, budget_window_s=window),
                 st.integers(1, 30), st.floats(1, 500), st.floats(1800, 7200), st.floats(60, 14_400)),
       st.lists(st.tuples(small_slurm_actions | small_slurm_actions | slurm_actions, st.integers(0, 900_000),
                          st.sampled_from(["demo", "other"]), st.sampled_from([None, "op"])), min_size=2, max_size=25))
def test_slurm_actions_approved_within_any_window_stay_within_the_budget(limits, steps):
    policy = Policy(2, 600, policy_with().pcs, limits, {kind: KindRule("auto") for kind in SHEDDING})
    now, spent = NOW, []
    for i, (action, gap_ms, site, operator) in enumerate(steps):
        now += gap_ms
        action = {**action, "action_id": f"s{i}", "site": site, "expires_ms": action["expires_ms"] - NOW + now}
        if decide(action, PlantState(slurm_spent=tuple(spent)), policy, now, operator).verdict != APPROVED:
            continue
        if action["kind"] in SHEDDING:
            spent.append(SlurmSpend(action["action_id"], site, now, *charged(action, limits, now)))
    window_ms = limits.budget_window_s * 1000
    for last in spent:  # the fullest window ends at an approval
        inside = [s for s in spent if s.site == last.site and last.approved_ms - window_ms < s.approved_ms
                  <= last.approved_ms]
        assert sum(s.jobs for s in inside) <= limits.max_jobs_per_event
        assert sum(s.gpu_hours for s in inside) <= limits.max_gpu_hours_per_event * (1 + 1e-9)


BUDGET = SlurmLimits(("batch",), ("inference",), max_jobs_per_event=20, max_gpu_hours_per_event=256,
                     max_hold_s=3600, budget_window_s=3600)
BUDGET_POLICY = Policy(2, 600, policy_with().pcs, BUDGET, {kind: KindRule("approve") for kind in (
    "slurm_hold", "slurm_requeue", "slurm_suspend", "slurm_release", "slurm_resume")})


def slurm(action_id: str = "new", kind: str = "slurm_suspend", site: str = "demo", life_s: float = 1800,
          **params) -> dict:
    return {"action_id": action_id, "kind": kind, "site": site, "expires_ms": NOW + int(life_s * 1000),
            "job_ids": [], "params": {"partitions": "batch", **{k: str(v) for k, v in params.items()}}}


def spent(*records: tuple) -> PlantState:
    """(action_id, site, seconds before NOW, jobs, GPU-hours) per approval."""
    return PlantState(slurm_spent=tuple(SlurmSpend(a, site, NOW - int(ago_s * 1000), jobs, gpuh)
                                        for a, site, ago_s, jobs, gpuh in records))


def test_jobs_approved_in_the_window_count_and_the_reason_says_what_was_spent():
    decision = decide(slurm(max_jobs=8, gpus=0), spent(("old", "demo", 3599.999, 15, 0.0)), BUDGET_POLICY, NOW, "op")
    assert decision == Decision(REJECTED, ("affects up to 8 jobs; with the 15 approved in the last 3600 s that is 23, "
                                           "more than the policy's 20 per 3600 s",), ("over_budget",))
    assert decide(slurm(max_jobs=5, gpus=0), spent(("old", "demo", 600, 15, 0.0)), BUDGET_POLICY, NOW,
                  "op").verdict == APPROVED  # 20: exactly the budget


def test_gpu_hours_approved_in_the_window_count():
    decision = decide(slurm(max_jobs=1, gpus=16), spent(("old", "demo", 60, 1, 250.0)), BUDGET_POLICY, NOW)
    assert decision.verdict == REJECTED
    assert decision.reasons == ("8 GPU-hours; with the 250 approved in the last 3600 s that is 258, more than the "
                                "policy's 256 per 3600 s",)
    assert decision.reason_codes == ("over_budget",)


@pytest.mark.parametrize("state, why", [
    (spent(("old", "demo", 3600, 15, 250.0)), "exactly one window ago: out of the window"),
    (spent(("old", "demo", 7200, 20, 256.0)), "long ago"),
    (spent(("old", "elsewhere", 60, 20, 256.0)), "another site's budget"),
    (spent(("new", "demo", 60, 15, 250.0)), "the action's own approval, re-checked: not counted twice"),
])
def test_what_does_not_count_against_the_budget(state, why):
    assert decide(slurm(max_jobs=8, gpus=16), state, BUDGET_POLICY, NOW, "op").verdict == APPROVED, why


def test_undo_kinds_spend_no_budget_and_need_none():
    full = spent(("old", "demo", 60, 20, 256.0))
    for kind, undone in (("slurm_release", "slurm_hold"), ("slurm_resume", "slurm_suspend")):
        state = replace(full, approved={"old": {**slurm("old", undone), "proposer": None, "target": None}})
        assert decide(slurm(kind=kind, undo_of="old"), state, BUDGET_POLICY, NOW, "op").verdict == APPROVED
    assert decide(slurm(max_jobs=1, gpus=1), full, BUDGET_POLICY, NOW, "op").verdict == REJECTED


def test_an_action_that_declares_nothing_is_charged_the_whole_per_event_budget():
    decision = decide(slurm(kind="slurm_hold"), spent(("old", "demo", 60, 1, 0.5)), BUDGET_POLICY, NOW, "op")
    assert decision.reasons == (
        "affects up to 20 jobs; with the 1 approved in the last 3600 s that is 21, more than the policy's 20 per 3600 s",
        "256 GPU-hours; with the 0.5 approved in the last 3600 s that is 256.5, more than the policy's 256 per 3600 s")
    assert decide(slurm(kind="slurm_hold"), PlantState(), BUDGET_POLICY, NOW, "op").verdict == APPROVED


def test_without_a_window_each_action_is_judged_on_its_own():
    per_action = replace(BUDGET_POLICY, slurm=replace(BUDGET, budget_window_s=0))
    assert decide(slurm(max_jobs=8, gpus=16), spent(("old", "demo", 60, 20, 256.0)), per_action, NOW,
                  "op").verdict == APPROVED


def test_negative_gpus_are_rejected_rather_than_refunded():
    decision = decide(slurm(max_jobs=1, gpus=-100), PlantState(), BUDGET_POLICY, NOW, "op")
    assert decision == Decision(REJECTED, ("params.gpus must not be negative",), ("invalid_params",))


def test_the_sink_is_held_to_what_the_action_declared():
    narrowed = action_limits(slurm(max_jobs=4, gpus=8), BUDGET, hold_s=1800)
    assert narrowed.max_jobs_per_event == 4 and narrowed.max_gpu_hours_per_event == pytest.approx(4.0)
    assert action_limits(slurm(max_jobs=99), BUDGET, hold_s=1800).max_jobs_per_event == 20
    assert action_limits(slurm(), BUDGET, hold_s=1800) == BUDGET
    listed = {**slurm(), "job_ids": ["1", "2", "3"]}
    assert action_limits(listed, BUDGET, hold_s=1800).max_jobs_per_event == 3


def grid_limit(cap_kw: float, expected_kw: float, life_s: float = 900, **params) -> dict:
    return {**pcs(cap_kw, life_s), "params": {"control": "grid_limit", "grid_limit_kw": "9000.0",
                                              "expected_kw": str(expected_kw), **params}}


def test_a_grid_limit_is_bounded_on_its_cap_and_ramps_from_the_power_it_expects():
    policy = policy_with(pcs_discharge="auto")
    fresh = EssState(80, 97, 0, BATTERY, NOW, last_change_ms=NOW)  # one minute of ramp: 2500 kW
    # a 3 MW cap expected to give 500 kW: the PCS moves with the load, the ramp check uses what it expects
    assert decide(grid_limit(3000, 500), PlantState(fresh), policy, NOW).verdict == APPROVED
    assert "over_ramp_limit" in decide(grid_limit(3000, 3000), PlantState(fresh), policy, NOW).reason_codes
    # the cap is the worst case for power and the reserve
    assert "over_power_limit" in decide(grid_limit(4500, 0), PlantState(ESS), policy, NOW).reason_codes
    low = EssState(20, 100, 0, BATTERY, NOW)
    assert "soc_below_reserve" in decide(grid_limit(3000, 0), PlantState(low), policy, NOW).reason_codes
    broken = decide(grid_limit(1000, 0, grid_limit_kw="nan"), PlantState(ESS), policy, NOW)
    assert broken.reason_codes == ("invalid_setpoint",)


# -- slurm_shrink and the GPU (NVML) kinds -------------------------------------------------------------------------

from opsloop.config.policy import GpuLimits  # noqa: E402
from opsloop.models.parallelism import declared  # noqa: E402

NEW_KINDS = ("slurm_shrink", "gpu_clock_lock", "gpu_power_limit")
gpu_limits = st.sampled_from([True, True, True, False]).flatmap(  # mostly a gpu section, sometimes none
    lambda has: st.builds(GpuLimits, st.integers(1, 2000), st.floats(50, 700), st.floats(60, 7200)) if has
    else st.none())
new_kind_policies = st.builds(
    lambda pcs, slurm, modes_by_kind, gpu: Policy(4, 600, pcs, replace(slurm, budget_window_s=0), modes_by_kind,
                                                  gpu=gpu),
    pcs_limits, slurm_limits, st.fixed_dictionaries({kind: modes.map(KindRule) for kind in NEW_KINDS}), gpu_limits)
comments = st.one_of(st.none(), st.text(max_size=20),
                     st.builds(lambda kind, minimum: f"run opsloop:{kind}" + (f":min={minimum}" if minimum else ""),
                               st.sampled_from(["dp", "ep", "tp", "pp", "xp"]), st.one_of(st.none(), st.integers(0, 9))),
                     st.just("opsloop:dp:min=2 opsloop:ep"))
shrinks = st.builds(
    lambda job_ids, parts, keep, nodes, comment, gpus, life_s: {
        "action_id": "s", "kind": "slurm_shrink", "site": "demo", "job_ids": job_ids,
        "expires_ms": NOW + int(life_s * 1000),
        "params": {"partitions": ",".join(parts), "nodes": str(keep), "job_nodes": str(nodes),
                   **({"comment": comment} if comment is not None else {}), "gpus": str(gpus)}},
    st.lists(st.integers(1, 99).map(str), min_size=0, max_size=2, unique=True),
    st.lists(st.sampled_from(PARTITIONS), min_size=1, max_size=2, unique=True),
    st.integers(-1, 9), st.integers(1, 9), comments, st.integers(0, 64), st.floats(-60, 8000))
gpu_actions = st.builds(
    lambda kind, partition, value, life_s: {
        "action_id": "g", "kind": kind, "site": "demo", "job_ids": [], "expires_ms": NOW + int(life_s * 1000),
        "params": {"partition": partition, ("sm_mhz" if kind == "gpu_clock_lock" else "watts"): value}},
    st.sampled_from(["gpu_clock_lock", "gpu_power_limit"]), st.sampled_from(PARTITIONS + [""]),
    st.one_of(st.integers(-10, 2500).map(str), st.just("nan"), st.just("lots")), st.floats(-60, 8000))


def near_valid_shrink(data, policy: Policy) -> dict:
    """A shrink drawn around the policy's limits and the job's minimum, so that many are approved."""
    limits = policy.slurm
    nodes = data.draw(st.integers(2, 9))
    minimum = data.draw(st.integers(1, nodes - 1))
    keep = data.draw(st.integers(minimum, nodes - 1))
    keep += data.draw(st.sampled_from([0] * 8 + [-1, nodes - keep]))  # sometimes below the minimum, or all nodes
    kind = data.draw(st.sampled_from(["dp"] * 7 + ["ep", "tp", "pp"]))
    partitions = data.draw(st.sampled_from([policy.slurm.touchable_partitions] * 9 + [tuple(PARTITIONS)]))
    life_s = data.draw(st.floats(1, 1.2 * limits.max_hold_s))
    gpus = data.draw(st.integers(0, max(1, int(1.2 * limits.max_gpu_hours_per_event * 3600 / life_s))))
    return {"action_id": "s", "kind": "slurm_shrink", "site": "demo", "job_ids": ["7"],
            "expires_ms": NOW + int(life_s * 1000),
            "params": {"partitions": data.draw(st.sampled_from(partitions)), "nodes": str(keep),
                       "job_nodes": str(nodes), "comment": f"opsloop:{kind}" + (f":min={minimum}" if kind == "dp"
                                                                                else ""), "gpus": str(gpus)}}


def near_valid_partition_shrink(data, policy: Policy) -> dict:
    """A shrink naming no job: the GPUs to release in a partition, sometimes with a job's params it must not have."""
    limits = policy.slurm
    life_s = data.draw(st.floats(1, 1.2 * limits.max_hold_s))
    gpus = data.draw(st.one_of(st.integers(-2, max(1, int(1.2 * limits.max_gpu_hours_per_event * 3600 / life_s))),
                               st.sampled_from(["nan", "1.5", "lots", ""])))
    partitions = data.draw(st.sampled_from([policy.slurm.touchable_partitions] * 9 + [tuple(PARTITIONS)]))
    described = data.draw(st.sampled_from([{}] * 6 + [{"nodes": "2"}, {"job_nodes": "4"}, {"comment": "opsloop:dp"}]))
    return {"action_id": "s", "kind": "slurm_shrink", "site": "demo", "job_ids": [],
            "expires_ms": NOW + int(life_s * 1000),
            "params": {"partitions": data.draw(st.sampled_from(partitions)), "gpus": str(gpus), **described}}


def near_valid_gpu(data, policy: Policy) -> dict:
    floors = policy.gpu or GpuLimits(900, 300, 3600)
    kind = data.draw(st.sampled_from(["gpu_clock_lock", "gpu_power_limit"]))
    floor = floors.min_sm_clock_mhz if kind == "gpu_clock_lock" else floors.min_power_limit_w
    life_s = data.draw(st.floats(1, 1.2 * floors.max_duration_s))
    return {"action_id": "g", "kind": kind, "site": "demo", "job_ids": [], "expires_ms": NOW + int(life_s * 1000),
            "params": {"partition": data.draw(st.sampled_from([*policy.slurm.touchable_partitions] * 3 + PARTITIONS)),
                       ("sm_mhz" if kind == "gpu_clock_lock" else "watts"): str(data.draw(st.floats(0.8, 2.0)) * floor)}}


@settings(max_examples=1000, deadline=None)
@given(st.data(), new_kind_policies, st.sampled_from([None, "op"]))
def test_an_approved_shrink_leaves_a_data_parallel_job_at_least_its_minimum(data, policy, operator):
    action = data.draw(st.one_of(shrinks, st.builds(lambda d: near_valid_shrink(d, policy), st.data()),
                                 st.builds(lambda d: near_valid_partition_shrink(d, policy), st.data())))
    decision = decide(action, PlantState(), policy, NOW, operator)
    assert set(decision.reason_codes) <= REASON_CODES and len(decision.reasons) == len(decision.reason_codes)
    parallel = declared(action["params"].get("comment"))
    well_formed = action["expires_ms"] > NOW and len(action["job_ids"]) == 1 and int(action["params"]["nodes"]) >= 1
    if parallel.kind in ("ep", "tp", "pp") and well_formed:  # refused for what it is, whatever else is wrong
        assert decision.verdict == REJECTED and "not_elastic" in decision.reason_codes
    if decision.verdict != APPROVED:
        return
    if not action["job_ids"]:  # names a partition: describes no job, releases a whole number of GPUs
        assert not {"nodes", "job_nodes", "comment"} & set(action["params"]) and int(action["params"]["gpus"]) >= 1
    else:
        keep, nodes = int(action["params"]["nodes"]), int(action["params"]["job_nodes"])
        assert parallel.kind == "dp" and parallel.min_nodes <= keep < nodes
        assert len(action["job_ids"]) == 1
    assert action["expires_ms"] > NOW
    limits = policy.slurm
    assert all(p in limits.touchable_partitions and p not in limits.protected_partitions
               for p in action["params"]["partitions"].split(","))
    assert (action["expires_ms"] - NOW) / 1000 <= limits.max_hold_s
    assert int(action["params"]["gpus"]) * (action["expires_ms"] - NOW) / 3_600_000 <= limits.max_gpu_hours_per_event
    assert policy.mode("slurm_shrink") == "auto" or operator is not None


@settings(max_examples=1000, deadline=None)
@given(st.data(), new_kind_policies, st.sampled_from([None, "op"]))
def test_an_approved_gpu_action_stays_above_the_floors_on_a_touchable_partition(data, policy, operator):
    action = data.draw(st.one_of(gpu_actions, st.builds(lambda d: near_valid_gpu(d, policy), st.data())))
    decision = decide(action, PlantState(), policy, NOW, operator)
    assert set(decision.reason_codes) <= REASON_CODES and len(decision.reasons) == len(decision.reason_codes)
    if policy.gpu is None:
        assert decision.verdict == REJECTED and decision.reason_codes[0] in ("no_gpu_policy", "expired")
    if decision.verdict != APPROVED:
        return
    limits, params = policy.gpu, action["params"]
    partition = params["partition"]
    assert partition in policy.slurm.touchable_partitions and partition not in policy.slurm.protected_partitions
    assert 0 < (action["expires_ms"] - NOW) / 1000 <= limits.max_duration_s
    if action["kind"] == "gpu_clock_lock":
        assert float(params["sm_mhz"]) >= limits.min_sm_clock_mhz
    else:
        assert float(params["watts"]) >= limits.min_power_limit_w


SHRINK_POLICY = Policy(4, 600, policy_with().pcs, BUDGET, {"slurm_shrink": KindRule("approve")},
                       gpu=GpuLimits(900, 300, 3600))


def shrink(comment: str, keep: int = 2, nodes: int = 4) -> dict:
    return {**slurm(kind="slurm_shrink", nodes=keep, job_nodes=nodes, comment=comment, gpus=(nodes - keep) * 8),
            "job_ids": ["7"]}


@pytest.mark.parametrize("comment, keep, code, sentence", [
    ("opsloop:ep", 2, "not_elastic", "the job declares expert parallelism (opsloop:ep): it is held or suspended "
                                     "whole, never shrunk"),
    ("opsloop:tp", 2, "not_elastic", "the job declares tensor parallelism (opsloop:tp): it is held or suspended "
                                     "whole, never shrunk"),
    ("opsloop:pp", 3, "not_elastic", "the job declares pipeline parallelism (opsloop:pp): it is held or suspended "
                                     "whole, never shrunk"),
    ("", 2, "parallelism_not_declared", "the job declares no parallelism: only an opsloop:dp job is shrunk"),
    ("opsloop:dp:min=3", 2, "below_min_replicas", "keeping 2 nodes is below the job's declared minimum of 3 "
                                                  "(opsloop:dp:min=3)"),
    ("opsloop:dp", 4, "nothing_to_release", "keeping 4 of the job's 4 nodes releases none"),
])
def test_a_shrink_the_job_does_not_allow_is_refused_with_its_code_even_for_an_operator(comment, keep, code, sentence):
    assert decide(shrink(comment, keep), PlantState(), SHRINK_POLICY, NOW, "op") == Decision(REJECTED, (sentence,),
                                                                                             (code,))


def test_a_data_parallel_shrink_within_its_minimum_waits_for_an_operator_and_spends_budget():
    assert decide(shrink("opsloop:dp:min=2"), PlantState(), SHRINK_POLICY, NOW).verdict == NEEDS_APPROVAL
    assert decide(shrink("opsloop:dp:min=2"), PlantState(), SHRINK_POLICY, NOW, "op").verdict == APPROVED
    full = spent(("old", "demo", 60, 20, 0.0))
    assert decide(shrink("opsloop:dp:min=2"), full, SHRINK_POLICY, NOW, "op").reason_codes == ("over_budget",)


def partition_shrink(**params) -> dict:
    return {**slurm(kind="slurm_shrink", **{"gpus": 16, **params}), "job_ids": []}


def test_a_shrink_naming_a_partition_is_checked_on_its_gpus_and_leaves_the_jobs_to_the_sink():
    assert decide(partition_shrink(), PlantState(), SHRINK_POLICY, NOW).verdict == NEEDS_APPROVAL
    assert decide(partition_shrink(), PlantState(), SHRINK_POLICY, NOW, "op").verdict == APPROVED
    full = spent(("old", "demo", 60, 20, 0.0))
    assert decide(partition_shrink(), full, SHRINK_POLICY, NOW, "op").reason_codes == ("over_budget",)
    too_many = decide(partition_shrink(gpus=100_000), PlantState(), SHRINK_POLICY, NOW, "op")
    assert too_many.reason_codes == ("over_gpu_hours",)
    protected = decide(partition_shrink(partitions="inference"), PlantState(), SHRINK_POLICY, NOW, "op")
    assert protected.reason_codes == ("protected_partition",)


@pytest.mark.parametrize("params, sentence", [
    ({"gpus": 0}, "a slurm_shrink naming no job releases at least one GPU, not 0"),
    ({"gpus": "lots"}, "a slurm_shrink naming no job needs params.gpus, a whole number of GPUs to release at most"),
    ({"nodes": 2, "comment": "opsloop:dp"}, "a slurm_shrink naming no job (job_ids empty) takes no params.nodes, "
                                            "params.comment: the sink picks the jobs and their sizes"),
])
def test_a_shrink_naming_a_partition_must_say_how_many_gpus_and_nothing_of_a_job(params, sentence):
    decision = decide(partition_shrink(**params), PlantState(), SHRINK_POLICY, NOW, "op")
    assert decision.verdict == REJECTED and decision.reasons[0] == sentence
    assert decision.reason_codes[0] == "invalid_params"


def test_gpu_actions_are_off_without_the_gpu_section():
    lock = {**slurm(kind="gpu_clock_lock"), "params": {"partition": "batch", "sm_mhz": "1200"}}
    assert decide(lock, PlantState(), replace(SHRINK_POLICY, rules={"gpu_clock_lock": KindRule("auto")}),
                  NOW).verdict == APPROVED
    assert decide(lock, PlantState(), replace(SHRINK_POLICY, gpu=None), NOW, "op") == Decision(
        REJECTED, ("the policy has no gpu section: GPU clock and power actions are off",), ("no_gpu_policy",))
    limit = {**lock, "kind": "gpu_power_limit", "params": {"partition": "inference", "watts": "250"}}
    assert decide(limit, PlantState(), SHRINK_POLICY, NOW, "op").reason_codes == ("protected_partition",
                                                                                  "under_min_power_limit")
