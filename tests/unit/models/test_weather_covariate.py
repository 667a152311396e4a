"""The outside-temperature forecast as a forecast covariate: the synthetic weather, its profile, the loop passing
it on beside the queue."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site
from opsloop.models.battery import Battery
from opsloop.models.peak_forecast import PeakForecaster
from opsloop.models.peak_loop import LoopConfig, SitePeakLoop
from opsloop.models.queue_covariate import NAME as QUEUE
from opsloop.models.twin import SiteTwin
from opsloop.models.weather import SyntheticWeather
from opsloop.models.weather_covariate import NAME, WeatherCovariate

pytestmark = pytest.mark.unit

H = 3_600_000
DAY = 24 * H
SITE = load_site(DEMO_SITE)


def test_without_spells_the_weather_is_the_twins_daily_sine():
    plain = SyntheticWeather(mean_c=18.0, swing_c=6.0, peak_hour=15.0)
    for ts in range(0, 2 * DAY, 1_234_567):
        hour = (ts % DAY) / H
        assert plain.outside_c(ts) == 18.0 + 6.0 * math.cos(2 * math.pi * (hour - 15.0) / 24)


def test_spells_have_the_asked_spread_and_memory_and_read_the_same_in_any_order():
    w = SyntheticWeather(day_sd_c=3.0, day_corr=0.7, seed=5)
    late_first = SyntheticWeather(day_sd_c=3.0, day_corr=0.7, seed=5)
    assert late_first.outside_c(900 * DAY + 7) == w.outside_c(900 * DAY + 7)  # no state carried between calls
    days = [w.anomaly_c(d) for d in range(3000)]
    assert statistics.pstdev(days) == pytest.approx(3.0, rel=0.1)
    assert statistics.correlation(days[:-1], days[1:]) == pytest.approx(0.7, abs=0.05)
    # no step at midnight: the anomaly moves linearly from noon to noon
    assert abs(w.outside_c(10 * DAY) - w.outside_c(10 * DAY - 1000)) < 0.01
    assert SyntheticWeather(day_sd_c=3.0, seed=6).anomaly_c(10) != w.anomaly_c(10)


def test_a_forecast_misses_more_the_further_ahead_it_looks():
    w = SyntheticWeather(day_sd_c=3.0, forecast_sd_c=0.5, forecast_sd_per_day_c=1.5, seed=2)

    def rmse(lead_ms):
        errors = [w.forecast_c(i * 6 * H, i * 6 * H + lead_ms) - w.outside_c(i * 6 * H + lead_ms) for i in range(2000)]
        return math.sqrt(sum(e * e for e in errors) / len(errors))

    assert rmse(0) == pytest.approx(0.5, rel=0.1)
    assert rmse(DAY) == pytest.approx(2.0, rel=0.1)
    issued, points = SiteTwin(SITE, [(0, 30_000.0), (DAY, 30_000.0)], weather=w).weather_forecast(7 * H + 5)
    assert issued == 6 * H and points[0][0] == 6 * H and points[1][0] - points[0][0] == H  # the 06:00 issue, hourly


def test_the_profile_is_the_forecast_at_each_steps_middle_and_goes_stale():
    cov = WeatherCovariate(step_s=3600, horizon_steps=3)
    assert cov.future_xs(0, 2) is None and cov.step_x(0, H) == {}
    cov.observe(issued_ms=0, points=[(2 * H, 24.0), (0, 20.0)])  # any order, any spacing
    assert cov.future_xs(0, 3) == [{NAME: 21.0}, {NAME: 23.0}, {}]  # 00:30, 01:30; 02:30 is past the forecast
    assert cov.step_x(0, now_ms=H) == {NAME: 21.0}
    cov.observe(issued_ms=-6 * H, points=[(0, 0.0), (H, 0.0)])  # issued before the held one: ignored
    assert cov.snapshot_ms == 0
    assert cov.future_xs(12 * H, 1) is not None and cov.future_xs(12 * H + 1, 1) is None  # 12 h old: stale


def loop(forecaster, **config):
    battery = Battery(capacity_kwh=1000, pcs_charge_kw=500, pcs_discharge_kw=500)
    return SitePeakLoop(LoopConfig(site="s", ess_id="e", battery=battery, step_s=3600, **config), forecaster)


def test_the_loop_gives_its_forecaster_the_weather_beside_the_queue_and_only_when_told_to():
    forecaster = PeakForecaster(step_s=3600, season_steps=24)
    seeing = loop(forecaster)
    seeing.on_weather(0, [(0, 20.0), (30 * H, 20.0 + 30)])  # warming a degree an hour
    seeing.on_queue([{"entry": "job", "state": "RUNNING", "est_kw": 100.0, "start_ms": 0, "end_ms": None},
                     {"entry": "snapshot", "ts_ms": H, "state": "COMPLETE", "est_kw": 100.0}])
    xs = seeing.learn(0, 1000.0)
    assert forecaster._cov_names == (NAME, QUEUE)
    assert len(xs) == 24 and xs[0] == {NAME: 21.5, QUEUE: 100.0} and xs[23][NAME] == pytest.approx(44.5)

    told_not = loop(PeakForecaster(step_s=3600, season_steps=24), weather_covariate=False)
    told_not.on_weather(0, [(0, 20.0), (30 * H, 50.0)])
    assert told_not.weather is None and told_not.learn(0, 1000.0) is None
    later = loop(PeakForecaster(step_s=3600, season_steps=24))
    later.reconfigure(replace(later.config, weather_covariate=False))
    later.on_weather(0, [(0, 20.0), (30 * H, 50.0)])
    assert later.learn(0, 1000.0) is None


def test_where_the_weather_drives_the_load_a_forecaster_told_it_learns_its_worth():
    """Load = 1,000 kW + 50 kW per degC of a weather with spells; one forecaster is told the temperature ahead."""
    w = SyntheticWeather(day_sd_c=4.0, swing_c=0.0, forecast_sd_c=0.0, forecast_sd_per_day_c=0.0, seed=9)
    told, blind = PeakForecaster(step_s=3600, season_steps=24), PeakForecaster(step_s=3600, season_steps=24)
    told.add_covariate(NAME)
    errors = {"told": [], "blind": []}
    for step in range(24 * 60):
        ts = step * H
        if step >= 24 * 30:  # scored: the forecasts a day ahead
            xs = [{NAME: w.outside_c(ts + k * H)} for k in range(24)]
            errors["told"].append(abs(told.forecast(24, xs)[-1] - (1000 + 50 * w.outside_c(ts + 23 * H))))
            errors["blind"].append(abs(blind.forecast(24)[-1] - (1000 + 50 * w.outside_c(ts + 23 * H))))
        y = 1000 + 50 * w.outside_c(ts)
        told.learn_one(y, {"ts_ms": ts, NAME: w.outside_c(ts)})
        blind.learn_one(y, {"ts_ms": ts})
    assert sum(errors["told"]) < 0.5 * sum(errors["blind"])


def test_a_forecast_hours_old_still_covers_a_day_ahead():
    """Forecasts come every few hours and are used until they are 12 h old: every use must see the day ahead."""
    cov = WeatherCovariate(step_s=900, horizon_steps=96)
    cov.observe(issued_ms=0, points=[(h * H, 15.0 + h / 4) for h in range(48)])
    for age_h in (0, 3, 6, 11):
        xs = cov.future_xs(age_h * H, 96)
        assert all(NAME in x for x in xs), age_h
        assert xs[-1][NAME] == pytest.approx(15.0 + (age_h + 23.875) / 4)  # the middle of the last step
