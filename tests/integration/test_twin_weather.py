"""The weather source reads the live twin's forecast page and publishes it on weather.forecast through real Kafka;
the peaks agent's loop takes it as its weather covariate."""

from __future__ import annotations

import threading
import time

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources.loop import SourceRun
from opsloop.connectors.sources.weather import WeatherForecast
from opsloop.models.peak_loop import LoopConfig, SitePeakLoop
from opsloop.ops import twin as twin_process
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.integration

SITE = load_site(DEMO_SITE)
START_MS = 960_163_200_000  # the bundled curve's first day
SPEED = 3600.0  # a twin hour a wall second


def test_the_weather_source_publishes_the_twins_forecast_and_the_peaks_loop_takes_it(kafka_settings, read_topic):
    from opsloop.config.clock import Clock

    clock = Clock.starting(START_MS / 1000, SPEED)
    settings = kafka_settings.replace(clock_epoch_s=clock.epoch_s, clock_anchor_s=clock.anchor_s,
                                      clock_speed=clock.speed)
    twin = twin_process.build(settings, SITE, clock=settings.clock(), start_ms=START_MS, sample_s=300.0, poll_s=0.1,
                              pcs=False, publish=False, prometheus_port=0, weather_day_sd_c=3.0, weather_seed=2)
    host, port = twin.prometheus.server_address[:2]
    config = parse_sources({"site": SITE.id, "sources": [{
        "kind": "weather", "name": "weather", "interval_s": 0.5, "timeout_s": 2,
        "options": {"url": f"http://{host}:{port}/v1/forecast", "latitude": 51.5, "longitude": -0.12}}]},
        "weather.yaml")[0]
    source = SourceRun(settings.as_principal("source"), config, SITE, WeatherForecast(config, SITE), settings.clock())
    stop = threading.Event()
    threads = [threading.Thread(target=twin.run.run, args=(stop,), daemon=True),
               threading.Thread(target=source.run, args=(stop,), daemon=True)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while source.health.polls - source.health.failures < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        twin.close()

    codec = Codec.default()
    forecasts = [codec.decode_as("WeatherForecast", m.value()) for m in read_topic(settings, "weather.forecast")]
    assert len(forecasts) >= 3, "too few forecasts reached weather.forecast"
    last = forecasts[-1]
    assert last["site"] == SITE.id and len(last["points"]) == 48
    # the twin's own forecast of the 6-hourly issue before it was read, as the service form rounds it
    weather = twin.poller.twin.weather
    first = last["points"][0]["valid_ms"]
    assert first == weather.issue_ms(first) and first <= last["issued_ms"]
    assert [(p["valid_ms"], p["temp_c"]) for p in last["points"]] == [
        (t, round(v, 2)) for t, v in weather.forecast(first, 48)]

    loop = SitePeakLoop(LoopConfig.from_site(SITE))
    loop.on_weather(last["issued_ms"], [(p["valid_ms"], p["temp_c"]) for p in last["points"]])
    assert loop.weather is not None and loop.forecaster._cov_names == ("outside_c",)
    xs = loop.weather.future_xs(last["issued_ms"] // 900_000 * 900_000 + 900_000, 4)
    assert xs and all("outside_c" in x for x in xs)
