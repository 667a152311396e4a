"""The weather source against the site twin's forecast page (real HTTP on localhost), and what it refuses."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources import KINDS
from opsloop.connectors.sources.base import SourceUnavailable
from opsloop.connectors.sources.weather import WeatherForecast
from opsloop.models.twin import SiteTwin
from opsloop.models.weather import SyntheticWeather
from opsloop.ops.twin import Meters, serve_prometheus
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.unit

SITE = load_site(DEMO_SITE)
H = 3_600_000


def config(url: str, **options):
    return parse_sources({"site": "demo", "sources": [{
        "kind": "weather", "name": "weather", "timeout_s": 2,
        "options": {"url": url, "latitude": 51.5, "longitude": -0.12, **options}}]}, "weather.yaml")[0]


@pytest.fixture
def twin_page():
    twin = SiteTwin(SITE, [(0, 30_000.0), (86_400_000, 30_000.0)], weather=SyntheticWeather(day_sd_c=3.0, seed=7))
    from opsloop.models.weather_service import forecast_document
    meters = Meters("demo", forecast=lambda hours: forecast_document(twin.weather.forecast(30 * H, hours)))
    server = serve_prometheus(meters, 0)
    host, port = server.server_address[:2]
    yield twin, f"http://{host}:{port}/v1/forecast"
    server.shutdown()
    server.server_close()


def test_a_poll_publishes_the_twins_forecast_as_one_record_the_schema_takes(twin_page):
    twin, url = twin_page
    assert "weather" in KINDS
    source = WeatherForecast(config(url, hours=36), SITE)
    readings = source.poll(30 * H + 5)
    source.close()
    assert readings.rejects == [] and readings.points == []
    [(topic, record)] = readings.records
    assert topic == "weather.forecast" and record["site"] == "demo" and record["issued_ms"] == 30 * H + 5
    assert len(record["points"]) == 36 and record["points"][0]["valid_ms"] == 30 * H
    expected = twin.weather.forecast(30 * H, 36)
    assert [(p["valid_ms"], p["temp_c"]) for p in record["points"]] == [(t, round(v, 2)) for t, v in expected]
    codec = Codec()
    assert codec.decode_as("WeatherForecast", codec.encode("WeatherForecast", record)) == record


class Answers(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/v1/forecast"
    server.shutdown()
    server.server_close()


def test_bad_values_are_dead_lettered_with_the_reason_and_the_rest_is_published(service):
    server, url = service
    source = WeatherForecast(config(url), SITE)
    Answers.body = json.dumps({"hourly": {"time": [0, 3600, 7200], "temperature_2m": [20.5, None, 99.0]}}).encode()
    readings = source.poll(0)
    assert [p["temp_c"] for p in readings.records[0][1]["points"]] == [20.5]
    assert [r.kind for r in readings.rejects] == ["invalid", "invalid"]
    assert "no temperature" in readings.rejects[0].reason and "no air temperature" in readings.rejects[1].reason
    Answers.body = b"<html>maintenance</html>"
    readings = source.poll(0)
    assert readings.records == [] and readings.rejects[0].kind == "decode" and readings.rejects[0].raw.startswith(b"<html")
    Answers.body = json.dumps({"hourly": {"time": [0], "temperature_2m": [None]}}).encode()
    readings = source.poll(0)
    assert readings.records == [] and readings.rejects[-1].reason == "weather forecast: no value"
    source.close()


def test_a_service_that_does_not_answer_fails_the_poll_and_bad_options_are_refused():
    source = WeatherForecast(config("http://127.0.0.1:9/v1/forecast"), SITE)  # discard port: refused
    with pytest.raises(SourceUnavailable):
        source.poll(0)
    source.close()
    for options in ({"latitude": 95.0}, {"hours": 0}, {"longitude": "east"}):
        with pytest.raises(ValueError):
            WeatherForecast(config("http://127.0.0.1:9/", **options), SITE)
