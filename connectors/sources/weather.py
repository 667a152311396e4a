"""Kind ``weather``: the site's outside-temperature forecast from an Open-Meteo-compatible forecast API.

Each poll asks ``url`` (default the public Open-Meteo endpoint; a self-hosted instance or the site twin's
speaks the same form) for ``hours`` (default 48) of hourly ``temperature_2m`` at ``latitude`` / ``longitude``
and publishes one ``WeatherForecast`` record on ``weather.forecast`` (models/weather_service.py), which the
peaks agent takes as its load forecast's weather covariate. The service says nothing of its model run, so a
forecast counts as issued when it was read. A value that is no reading is dead-lettered with the reason and the
rest of the forecast goes on; a document that cannot be read at all is one dead letter, and a service that does
not answer makes the poll fail (the loop backs off and, in time, raises the monitoring-loss alarm).
"""

from __future__ import annotations

import json
import logging
from typing import Callable

import httpx

from opsloop.config.site import Site
from opsloop.config.sources import SourceConfig
from opsloop.connectors.sources.base import Readings, Reject, SourceUnavailable
from opsloop.models.weather_service import VARIABLE, forecast_record, parse_forecast

DEFAULT_URL = "https://api.open-meteo.com/v1/forecast"


class WeatherForecast:
    """A Poller: one GET per poll."""

    def __init__(self, config: SourceConfig, site: Site, client: httpx.Client | None = None):
        self.config = config
        try:
            self.latitude = float(config.option("latitude", required=True))
            self.longitude = float(config.option("longitude", required=True))
            self.hours = int(config.option("hours", 48))
        except (TypeError, ValueError) as exc:
            raise config.error(f"options: latitude and longitude must be numbers, hours a whole number: {exc}") from None
        if not (-90 <= self.latitude <= 90 and -180 <= self.longitude <= 180 and 1 <= self.hours <= 384):
            raise config.error("options: latitude in -90..90, longitude in -180..180, hours in 1..384")
        self.url = str(config.option("url", DEFAULT_URL))
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.client = client or httpx.Client(timeout=config.timeout_s)

    def poll(self, now_ms: int) -> Readings:
        params = {"latitude": self.latitude, "longitude": self.longitude, "hourly": VARIABLE,
                  "timeformat": "unixtime", "timezone": "GMT", "forecast_hours": self.hours}
        try:
            response = self.client.get(self.url, params=params)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"{self.url}: {exc}") from exc
        try:
            points, problems = parse_forecast(json.loads(response.content))
        except ValueError as exc:  # not JSON, or not the forecast's form: the whole answer is one dead letter
            return Readings(rejects=[Reject(response.content[:4096], "decode", f"weather forecast: {exc}")])
        rejects = [Reject(why.encode(), "invalid", f"weather forecast value: {why}") for why in problems]
        if not points:
            return Readings(rejects=rejects + [Reject(response.content[:4096], "invalid", "weather forecast: no value")])
        record = forecast_record(now_ms, self.config.site, self.config.name, now_ms, points)
        return Readings(rejects=rejects, records=[("weather.forecast", record)])

    def close(self) -> None:
        self.client.close()


def build(config: SourceConfig, site: Site, clock: Callable[[], float]) -> WeatherForecast:
    return WeatherForecast(config, site)
