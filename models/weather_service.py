"""A weather service's hourly temperature forecast, read and written in the Open-Meteo JSON form.

Pure. The Open-Meteo forecast API (``/v1/forecast?latitude=..&longitude=..&hourly=temperature_2m
&timeformat=unixtime``) answers ``{"hourly": {"time": [unix s, ...], "temperature_2m": [...]},
"hourly_units": {"temperature_2m": "°C"}}``; other services and self-hosted instances speak the same form.
``parse_forecast`` reads it into (valid time ms, degC) points, in time order. A value that is no reading
(null, not a number, outside what air on Earth has measured) is left out and said why; a document without
the two arrays, or with arrays of different lengths, is refused whole (``ValueError``). Fahrenheit is
converted. ``forecast_document`` writes the same form (the site twin serves its forecast with it).

>>> doc = forecast_document([(0, 20.0), (3_600_000, 21.5)])
>>> doc["hourly"]
{'time': [0, 3600], 'temperature_2m': [20.0, 21.5]}
>>> parse_forecast(doc)
([(0, 20.0), (3600000, 21.5)], [])
>>> parse_forecast({"hourly": {"time": [0, 3600, 7200], "temperature_2m": [68.0, None, 500]},
...                 "hourly_units": {"temperature_2m": "°F"}})
([(0, 20.0)], ['3600: no temperature (None)', '7200: 500 °F is no air temperature'])
"""

from __future__ import annotations

import math
from typing import Any, Sequence

VARIABLE = "temperature_2m"
LOWEST_C, HIGHEST_C = -90.0, 60.0  # beyond what has been measured in air (Vostok -89.2, Death Valley 56.7)


def _celsius(value: float, unit: str) -> float:
    return (value - 32.0) * 5.0 / 9.0 if unit in ("°F", "F", "degF", "fahrenheit") else value


def parse_forecast(doc: Any) -> tuple[list[tuple[int, float]], list[str]]:
    """(points, problems): each hour's (valid ms, degC), in time order, and why each value left out was."""
    try:
        hourly = doc["hourly"]
        times, values = hourly["time"], hourly[VARIABLE]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"no hourly.time and hourly.{VARIABLE} in the forecast: {exc!r}") from None
    if not isinstance(times, list) or not isinstance(values, list) or len(times) != len(values):
        raise ValueError(f"hourly.time and hourly.{VARIABLE} must be lists of the same length")
    unit = str(((doc.get("hourly_units") or {}).get(VARIABLE)) or "°C")
    points, problems = [], []
    for t, v in zip(times, values):
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
            problems.append(f"{t!r}: no unix time (timeformat=unixtime)")
        elif not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            problems.append(f"{t}: no temperature ({v!r})")
        elif not LOWEST_C <= _celsius(float(v), unit) <= HIGHEST_C:
            problems.append(f"{t}: {v} {unit} is no air temperature")
        else:
            points.append((int(t * 1000), round(_celsius(float(v), unit), 3)))
    return sorted(points), problems


def forecast_document(points: Sequence[tuple[int, float]], latitude: float = 0.0, longitude: float = 0.0) -> dict:
    """Points as the Open-Meteo form gives them (unix seconds, degC)."""
    return {"latitude": latitude, "longitude": longitude, "timezone": "GMT", "utc_offset_seconds": 0,
            "hourly_units": {"time": "unixtime", VARIABLE: "°C"},
            "hourly": {"time": [int(t // 1000) for t, _ in points], VARIABLE: [round(v, 2) for _, v in points]}}


def forecast_record(ts_ms: int, site: str, source: str, issued_ms: int, points: Sequence[tuple[int, float]]) -> dict:
    """The ``WeatherForecast`` record of one read forecast."""
    return {"ts_ms": ts_ms, "site": site, "source": source, "issued_ms": issued_ms,
            "points": [{"valid_ms": t, "temp_c": v} for t, v in points]}
