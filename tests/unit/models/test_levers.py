"""The flexible-load levers: merit order within limits, the target they make worth holding, their actions."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsloop.config.assets import POLICY_FILE, SITES_DIR
from opsloop.config.policy import load_policy
from opsloop.config.site import load_site
from opsloop.models import levers as flex
from opsloop.models.battery import Battery
from opsloop.models.guard import shrink_problems
from opsloop.models.peak_forecast import ForecastPoint
from opsloop.models.peak_loop import LoopConfig, SitePeakLoop
from opsloop.schemas.codec import Codec
from opsloop.streams.peaks import action_kinds

pytestmark = pytest.mark.unit

FLEX_SITE = SITES_DIR / "examples" / "flexible.yaml"

levers_st = st.lists(st.builds(
    flex.Lever, kind=st.sampled_from(flex.LEVER_KINDS), cost_per_kwh=st.floats(0, 5),
    share=st.floats(0, 0.2), max_kw=st.one_of(st.just(math.inf), st.floats(0, 500)),
    granule_kw=st.one_of(st.just(0.0), st.floats(1, 100)),
    max_hours_per_day=st.one_of(st.just(math.inf), st.floats(0, 6))), max_size=5, unique_by=lambda lv: lv.kind)
steps_st = st.integers(1, 12)


@st.composite
def cases(draw):
    n = draw(steps_st)
    shortfall = draw(st.lists(st.floats(0, 2000), min_size=n, max_size=n))
    load = draw(st.lists(st.floats(1000, 20000), min_size=n, max_size=n))
    return shortfall, load, draw(levers_st), draw(st.sampled_from([0.25, 0.5, 1.0]))


@settings(max_examples=300, deadline=None)
@given(cases())
def test_a_mix_never_exceeds_a_lever_limit_nor_the_shortfall(case):
    shortfall, load, levers, step_h = case
    mix = flex.cheapest_mix(shortfall, load, levers, step_h)
    by_kind = {lv.kind: lv for lv in levers}
    for e in mix.engagements:
        lever = by_kind[e.kind]
        assert e.steps * step_h <= lever.max_hours_per_day + 1e-9
        for kw, site_kw in zip(e.kw, load):
            assert 0 <= kw <= lever.cap_kw(site_kw) + 1e-6  # whole units within float dust
            assert lever.cap_kw(site_kw) <= min(lever.max_kw, lever.share * site_kw) + 1e-6
            if lever.granule_kw:
                assert abs(kw / lever.granule_kw - round(kw / lever.granule_kw)) < 1e-6
    for t, need in enumerate(shortfall):
        assert mix.shed_kw(t) <= need + 1e-6
        assert mix.shed_kw(t) + mix.uncovered_kw[t] == pytest.approx(need, abs=1e-6)
    assert mix.cost == pytest.approx(sum(sum(e.kw) * step_h * by_kind[e.kind].cost_per_kwh for e in mix.engagements))


@settings(max_examples=150, deadline=None)
@given(cases(), st.data())
def test_more_shortfall_never_costs_less_nor_covers_less(case, data):
    """Cost is monotone for levers that shed any amount; with whole units (a 1.5 kW need that a 1 kW unit
    and a dearer lever meet, a 3 kW one that three units meet alone) only the kW covered is. Levers with
    hours for every step: a daily budget makes the merit order greedy (see cheapest_mix), and rarely not
    monotone."""
    shortfall, load, levers, step_h = case
    levers = [replace(lv, max_hours_per_day=math.inf) for lv in levers]
    more = [s + data.draw(st.floats(0, 500)) for s in shortfall]
    bigger, smaller = (flex.cheapest_mix(x, load, levers, step_h) for x in (more, shortfall))
    assert sum(more) - sum(bigger.uncovered_kw) >= sum(shortfall) - sum(smaller.uncovered_kw) - 1e-6
    if not any(lv.granule_kw for lv in levers):
        assert bigger.cost >= smaller.cost - 1e-6


@settings(max_examples=150, deadline=None)
@given(cases(), st.dictionaries(st.sampled_from(flex.LEVER_KINDS), st.floats(0, 8)))
def test_hours_used_today_count_against_the_daily_budget(case, used):
    shortfall, load, levers, step_h = case
    mix = flex.cheapest_mix(shortfall, load, levers, step_h, used)
    for e in mix.engagements:
        lever = next(lv for lv in levers if lv.kind == e.kind)
        assert used.get(e.kind, 0.0) + e.steps * step_h <= max(lever.max_hours_per_day, used.get(e.kind, 0.0)) + 1e-9


def test_merit_order_takes_the_cheapest_lever_first_and_says_why():
    cheap, dear = flex.Lever("llm_shift", 0.3, share=0.05), flex.Lever("slurm_shrink", 2.9, share=0.1, granule_kw=10)
    mix = flex.cheapest_mix([40, 130], [1000, 1000], [dear, cheap], step_h=1.0)
    assert [(e.kind, e.kw) for e in mix.engagements] == [("llm_shift", (40.0, 50.0)), ("slurm_shrink", (0.0, 80.0))]
    assert mix.covers
    assert all(e.reason_code == flex.CHEAPEST_LEVER for e in mix.engagements)
    assert mix.engagements[1].reason == ("Release nodes of data-parallel jobs, up to 80 kW for 1 h at 2.90 per kWh "
                                         "(232 in all): the cheapest lever with kW and hours left.")


def test_a_budget_short_lever_spends_its_hours_where_it_sheds_most():
    lever = flex.Lever("llm_cap", 0.8, share=1.0, max_hours_per_day=1.0)
    mix = flex.cheapest_mix([10, 50, 30], [1000] * 3, [lever], step_h=0.5, used_hours={"llm_cap": 0.5})
    assert mix.engagements[0].kw == (0.0, 50.0, 0.0)


BATTERY = Battery(capacity_kwh=1000, pcs_charge_kw=500, pcs_discharge_kw=500, round_trip_efficiency=1.0,
                  reserve_soc_pct=0)
PEAK = [800, 1200, 1500, 1600, 1500, 1200, 800]
ALONE = 1200.0  # what the battery alone holds on PEAK


def test_the_levers_buy_a_lower_target_the_battery_then_holds():
    levers = (flex.Lever("llm_shift", 0.3, share=0.06), flex.Lever("gpu_clock_lock", 1.0, share=0.03))
    # alone, 1,000 kWh hold 1,200 kW: 300 + 400 + 300 kWh above it
    plan = flex.plan_levers(PEAK, [False] * 7, BATTERY, 1000, 1.0, ALONE, billed_peak_kw=1000, levers=levers,
                            charge_per_kw=15, battery_wear_per_kwh=0.05)
    assert plan.reason_code == flex.LEVERS_HOLD_LOWER_PEAK
    assert 1000 <= plan.target_kw <= ALONE - 20
    shed = [sum(e.kw[t] for e in plan.mix.engagements) for t in range(7)]
    assert BATTERY.holds([kw - s for kw, s in zip(PEAK, shed)], [False] * 7, 1000, 1.0, plan.target_kw + 1e-6, 0)
    assert plan.saving - plan.cost > 0
    assert "with llm_shift" in plan.reason


def test_no_cut_under_the_billed_peak_nor_the_last_days_import_and_none_that_costs_more_than_it_saves():
    lever = (flex.Lever("slurm_hold", 3.6, share=0.5),)
    kwargs = dict(load_kw=PEAK, charge_at=[False] * 7, battery=BATTERY, energy_kwh=1000, step_h=1.0,
                  battery_target_kw=ALONE, levers=lever, battery_wear_per_kwh=0.05)
    assert flex.plan_levers(billed_peak_kw=ALONE, charge_per_kw=15, **kwargs).reason_code == flex.NO_SHORTFALL
    assert flex.plan_levers(billed_peak_kw=0, recent_import_kw=1250, charge_per_kw=15,
                            **kwargs).reason_code == flex.NO_SHORTFALL
    worth = flex.plan_levers(billed_peak_kw=1000, charge_per_kw=60, **kwargs)
    assert worth.reason_code == flex.LEVERS_HOLD_LOWER_PEAK and worth.saving > worth.cost
    cheap = flex.plan_levers(billed_peak_kw=1000, charge_per_kw=0.5, **kwargs)
    assert cheap.reason_code == flex.LEVERS_NOT_WORTH_IT and cheap.target_kw == ALONE and not cheap.mix.engagements


WORTH = dict(load_kw=PEAK, charge_at=[False] * 7, battery=BATTERY, energy_kwh=1000, step_h=1.0,
             battery_target_kw=ALONE, billed_peak_kw=1000, levers=(flex.Lever("slurm_hold", 3.6, share=0.5),),
             charge_per_kw=60, battery_wear_per_kwh=0.05)  # a cut the levers make worth it if it sets the bill


def test_early_in_the_period_a_cut_is_not_bought_when_later_days_are_likely_to_import_more():
    # the first week: the recent days peaked above this episode, and 20 days are left in the month
    odds = flex.BillOdds((1750.0, 1800.0, 1700.0, 1100.0), days_left=20, width=0.02)
    weighed = flex.plan_levers(**WORTH, odds=odds)
    assert weighed.reason_code == flex.LEVERS_NOT_WORTH_IT and not weighed.mix.engagements
    assert "expected" in weighed.reason
    # without the weighting, every episode looks like the one that sets the bill: the old rule bought the cut
    assert flex.plan_levers(**WORTH).reason_code == flex.LEVERS_HOLD_LOWER_PEAK


def test_the_last_day_of_the_period_and_a_day_above_all_recent_ones_keep_the_cut():
    unweighed = flex.plan_levers(**WORTH)
    last_day = flex.plan_levers(**WORTH, odds=flex.BillOdds((1750.0, 1800.0), days_left=0, width=0.02))
    assert (last_day.target_kw, last_day.saving) == (unweighed.target_kw, pytest.approx(unweighed.saving))
    highest = flex.plan_levers(**WORTH, odds=flex.BillOdds((1100.0, 1200.0, 900.0), days_left=5, width=0.02))
    assert highest.reason_code == flex.LEVERS_HOLD_LOWER_PEAK and highest.odds > 0.99
    assert highest.target_kw == unweighed.target_kw


def test_the_odds_fall_with_more_days_left_and_rise_with_the_level():
    peaks = (1000.0, 1100.0, 1050.0)
    assert flex.BillOdds(peaks, 2, 0.02).stays_under(1080) > flex.BillOdds(peaks, 20, 0.02).stays_under(1080)
    odds = flex.BillOdds(peaks, 10, 0.02)
    assert odds.stays_under(1000) < odds.stays_under(1100) < odds.stays_under(1200) <= 1.0


def test_a_backup_is_bought_only_when_the_load_it_may_put_over_the_target_is_worth_its_cost():
    kwargs = dict(load_kw=[1500], charge_at=[False], battery=BATTERY, energy_kwh=100, step_h=1.0,
                  battery_target_kw=1400.0, billed_peak_kw=1400, levers=(flex.Lever("slurm_hold", 3.6, share=0.2),),
                  charge_per_kw=15, battery_wear_per_kwh=0.05, first_upper_kw=1600)
    # the load reaches the band's edge for certain: the 100 kW over what the battery holds are worth 1,500
    assert flex.plan_levers(**kwargs).reason_code == flex.BACKUP_NEXT_STEP
    # forecast at 1,400 kW, the edge 1.64 deviations above: ~12 kW expected over it, worth ~170, for a 360 hold
    assert not flex.plan_levers(**kwargs, first_kw=1400.0).mix.engagements


def test_the_billing_period_ends_at_the_next_ones_start():
    from opsloop.models.peak_planner import billing_period, period_end_ms
    sunday = 977_616_000_000  # 2000-12-24
    assert period_end_ms(sunday + 3_600_000, "month") == 978_307_200_000  # 2001-01-01
    assert period_end_ms(sunday + 3_600_000, "week") == sunday + 86_400_000  # Monday
    assert period_end_ms(sunday + 3_600_000, "day") == sunday + 86_400_000
    assert billing_period(period_end_ms(sunday, "month"))[0] == "2001-01"


def test_the_next_step_is_backed_up_when_the_battery_cannot_give_what_the_band_edge_needs():
    lever = (flex.Lever("llm_shift", 0.3, share=0.2),)
    plan = flex.plan_levers([1500], [False], BATTERY, 100, 1.0, 1400.0, billed_peak_kw=1400, levers=lever,
                            charge_per_kw=15, battery_wear_per_kwh=0.05, first_upper_kw=1600)
    assert plan.reason_code == flex.BACKUP_NEXT_STEP
    assert plan.mix.engagements[0].kw == (100.0,)  # the edge 1,600 - 1,400 held - the battery's 100 kWh


def test_the_catalogue_prices_each_declared_lever_and_keeps_only_the_kinds_asked_for():
    costs = load_policy(POLICY_FILE).levers
    levers = flex.catalogue(load_site(FLEX_SITE).flexible_load, costs)
    assert [lv.kind for lv in sorted(levers, key=lambda lv: lv.cost_per_kwh)] == [
        "llm_shift", "llm_cap", "gpu_clock_lock", "slurm_shrink", "slurm_hold"]
    shrink, hold = (next(lv for lv in levers if lv.kind == k) for k in ("slurm_shrink", "slurm_hold"))
    assert shrink.share == pytest.approx(0.25 * 0.6 * 0.5) and shrink.granule_kw == 5.6
    assert hold.cost_per_kwh == pytest.approx(costs.gpu_hour / 0.7 * (1 + costs.hold_restart_share))
    assert [lv.kind for lv in flex.only(levers, ("llm_shift", "slurm_hold"))] == ["llm_shift", "slurm_hold"]


def _loop(kinds=None):
    site = load_site(FLEX_SITE)
    return SitePeakLoop(LoopConfig.from_site(site, step_s=3600, lever_costs=load_policy(POLICY_FILE).levers,
                                             lever_kinds=kinds))


def test_the_loop_proposes_schema_valid_lever_actions_of_the_kinds_it_may_emit():
    codec = Codec.default()
    kinds = action_kinds(codec)
    loop = _loop(kinds)
    assert {lv.kind for lv in loop.config.levers} <= set(kinds)
    hour, battery = 3_600_000, loop.config.battery
    shape = [0.6] * 9 + [0.9, 1.0, 1.0, 0.95] + [0.75] * 11  # a day with a midday peak
    energy, proposed, grid = battery.energy_kwh(60.0), [], None
    for day in range(10):
        for h, share in enumerate(shape):
            load = 30_000 * share * (0.8 + 0.025 * day)  # each day's peak a new high: worth the levers
            if grid is not None:  # the site as the last decision left it: levers shed, the battery holds the limit
                shed = sum(a["shed_kw"] for a in decision.actions if a["shed_kw"])
                step = battery.step(energy, decision.plan.command, load - shed, 1.0)
                energy, grid = step.energy_kwh, step.grid_kw
            decision = loop.on_step((day * 24 + h) * hour, load, load if grid is None else grid,
                                    battery.soc_pct(energy), None)
            grid = load if grid is None else grid
            proposed += [a for a in decision.actions if a["kind"] not in ("pcs_discharge", "pcs_charge", "pcs_idle")]
    assert {a["kind"] for a in proposed} >= {"llm_shift", "slurm_shrink"}, "new highs over what 5 MWh hold"
    for action in proposed:
        assert action["kind"] in kinds and action["reason_code"] == flex.CHEAPEST_LEVER
        assert action["shed_kw"] > 0 and action["reason"]
        codec.encode("Action", action)
        if action["kind"] == "llm_shift":
            assert 0 < float(action["params"]["shift_pct"]) <= 50
        if action["kind"] == "slurm_shrink":  # names the partition and the GPUs; the Slurm sink picks the jobs
            assert action["job_ids"] == [] and "nodes" not in action["params"] and int(action["params"]["gpus"]) >= 1
            assert action["params"]["partitions"] and shrink_problems(action) == []


def test_the_levers_plan_with_the_battery_as_commanded_not_as_if_it_held_a_floor_under_its_discharge():
    # the planner's own limit may be the billed peak (a floor under its discharge) though 1,000 kWh hold only 1,200 kW:
    # the battery then discharges from 1,000 kW on and runs empty early; the levers plan from the import that leaves
    floored = flex.plan_levers(**{**WORTH, "battery_target_kw": 1000.0})
    assert floored.battery_target_kw >= ALONE - 1.0 and floored.reason_code == flex.LEVERS_HOLD_LOWER_PEAK
    assert f"The battery alone holds {floored.battery_target_kw:,.0f} kW" in floored.reason
    # what the plan assumes is what happens: the levers' shed and the battery at its own 1,000 kW hold the target
    shed = [floored.mix.shed_kw(t) for t in range(len(PEAK))]
    net = [kw - s for kw, s in zip(PEAK, shed)]
    power = BATTERY.dispatch(net, [False] * len(PEAK), 1000, 1.0, 1000.0, 0.0)
    assert max(kw - p for kw, p in zip(net, power)) <= floored.target_kw + 1e-6


def test_no_backup_for_a_limit_the_rest_of_the_episode_imports_over_anyway():
    # the billed peak is 1,400 kW, the battery has 100 kWh and the load stays at 1,600 kW for three hours: holding
    # 1,400 kW next step would buy nothing, the bill reaches ~1,570 kW later in the episode whatever the levers do now
    lever = (flex.Lever("llm_shift", 0.3, share=0.2, max_hours_per_day=1.0),)
    plan = flex.plan_levers([1500, 1600, 1600, 1600], [False] * 4, BATTERY, 100, 1.0, 1400.0, billed_peak_kw=1400,
                            levers=lever, charge_per_kw=15, battery_wear_per_kwh=0.05, first_upper_kw=1600)
    assert plan.battery_target_kw > 1550 and plan.target_kw > 1500 and plan.reason_code != flex.BACKUP_NEXT_STEP


def test_a_cut_saves_nothing_above_the_episodes_highest_load_and_its_reason_gives_both_odds():
    # the battery's limit (1,500 kW: the last days' peak less its power) sits above this episode's highest load
    kwargs = dict(charge_at=[False] * 4, battery=BATTERY, energy_kwh=1000, step_h=1.0, battery_target_kw=1500.0,
                  billed_peak_kw=900, levers=(flex.Lever("llm_shift", 0.3, share=0.06),), charge_per_kw=15,
                  battery_wear_per_kwh=0.05)
    quiet = flex.plan_levers(load_kw=[900, 1000, 1000, 900], **kwargs)
    assert quiet.saving <= 15 * max(0.0, 1000 - quiet.target_kw) + 1e-6
    odds = flex.BillOdds((1000.0, 1100.0, 1050.0), days_left=10, width=0.02)
    plan = flex.plan_levers(load_kw=[900, 1400, 1400, 900], **{**kwargs, "charge_per_kw": 60}, odds=odds)
    assert plan.reason_code == flex.LEVERS_HOLD_LOWER_PEAK
    assert plan.saving <= 60 * (plan.battery_target_kw - plan.target_kw) + 1e-6
    assert "likely for its first kW" in plan.reason and f"{100 * plan.odds:.0f}% for its last" in plan.reason


def test_a_cut_is_held_until_the_battery_can_recharge_not_merely_until_a_charge_step():
    # a dip the forecast calls a charge step, but over the charge ceiling that a lower bill sets: no recharge there
    load, charge_at = [1500, 1600, 1450, 1600, 900], [False, False, True, False, True]
    assert flex.recharge_episode_end(load, charge_at, ceiling_kw=1400) == 4
    assert flex.recharge_episode_end(load, charge_at, ceiling_kw=1500) == 2
    assert flex.recharge_episode_end([1500], [False], 1400) == 1
