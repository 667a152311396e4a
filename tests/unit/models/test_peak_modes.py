"""The mode arbiter: the reactive rule takes a billing period over only when it measured better, and says so."""

from __future__ import annotations

import math

import pytest

from opsloop.models.battery import IDLE, Battery, Command
from opsloop.models.peak_forecast import PeakForecaster
from opsloop.models.peak_loop import LoopConfig, SitePeakLoop
from opsloop.models.peak_modes import FORECAST, REACTIVE, ModeArbiter, ReactiveRule
from opsloop.models.peak_planner import REACTIVE_IDLE, REACTIVE_RECHARGE, REACTIVE_SHAVE, Policy, billing_period
from opsloop.ops.evals.peak_baselines import ReactiveThreshold

pytestmark = pytest.mark.unit
HOUR = 3_600_000
DAY = 24 * HOUR
BATTERY = Battery(capacity_kwh=2000, pcs_charge_kw=1000, pcs_discharge_kw=1000, round_trip_efficiency=0.81,
                  reserve_soc_pct=10)


def daily_load(hour: int) -> float:
    return 1000.0 + (800.0 if 17 <= hour % 24 < 20 else 0.0) + 37.0 * ((hour * 7) % 5)


def test_reactive_rule_sets_the_same_threshold_as_the_offline_baseline():
    loads = [daily_load(h) for h in range(24 * 40)]
    offline = ReactiveThreshold(loads, [h // 24 for h in range(len(loads))], 3600, BATTERY)
    rule = ReactiveRule(3600)
    for h, kw in enumerate(loads):
        offline(h, 1000.0, None)
        assert rule.threshold_kw(h * HOUR) == pytest.approx(offline.limit_kw) or math.isinf(offline.limit_kw)
        rule.learn_one(h * HOUR, kw)


def test_arbiter_hands_periods_to_the_mode_that_cut_more_once_measured():
    arbiter = ModeArbiter(BATTERY, skill_periods=4)
    modes = []
    for h in range(24 * 7 * 4):
        start = h * HOUR
        arbiter.measure(daily_load(h), 3600, 1500.0)
        modes.append(arbiter.start_period(billing_period(start + HOUR, "week")[0]))
        energy = arbiter.shadows[REACTIVE].energy_kwh
        arbiter.shadows[FORECAST].pending = IDLE  # a plan that never shaves
        arbiter.shadows[REACTIVE].pending = Command(1500.0, BATTERY.max_discharge_kw(energy, 1.0),
                                                    BATTERY.max_charge_kw(energy, 1.0), 1500.0)
    weeks = [modes[k] for k in range(0, len(modes), 24 * 7)]
    assert weeks[0] == FORECAST  # nothing measured yet: the plan decides
    assert modes[-1] == REACTIVE  # two closed weeks where only the reactive rule cut the peak
    assert arbiter.skill()[REACTIVE] > arbiter.skill()[FORECAST] == 0.0


def test_before_two_periods_close_the_days_seen_choose_the_mode_when_asked_to():
    modes = {}
    for skill_days in (0, 3):
        arbiter = ModeArbiter(BATTERY, skill_periods=4, skill_days=skill_days)
        modes[skill_days] = []
        for h in range(24 * 7):
            start = h * HOUR
            arbiter.measure(daily_load(h), 3600, 1500.0, start)
            modes[skill_days].append(arbiter.start_period(billing_period(start + HOUR, "week")[0], start + HOUR))
            energy = arbiter.shadows[REACTIVE].energy_kwh
            arbiter.shadows[FORECAST].pending = IDLE  # a plan that never shaves
            arbiter.shadows[REACTIVE].pending = Command(1500.0, BATTERY.max_discharge_kw(energy, 1.0),
                                                        BATTERY.max_charge_kw(energy, 1.0), 1500.0)
    assert set(modes[0]) == {FORECAST}  # no period closed: the plan decides all week
    assert set(modes[3][:3 * 24]) == {FORECAST}  # fewer than three days measured
    assert modes[3][-1] == REACTIVE and arbiter.by_days()
    assert arbiter.day_skill()[REACTIVE] > arbiter.day_skill()[FORECAST] == 0.0


class _Blind(PeakForecaster):
    """A forecaster that always says the load is flat at its latest value: the plan never sees a peak coming."""

    def forecast_points(self, horizon):
        points = super().forecast_points(horizon)
        return [type(p)(p.ts_ms, points[0].kw * 0.5, points[0].kw * 0.5, points[0].kw * 0.5) for p in points]


def test_loop_falls_back_to_the_reactive_rule_when_its_forecast_is_useless_and_says_why():
    config = LoopConfig(site="s", ess_id="e", battery=BATTERY, step_s=3600, billing_period="week")
    loop = SitePeakLoop(config, forecaster=_Blind(step_s=3600, season_steps=24))
    decisions = [loop.on_step(h * HOUR, daily_load(h), daily_load(h), 80.0, None) for h in range(24 * 7 * 5)]
    assert decisions[0].mode == FORECAST and decisions[-1].mode == REACTIVE
    reactive = [d for d in decisions if d.mode == REACTIVE]
    assert {d.plan.reason_code for d in reactive} <= {REACTIVE_SHAVE, REACTIVE_RECHARGE, REACTIVE_IDLE}
    by_day = {}
    for d in reactive:  # one threshold a day, under the daily peak
        by_day.setdefault((d.step_start_ms + HOUR) // DAY, set()).add(d.plan.command.limit_kw)
    assert all(len(limits) == 1 and max(limits) < max(map(daily_load, range(24))) for limits in by_day.values())
    assert "cut the billed peak by" in reactive[-1].plan.reason
    assert all(a["reason_code"] == d.plan.reason_code for d in decisions for a in d.actions if a["kind"] != "slurm_hold")


def test_a_forecast_that_sees_the_queue_beats_one_that_does_not():
    """Load follows the GPU demand the queue says will start: the covariate is causal, so it must pay."""
    def queued_gpus(hour: int) -> float:  # a deterministic but irregular schedule of job starts
        return float((hour * 37 + (hour // 5) * 11) % 9)

    def load(hour: int) -> float:
        return 1000.0 + 50.0 * (hour % 24 >= 8) + 60.0 * queued_gpus(hour)

    seeing = PeakForecaster(step_s=3600, season_steps=24, covariates=("queued_gpus",))
    blind = PeakForecaster(step_s=3600, season_steps=24)
    errors = {"seeing": 0.0, "blind": 0.0}
    for hour in range(24 * 28):
        if hour > 24 * 14:
            future = [{"queued_gpus": queued_gpus(hour + k)} for k in range(4)]
            errors["seeing"] += abs(seeing.forecast(4, future)[-1] - load(hour + 3))
            errors["blind"] += abs(blind.forecast(4)[-1] - load(hour + 3))
        seeing.learn_one(load(hour), {"ts_ms": hour * HOUR, "queued_gpus": queued_gpus(hour)})
        blind.learn_one(load(hour), {"ts_ms": hour * HOUR})
    assert errors["seeing"] < 0.7 * errors["blind"], errors


def test_state_pickled_before_the_arbiter_and_the_skill_mix_still_loads():
    import pickle

    config = LoopConfig(site="s", ess_id="e", battery=BATTERY, step_s=3600)
    loop = SitePeakLoop(config)
    for h in range(48):
        loop.on_step(h * HOUR, daily_load(h), daily_load(h), 80.0, None)
    old = {k: v for k, v in loop.__dict__.items() if k not in ("arbiter", "reactive")}
    old["forecaster"] = loop.forecaster
    for name in ("_skill", "_measured", "_issued", "_cov", "_cov_scale", "_cov_names", "skill_power",
                 "skill_halflife", "skill_margin", "long_share", "covariates"):
        del loop.forecaster.__dict__[name]  # as a forecaster pickled by the previous version
    stale = SitePeakLoop.__new__(SitePeakLoop)
    stale.__dict__.update(old)
    restored = pickle.loads(pickle.dumps(stale))
    decision = restored.on_step(48 * HOUR, daily_load(48), daily_load(48), 80.0, None)
    assert decision.mode == FORECAST and len(restored.forecaster.forecast(4)) == 4


def test_reactive_rule_remembers_the_recent_peak_that_bounds_the_plans_target():
    rule = ReactiveRule(3600)
    assert rule.recent_peak_kw(0) == 0.0  # nothing learned: no bound
    for h in range(24 * 10):
        rule.learn_one(h * HOUR, 5000.0 if h == 12 else daily_load(h))  # day 0 peaks at 5 MW
    assert rule.recent_peak_kw(7 * DAY) == 5000.0  # day 0 is within the seven days before day 7
    assert rule.recent_peak_kw(8 * DAY) == max(daily_load(h) for h in range(24))  # day 0 is not
    rule.learn_one(10 * DAY + HOUR, 6000.0)
    assert rule.recent_peak_kw(10 * DAY + 2 * HOUR) == 6000.0  # today's load so far counts


def test_a_day_billed_alone_is_bounded_only_by_its_own_load_so_far():
    """Daily billing: a quiet day after a peak day may still be shaved (days=0 looks back at no earlier day)."""
    rule = ReactiveRule(3600)
    for h in range(24 * 2):
        rule.learn_one(h * HOUR, 5000.0 if h == 12 else 1000.0)  # day 0 peaks at 5 MW, day 1 stays at 1 MW
    assert rule.recent_peak_kw(DAY + 2 * HOUR) == 5000.0  # a week's look-back remembers day 0
    assert rule.recent_peak_kw(DAY + 2 * HOUR, days=0) == 1000.0  # day 1 alone


def test_an_arbiter_started_in_reactive_mode_hands_days_to_the_plan_only_once_it_measured_better():
    arbiter = ModeArbiter(BATTERY, skill_periods=4, skill_days=2, start_mode=REACTIVE)
    modes = []
    for h in range(24 * 5):
        start = h * HOUR
        arbiter.measure(daily_load(h), 3600, 1500.0, start)
        modes.append(arbiter.start_period(billing_period(start + HOUR, "week")[0], start + HOUR))
        energy = arbiter.shadows[FORECAST].energy_kwh
        arbiter.shadows[FORECAST].pending = Command(1500.0, BATTERY.max_discharge_kw(energy, 1.0),
                                                    BATTERY.max_charge_kw(energy, 1.0), 1200.0)
        arbiter.shadows[REACTIVE].pending = IDLE  # a rule that never shaves
    assert set(modes[:2 * 24 - 1]) == {REACTIVE}  # two days must close before the plan may decide
    assert modes[-1] == FORECAST and not arbiter.starting()
    assert ModeArbiter(BATTERY).mode == FORECAST  # the default is unchanged: the plan until measured otherwise
    with pytest.raises(ValueError):
        ModeArbiter(BATTERY, start_mode="oracle")


def test_a_loop_started_in_reactive_mode_says_the_plan_has_not_shown_skill_yet():
    config = LoopConfig(site="s", ess_id="e", battery=BATTERY, step_s=3600, billing_period="week", skill_days=2,
                        start_mode=REACTIVE)
    loop = SitePeakLoop(config)
    decisions = [loop.on_step(h * HOUR, daily_load(h), daily_load(h), 80.0, None) for h in range(30)]
    assert decisions[0].mode == REACTIVE
    assert "has not yet shown it cuts the peak more: 0 of the 2 days" in decisions[0].plan.reason


def test_the_reactive_rule_ignores_a_step_learned_again():
    """The warm-up's last step is learned again when the first step is planned: counted twice it moved ``T``."""
    once, twice = ReactiveRule(3600), ReactiveRule(3600)
    for h in range(24 * 3):
        for rule in (once, twice):
            rule.learn_one(h * HOUR, daily_load(h))
        if h % 24 == 18:
            twice.learn_one(h * HOUR, daily_load(h))  # a peak step, again
            twice.learn_one((h - 1) * HOUR, 0.0)  # and an older one
    assert twice.threshold_kw(3 * DAY) == once.threshold_kw(3 * DAY)


def test_the_arbiter_lifts_the_reactive_floor_only_once_the_plan_without_it_measured_more():
    """Three shadows a day: the plan without the floor holds 1,500 kW while the plan with it never shaves
    (and, in reverse, the plan with it shaves). The floor is lifted once the days it is judged on have closed
    and the plan without it cut more; never before, never on a tie, never when the floor wins."""
    from opsloop.models.peak_modes import FLOORED, UNFLOORED

    def run(better: str, days: int = 2) -> list[bool]:
        arbiter = ModeArbiter(BATTERY, floor_skill_days=days)
        lifted = []
        for h in range(24 * 5):
            start = h * HOUR
            arbiter.measure(daily_load(h), 3600, 1500.0, start)
            arbiter.start_period(billing_period(start + HOUR, "month")[0], start + HOUR)
            for name in arbiter.shadows:
                energy = arbiter.shadows[name].energy_kwh
                arbiter.shadows[name].pending = IDLE if name != better else Command(
                    1500.0, BATTERY.max_discharge_kw(energy, 1.0), BATTERY.max_charge_kw(energy, 1.0),
                    charge_ceiling_kw=1500.0)
            lifted.append(arbiter.floor_lifted())
        return lifted

    unfloored = run(UNFLOORED)
    assert not any(unfloored[:24 * 2]), "lifted before two days had closed"
    assert all(unfloored[24 * 2:])
    skill = ModeArbiter(BATTERY, floor_skill_days=2)
    assert not skill.floor_lifted() and skill.floor_skill() == {FLOORED: 0.0, UNFLOORED: 0.0}
    assert not any(run(FLOORED)) and not any(run(FORECAST))  # the floor cut more; a tie
    assert not any(run(UNFLOORED, days=0))  # not asked to measure: the floor stands, nothing more is shadowed
    assert set(ModeArbiter(BATTERY).shadows) <= {FORECAST, REACTIVE}


class _Foresight(PeakForecaster):
    """Forecasts the load the test will feed: a forecast that is right."""

    def __init__(self, load, **kw):
        super().__init__(**kw)
        self.load, self.next_hour = load, 0

    def learn_one(self, y, x=None):
        self.next_hour = x["ts_ms"] // HOUR + 1

    def forecast_points(self, horizon, xs=None):
        from opsloop.models.peak_forecast import ForecastPoint
        hours = range(self.next_hour, self.next_hour + horizon)
        return [ForecastPoint(h * HOUR, self.load(h), self.load(h), self.load(h)) for h in hours]


def test_a_loop_lifts_the_floor_once_the_plan_without_it_measured_more_and_says_why():
    """A rule set at the median (a threshold far under the day's peak) and a right forecast: the floor makes the plan
    spend its small battery on the long midday, the plan alone keeps it for the one-hour evening peak. With the floor
    judged on two days, it stands until they have closed, then steps aside and says so; judged on none, it stays."""
    small = Battery(capacity_kwh=800, pcs_charge_kw=1000, pcs_discharge_kw=1000, round_trip_efficiency=0.81,
                    reserve_soc_pct=10)

    def load(h: int) -> float:
        hour = h % 24
        return (2600.0 if hour == 19 else 1800.0 if 9 <= hour < 18 else 1000.0) + 37.0 * ((h * 7) % 5)

    def run(floor_skill_days: int) -> tuple[list, SitePeakLoop]:
        # the scenario is built for the plan without the top-up: with it, the floor is not lifted here
        config = LoopConfig(site="s", ess_id="e", battery=small, step_s=3600, billing_period="day",
                            reactive_percentile=50.0, floor_skill_days=floor_skill_days, policy=Policy(top_up=False))
        loop = SitePeakLoop(config, forecaster=_Foresight(load, step_s=3600, season_steps=24))
        energy, grid, out = small.energy_kwh(100.0), load(0), []
        for h in range(24 * 5):
            decision = loop.on_step(h * HOUR, load(h), grid, small.soc_pct(energy), None)
            out.append(decision)
            result = small.step(energy, decision.plan.command, load(h + 1), 1.0)
            energy, grid = result.energy_kwh, result.grid_kw
        return out, loop

    (fixed, _), (judged, loop) = run(0), run(2)
    assert any("reactive_floor_kw" in d.plan.notes for d in fixed), "the floor never binds: tests nothing"
    assert not any(d.plan.reason_code == "reactive_floor_lifted" for d in fixed)
    lifted = [i for i, d in enumerate(judged) if d.plan.reason_code == "reactive_floor_lifted"]
    assert lifted and lifted[0] >= 24 * 2  # not before two days have closed
    assert any("reactive_floor_kw" in d.plan.notes for d in judged[: lifted[0]])  # the floor stood until then
    first = judged[lifted[0]].plan
    assert "The reactive floor at" in first.reason and "the plan without it cut the billed peak by" in first.reason
    assert first.notes["reactive_floor_lifted_kw"] == pytest.approx(loop.reactive.threshold_kw(
        judged[lifted[0]].step_start_ms + HOUR))
    import re
    alone, floored = (float(kw.replace(",", "")) for kw in re.search(
        r"cut the billed peak by ([\d,]+) kW in all against ([\d,]+) kW with it", first.reason).groups())
    assert alone > floored
    assert all(a["reason_code"] == d.plan.reason_code for d in judged for a in d.actions if a["kind"] != "slurm_hold")


def test_a_loop_restored_from_before_the_floors_skill_judges_it_once_reconfigured():
    import pickle
    from dataclasses import replace

    config = LoopConfig(site="s", ess_id="e", battery=BATTERY, step_s=3600)
    loop = SitePeakLoop(replace(config, floor_skill_days=0))  # as saved by a worker before floor_skill_days
    for h in range(24):
        loop.on_step(h * HOUR, daily_load(h), daily_load(h), 80.0, None)
    restored = pickle.loads(pickle.dumps(loop))
    restored.reconfigure(config)
    assert restored.config is config and restored.arbiter.floor_skill_days == config.floor_skill_days > 0
    for h in range(24, 72):
        restored.on_step(h * HOUR, daily_load(h), daily_load(h), 80.0, None)
    assert restored.arbiter.floor_days, "the restored loop never measured the floor"


def test_with_the_floor_lifted_a_spike_last_week_does_not_hold_the_target_over_the_rules_threshold():
    """A 3,000 kW spike last Saturday, then a week that opens at 1,500 kW and rises to a 1,800 kW plateau the
    forecast rightly says will stay: the recent-peak bound (the spike less the PCS's 1,000 kW) holds the plan alone
    at 2,000 kW, a full battery idle over the rule's 1,000 kW threshold; capped at the threshold, the plan holds
    the week's billed 1,500 kW."""
    big = Battery(capacity_kwh=20_000, pcs_charge_kw=1000, pcs_discharge_kw=1000, round_trip_efficiency=0.81,
                  reserve_soc_pct=10)

    def load(h: int) -> float:  # hour 0 is Thursday 1 January 1970; the week of Monday 5 January opens at hour 96
        return 3000.0 if h == 2 * 24 + 12 else 1800.0 if h > 4 * 24 else 1500.0 if h == 4 * 24 else 1000.0

    def plan_in_the_new_week(bound_under_threshold: bool):
        config = LoopConfig(site="s", ess_id="e", battery=big, step_s=3600, billing_period="week",
                            bound_under_threshold=bound_under_threshold)
        loop = SitePeakLoop(config, forecaster=_Foresight(load, step_s=3600, season_steps=24))
        loop.arbiter.floor_lifted = lambda: True  # as measured over days where the plan alone cut more
        for h in range(4 * 24 + 1):
            decision = loop.on_step(h * HOUR, load(h), load(h), 100.0, None)
        assert loop.billing.key == "1970-W02" and loop.billing.billed_peak_kw == 1500.0
        assert loop.reactive.threshold_kw(decision.step_start_ms + HOUR) == 1000.0
        return decision.plan

    alone = plan_in_the_new_week(False)
    assert alone.target_kw == 2000.0 and alone.kind != "pcs_discharge"
    capped = plan_in_the_new_week(True)
    assert capped.target_kw == 1500.0 and capped.kind == "pcs_discharge"
