"""XID alarms counted per GPU and forecast against the retirement rule: recognition, repeats, calibration."""

import random

import pytest

from opsloop.models.records import alarm
from opsloop.models.rul import DAY_MS, RULES, forecast_record
from opsloop.models.xid_rate import XidRate, xid_code

pytestmark = pytest.mark.unit


def xid(code: str, state: str = "raise") -> dict:
    return alarm(0, "demo", "node8/gpu0", "gpu", "prometheus", code, "an XID", state=state)


def test_only_raised_xid_alarms_count():
    assert [xid_code(xid(c)) for c in ("XID_79", "XID_48", "GPU_XID_79_FELL_OFF_BUS", "SXID", "XID_", "TEMP_HIGH")] \
        == [79, 48, None, None, None, None]
    assert xid_code(xid("XID_79", state="clear")) is None


def test_a_repeated_alarm_counts_once_and_the_same_code_later_counts_again():
    rate = XidRate()
    for day, code in ((0, 79), (0, 79), (0, 48), (3, 79), (2, 13), (0, 48)):  # resent alarms; one out of order
        rate.learn_one(day * DAY_MS, code)
    assert rate.count == 4 and rate.last_ms == 3 * DAY_MS


@pytest.mark.parametrize("seen, limit", [(3, 5), (6, 8)])
def test_the_band_holds_the_date_the_limit_is_reached_about_as_often_as_it_claims(seen, limit):
    """Poisson XIDs at one every ten days, no forgetting: the 80 % band holds the true date 72-90 % of the time."""
    held = asked = 0
    for seed in range(300):
        rng, t, times = random.Random(seed), 0.0, []
        while len(times) < limit:
            t += rng.expovariate(0.1)
            times.append(t)
        rate = XidRate(half_life_days=None)
        for day in times[:seen]:
            rate.learn_one(int(day * DAY_MS), 79)
        forecast = rate.forecast(limit)
        if forecast is None:
            continue
        asked += 1
        truth = int(times[limit - 1] * DAY_MS)
        held += forecast.earliest_ms <= truth <= (forecast.latest_ms or truth)
    assert asked >= 280 and 0.72 <= held / asked <= 0.90


def test_a_burst_at_the_limit_is_passed_and_a_short_history_forecasts_nothing():
    rate = XidRate()
    rate.learn_one(0, 79)
    rate.learn_one(60_000, 48)
    assert rate.forecast(5) is None  # two XIDs a minute apart say little about next month
    for i, code in enumerate((79, 48, 79)):
        rate.learn_one(120_000 + i * 60_000, code)
    forecast = rate.forecast(5)
    assert forecast.expected_ms == forecast.last_ms == 240_000 and forecast.value == 5
    point = {"ts_ms": 240_000, "site": "demo", "device": "node8/gpu0", "device_type": "gpu"}
    record = forecast_record(point, RULES["xid_count"], forecast, rate.describe())
    assert record["reason_code"] == "LIMIT_PASSED" and record["metric"] == "xid_count"
    assert record["text"].startswith("GPU node8/gpu0 is already above 5 XID errors: its XID errors went from 1 to 5")


def test_an_old_burst_weighs_less_as_the_months_pass():
    remembering, forgetting = XidRate(half_life_days=None), XidRate(half_life_days=30.0)
    for day in (0, 1, 2, 3, 90):  # a burst, then a quiet quarter
        remembering.learn_one(day * DAY_MS, 79)
        forgetting.learn_one(day * DAY_MS, 79)
    assert forgetting.forecast(8).rate_per_day < remembering.forecast(8).rate_per_day
    assert forgetting.forecast(8).earliest_ms > remembering.forecast(8).earliest_ms


def test_the_forecast_says_when_in_a_sentence():
    rate = XidRate()
    for day in (0, 9, 20, 30):
        rate.learn_one(1_767_225_600_000 + day * DAY_MS, 79)
    forecast = rate.forecast(5)
    point = {"ts_ms": forecast.last_ms, "site": "demo", "device": "node8/gpu0", "device_type": "gpu"}
    record = forecast_record(point, RULES["xid_count"], forecast, rate.describe())
    assert record["reason_code"] == "LIMIT_FORECAST" and record["value"] == 4.0
    assert record["text"].startswith("GPU node8/gpu0 is expected to reach 5 XID errors between 2026-")
    assert "80% confidence" in record["text"] and record["model"] == "XidRate(half_life_days=30.0, band=0.8)"
