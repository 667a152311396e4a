"""The peaks processor's keyed state, without a broker."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.models.peak_loop import SitePeakLoop
from opsloop.config.settings import Settings
from opsloop.config.site import load_site
from opsloop.streams.peaks import PeaksProcessor, SiteState

pytestmark = pytest.mark.unit
SITE = DEMO_SITE


def test_recovered_state_keeps_what_it_learned_and_takes_limits_from_todays_site_file():
    processor = PeaksProcessor(Settings(topology=SITE), load_site(SITE))
    old = SitePeakLoop(replace(processor.config, battery=replace(processor.config.battery, capacity_kwh=1.0)))
    for step in range(10):
        old.on_step(step * 900_000, 30_000.0, 30_000.0, 80.0, 97.0)
    restored = processor.load_state(b"demo", pickle.dumps(SiteState(old, offset=41)))
    assert restored.offset == 41 and restored.loop.forecaster.last_ts_ms == 9 * 900_000
    assert restored.loop.billing == old.billing
    assert restored.loop.config == processor.config  # e.g. a resized battery applies after a restart


def test_a_snapshot_dated_ahead_of_the_clock_is_refused_so_real_ones_still_count():
    processor = PeaksProcessor(Settings(topology=SITE), load_site(SITE))
    processor.wall_clock = lambda: 1_780_000_000.0  # 2026
    state = processor.load_state(b"demo", None)
    snap = {"site": "demo", "window_start_ms": 960_163_200_000, "window_end_ms": 960_163_260_000,
            "grid_kw": 30_000.0, "ess_kw": 0.0, "ess_soc_pct": 80.0, "ess_soh_pct": 97.0}
    assert processor.refuse(state, snap) is None  # a replay of the year 2000
    processor.fold(state, b"demo", snap, 0)
    far = {**snap, "window_start_ms": 4_102_444_800_000, "window_end_ms": 4_102_444_860_000}  # 2100
    assert "ahead of the processing clock" in processor.refuse(state, far)
    assert state.loop.last_window_ms == 960_163_200_000  # what made the loop ignore every later real snapshot


def snapshot_at(ts_ms: int) -> dict:
    """A demo-site snapshot of the minute from ``ts_ms``."""
    return {"site": "demo", "window_start_ms": ts_ms, "window_end_ms": ts_ms + 60_000, "grid_kw": 30_000.0,
            "ess_kw": 0.0, "ess_soc_pct": 80.0, "ess_soh_pct": 97.0}


def test_the_slurm_queue_is_read_as_a_hint_and_reaches_the_sites_loop():
    from opsloop.models.gpu_jobs import JobSchedule
    from opsloop.models.twin import SiteTwin
    from tests.unit.consumed import Msg

    site = load_site(SITE)
    processor = PeaksProcessor(Settings(topology=SITE), site)
    assert processor.stateless == ("slurm.queue", "weather.forecast")
    assert processor.joined_sources() == ("telemetry.site",)
    now = 960_163_200_000
    twin = SiteTwin(site, [(0, 30_000.0), (86_400_000, 30_000.0)],
                    jobs=JobSchedule.for_site(site, seed=1, epoch_ms=now - 86_400_000))
    records = twin.queue_records(now)
    assert len(records) > 10 and records[-1]["entry"] == "snapshot"
    topic = processor.queue_topic
    for i, record in enumerate(records):
        processor.handle(Msg(topic, 0, i, processor.codec.encode("SlurmQueue", record)))
    processor.handle(Msg(topic, 0, len(records), b"not a record"))
    assert processor.stats["hints_refused"] == 1
    state = processor.load_state(b"demo", None)
    processor.fold(state, b"demo", snapshot_at(now), 0)
    assert state.loop.queue is not None and state.loop.queue.snapshot_ms == now
    assert state.loop.forecaster._cov_names == ("queue_kw",)


def test_the_weather_forecast_is_read_as_a_hint_and_the_latest_issue_reaches_the_sites_loop():
    from opsloop.models.weather import SyntheticWeather
    from opsloop.models.weather_service import forecast_record
    from tests.unit.consumed import Msg

    processor = PeaksProcessor(Settings(topology=SITE), load_site(SITE))
    now = 960_163_200_000
    weather = SyntheticWeather(day_sd_c=3.0, seed=4)
    topic = processor.weather_topic
    newer = forecast_record(now, "demo", "weather", now, weather.forecast(now, 48))
    older = forecast_record(now, "demo", "weather", now - 6 * 3_600_000, weather.forecast(now - 6 * 3_600_000, 48))
    processor.handle(Msg(topic, 0, 0, processor.codec.encode("WeatherForecast", newer)))
    processor.handle(Msg(topic, 0, 1, processor.codec.encode("WeatherForecast", older)))  # late: kept out
    processor.handle(Msg(topic, 0, 2, b"not a record"))
    assert processor.stats["hints_refused"] == 1
    state = processor.load_state(b"demo", None)
    processor.fold(state, b"demo", snapshot_at(now), 0)
    assert state.loop.weather is not None and state.loop.weather.snapshot_ms == now
    assert state.loop.forecaster._cov_names == ("outside_c",)
    assert pickle.loads(processor.dump_state(state)).loop.weather.snapshot_ms == now  # checkpointed with the loop
