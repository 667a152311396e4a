"""The degradation trend and the RUL forecast record: pure, checked on series whose crossing is known."""

from __future__ import annotations

import pickle
import random

import pytest

from opsloop.models.rul import DAY_MS, RULES, DegradationTrend, forecast_record, rules, widen

pytestmark = pytest.mark.unit


def fed(trend: DegradationTrend, values) -> DegradationTrend:
    for day, value in enumerate(values):
        trend.learn_one(day * DAY_MS, value)
    return trend


def test_a_straight_fade_is_dated_and_the_band_holds_the_truth():
    rng = random.Random(1)
    trend = fed(DegradationTrend(), [97 - 0.05 * d + rng.gauss(0, 0.3) for d in range(150)])
    f = trend.forecast(80, "below")  # truth: day 340
    assert f.earliest_ms < 340 * DAY_MS < f.latest_ms
    assert abs(f.expected_ms / DAY_MS - 340) < 15 and f.rate_per_day == pytest.approx(-0.05, rel=0.1)


def test_a_power_law_fade_needs_its_exponent():
    truth = [100 - d ** 0.55 for d in range(120)]  # 80 % at day 232
    right = fed(DegradationTrend(exponent=0.55), truth).forecast(80, "below")
    straight = fed(DegradationTrend(exponent=1.0), truth).forecast(80, "below")
    assert abs(right.expected_ms / DAY_MS - 232) < 1
    assert straight.expected_ms / DAY_MS < 200  # a line through a concave fade dates it far too early


def test_the_band_widens_with_noise_and_with_the_form_spread():
    quiet = fed(DegradationTrend(), [97 - 0.05 * d for d in range(100)]).forecast(80, "below")
    rng = random.Random(2)
    noisy_values = [97 - 0.05 * d + rng.gauss(0, 1.0) for d in range(100)]
    noisy = fed(DegradationTrend(), noisy_values).forecast(80, "below")
    spread = fed(DegradationTrend(form_spread=0.1), noisy_values).forecast(80, "below")
    width = lambda f: f.latest_ms - f.earliest_ms
    assert width(quiet) < width(noisy) < width(spread)
    assert spread.expected_ms == noisy.expected_ms  # the spread widens the band, never moves the date


def test_no_forecast_without_enough_history_or_without_a_decline():
    assert fed(DegradationTrend(), [97 - 0.05 * d for d in range(5)]).forecast(80, "below") is None  # 5 points
    assert fed(DegradationTrend(), [97.0 + 0.01 * (d % 3) for d in range(200)]).forecast(80, "below") is None


def test_out_of_order_and_non_finite_readings_are_not_learnt():
    trend = fed(DegradationTrend(), [97 - 0.05 * d for d in range(30)])
    trend.learn_one(3 * DAY_MS, 10.0)
    trend.learn_one(31 * DAY_MS, float("nan"))
    assert trend.points == 30


def test_a_limit_already_passed_says_replace_it():
    f = fed(DegradationTrend(), [85 - 0.1 * d for d in range(100)]).forecast(80, "below")
    point = {"site": "demo", "device": "ups-a", "device_type": "ups"}
    record = forecast_record(point, RULES["soh_pct"], f, "m")
    assert record["reason_code"] == "LIMIT_PASSED" and record["text"].startswith("UPS ups-a is already below 80.0%")


def test_the_record_fills_every_schema_field_and_names_part_dates_evidence_confidence():
    from opsloop.schemas.codec import Codec

    f = fed(DegradationTrend(), [20 + 0.02 * d for d in range(60)]).forecast(27, "above")  # truth: day 350
    point = {"site": "demo", "device": "crah-a1", "device_type": "crah"}
    record = forecast_record(point, RULES["inlet_temp_c"], f, "m")
    codec = Codec.default()
    assert codec.decode_as("RulForecast", codec.encode("RulForecast", record)) == record
    assert record["text"] == ("CRAH crah-a1 is expected to reach 27.0 °C inlet temperature between 1970-12-16 and "
                              "1970-12-17 (most likely 1970-12-16), 80% confidence: its inlet temperature went from "
                              "20.0 °C to 21.2 °C over 59 days (60 readings, +0.02 °C/day now).")


def test_battery_rules_follow_the_policy_minimum():
    assert rules(70)["ess_soh_pct"].limit == 70 and rules()["soh_pct"].limit == 80
    assert all(r.direction in ("below", "above") for r in RULES.values())


def test_widen_adds_the_form_spread_in_quadrature_and_never_before_now():
    early, late = widen(100 * DAY_MS, 95 * DAY_MS, 105 * DAY_MS, 0, 0.1, 1.0)
    assert (100 * DAY_MS - early) == pytest.approx((5 ** 2 + 10 ** 2) ** 0.5 * DAY_MS, rel=1e-6)
    assert widen(10 * DAY_MS, 9 * DAY_MS, None, 9 * DAY_MS, 5.0, 1.0) == (9 * DAY_MS, None)


def test_a_trend_pickles_to_the_same_forecast():
    trend = fed(DegradationTrend(exponent=0.55, half_life_days=365), [100 - d ** 0.55 for d in range(100)])
    again = pickle.loads(pickle.dumps(trend))
    assert again.forecast(80, "below") == trend.forecast(80, "below")
    assert again.configuration() == trend.configuration()


def test_xids_are_counted_from_the_last_code_and_dated_against_the_rule():
    from opsloop.models.rul import count_xid

    state, counts = (0, 0), []
    for day in range(40):  # a new XID every 8 days, the code repeated in between
        state = count_xid(*state, 79 if (day // 8) % 2 else 48)
        counts.append(state[1])
    assert counts[:9] == [1] * 8 + [2] and counts[-1] == 5
    f = fed(DegradationTrend(min_span_days=1.0), counts[:30]).forecast(RULES["xid_count"].limit, "above")
    # the fifth XID comes on day 32; a line through a staircase is late by up to one step (8 days)
    assert 32 * DAY_MS <= f.expected_ms <= 40 * DAY_MS and f.earliest_ms < f.expected_ms < f.latest_ms


def test_thermal_throttling_from_dcgm_becomes_a_share_of_time_dated_against_its_rule():
    from opsloop.models.prom_metrics import DCGM, CounterRates

    spec = DCGM["DCGM_FI_DEV_THERMAL_VIOLATION"]
    rates = CounterRates()
    rates.update(("g",), 0, 0.0)
    rate = rates.update(("g",), 1_000, 50_000.0)  # 50 ms throttled in one second: 5 % of the time
    assert spec.metric == "thermal_throttle_pct" and rate * spec.scale == pytest.approx(5.0)
    rule = RULES["thermal_throttle_pct"]
    f = fed(DegradationTrend(min_span_days=1.0), [1 + 0.2 * d for d in range(30)]).forecast(rule.limit, rule.direction)
    assert f.earliest_ms <= 45 * DAY_MS <= f.latest_ms  # 10 % on day 45
