"""Remaining useful life: when a part's degrading metric will cross its limit, as a date with a band.

``DegradationTrend`` learns one series online (River style: ``learn_one``, ``forecast``). It fits
``value = level + slope * age**exponent`` by exponentially weighted least squares, where ``age`` is
the days since the first reading it learnt (``exponent`` 1: a straight line; about 0.5: the
square-root fade of a lithium cell's capacity with use). Six running sums are the whole state, so a
point costs O(1) and the model pickles small. ``forecast`` solves for the age at which the fitted
curve, and its lower and upper ``band`` confidence curves, reach the limit: the expected date and
the earliest and latest dates. The band is the fitted curve's own uncertainty (the slope and level
as the readings' scatter allows them), widening the further out it reaches, plus (in
quadrature) a spread of ``form_spread`` of the time left: the curve's form is itself only nearly right
(no two cells fade with quite the same exponent), an error that grows with the time left and that
many readings do not shrink. ``opsloop eval rul`` chooses it with the exponent and half-life.

``RULES`` names each metric a part wears out on and its limit (a battery's state of health below the
policy's minimum, a GPU's uncorrectable row remaps or ECC errors above a retirement count, a
temperature above its limit); ``forecast_record`` turns a forecast into a ``RulForecast`` record
with a reason code and one plain sentence naming the part, the date range, the evidence and the
confidence. Pure: no clock, event times come from the readings.

>>> trend = DegradationTrend()
>>> for day in range(0, 200, 2):  # 0.05 points of health lost per day, from 97 %
...     trend.learn_one(day * DAY_MS, 97.0 - 0.05 * day + (0.1 if day % 4 else -0.1))
>>> f = trend.forecast(80.0, "below")
>>> round(f.expected_ms / DAY_MS), f.earliest_ms < f.expected_ms < f.latest_ms
(340, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from statistics import NormalDist

DAY_MS = 86_400_000
#: The decisions ``forecast_record`` names: the limit is already passed, or forecast within the horizon.
REASON_CODES = ("LIMIT_PASSED", "LIMIT_FORECAST")


@dataclass(frozen=True)
class Rule:
    """A part wears out on ``metric``: it is due for replacement once the metric is ``direction`` ``limit``."""

    metric: str
    direction: str  # "below" | "above"
    limit: float
    evidence: str  # the metric in words, for the sentence
    unit: str  # as the sentence prints it after a number ("%", " °C"; "" for counts)
    family: str  # battery | gpu | cooling: which kind of part


def rules(min_soh_pct: float = 80.0) -> dict[str, Rule]:
    """The retirement rules by metric. Battery health takes the policy's ``pcs.min_soh_pct``; the GPU
    counts and temperatures are site defaults (set them from the vendor's RMA rules and data sheets)."""
    table = [
        Rule("ess_soh_pct", "below", min_soh_pct, "state of health", "%", "battery"),
        Rule("soh_pct", "below", min_soh_pct, "state of health", "%", "battery"),  # SunSpec 802 (ESS, UPS)
        Rule("rows_remapped_uncorrectable", "above", 8, "uncorrectable remapped rows", "", "gpu"),
        Rule("rows_remapped_correctable", "above", 512, "correctable remapped rows", "", "gpu"),
        Rule("ecc_dbe_count", "above", 10, "double-bit ECC errors", "", "gpu"),
        Rule("ecc_sbe_count", "above", 10_000, "single-bit ECC errors", "", "gpu"),
        Rule("xid_count", "above", 5, "XID errors", "", "gpu"),  # counted from xid_last (count_xid)
        Rule("thermal_throttle_pct", "above", 10, "share of time throttled for heat", "%", "gpu"),
        Rule("gpu_mem_temp_c", "above", 95, "memory temperature", " °C", "gpu"),
        Rule("temp_c", "above", 27, "temperature", " °C", "cooling"),  # ASHRAE's recommended upper inlet
        Rule("inlet_temp_c", "above", 27, "inlet temperature", " °C", "cooling"),
        Rule("hwmon_temp_c", "above", 90, "hardware temperature", " °C", "cooling"),
    ]
    return {r.metric: r for r in table}


RULES = rules()
#: Metrics whose readings become another series before they are learnt: the last XID code → XIDs so far.
DERIVED = {"xid_last": "xid_count"}


def count_xid(last_code: int, count: int, code: int) -> tuple[int, int]:
    """(last code, XIDs so far) after a reading of the last XID code: a new non-zero code is one more XID
    (the exporter repeats the last code until another comes; the XID alarm reads it the same way).

    >>> state = (0, 0)
    >>> for code in (0, 79, 79, 48, 0, 48):
    ...     state = count_xid(*state, code)
    >>> state
    (48, 3)
    """
    return code, count + (code != 0 and code != last_code)


@dataclass(frozen=True)
class Forecast:
    """When the limit is reached: ``expected_ms`` and the band ``earliest_ms``..``latest_ms`` (None: not
    within the horizon), as event times; ``rate_per_day`` is the fitted curve's slope at the last reading."""

    expected_ms: int | None
    earliest_ms: int
    latest_ms: int | None
    band: float
    value: float  # the last reading
    first_value: float  # the first reading the model learnt
    rate_per_day: float
    points: int
    span_days: float
    last_ms: int


class DegradationTrend:
    """Online weighted least squares of a series against ``age_days ** exponent``.

    ``half_life_days``: a reading's weight halves every this many days of event time (None: every
    reading counts the same). ``band``: the confidence of the date range. ``min_points`` and
    ``min_span_days``: how much history a forecast needs. ``horizon_days``: how far ahead it looks.
    """

    def __init__(self, exponent: float = 1.0, half_life_days: float | None = None, band: float = 0.8,
                 form_spread: float = 0.0, min_points: int = 10, min_span_days: float = 7.0,
                 horizon_days: float = 3650.0):
        if not exponent > 0:
            raise ValueError(f"exponent must be > 0, got {exponent}")
        self.exponent = exponent
        self.half_life_days = half_life_days
        self.band = band
        self.form_spread = form_spread
        self.min_points = min_points
        self.min_span_days = min_span_days
        self.horizon_days = horizon_days
        self.origin_ms: int | None = None
        self.last_ms: int | None = None
        self.first_value = math.nan
        self.last_value = math.nan
        self.points = 0
        # weighted sums: w, w x, w y, w x², w x y, w y², and w² for the effective sample size
        self._s = [0.0] * 7

    def configuration(self) -> tuple:
        return (type(self).__name__, self.exponent, self.half_life_days, self.band, self.form_spread, self.min_points,
                self.min_span_days, self.horizon_days)

    def describe(self) -> str:
        """The configuration as a forecast record names it."""
        return (f"DegradationTrend(exponent={self.exponent:g}, half_life_days={self.half_life_days}, "
                f"band={self.band:g}, form_spread={self.form_spread:g})")

    def _x(self, ts_ms: int) -> float:
        return max(0.0, (ts_ms - self.origin_ms) / DAY_MS) ** self.exponent

    def learn_one(self, ts_ms: int, value: float) -> None:
        """Learn one reading; readings older than the last one learnt are ignored (event-time order)."""
        if not math.isfinite(value) or (self.last_ms is not None and ts_ms < self.last_ms):
            return
        if self.origin_ms is None:
            self.origin_ms, self.first_value = ts_ms, value
        if self.half_life_days and self.last_ms is not None:
            decay = 0.5 ** ((ts_ms - self.last_ms) / DAY_MS / self.half_life_days)
            self._s = [s * decay for s in self._s[:6]] + [self._s[6] * decay * decay]
        x = self._x(ts_ms)
        for i, term in enumerate((1.0, x, value, x * x, x * value, value * value, 1.0)):
            self._s[i] += term
        self.last_ms, self.last_value = ts_ms, value
        self.points += 1

    def _fit(self):
        """(level, slope, covariance of (level, slope) as (vaa, vab, vbb)); None when not identifiable."""
        w, wx, wy, wxx, wxy, wyy, w2 = self._s
        det = w * wxx - wx * wx
        if w <= 0 or det <= 1e-12 * max(1.0, w * wxx):
            return None
        slope = (w * wxy - wx * wy) / det
        level = (wy - slope * wx) / w
        n_eff = w * w / w2
        if n_eff <= 3:
            return None
        rss = max(0.0, wyy - level * wy - slope * wxy)
        sigma2 = rss / w * n_eff / (n_eff - 2)
        # the readings' scatter, floored so an exactly straight series still gets a band
        sigma2 = max(sigma2, (1e-6 * max(1.0, abs(wy / w))) ** 2)
        scale = sigma2 / det * (w * w / (n_eff * w))  # (X'WX)^-1 σ², deflated to n_eff readings
        return level, slope, (wxx * scale, -wx * scale, w * scale)

    def _at(self, x: float, fit, z: float) -> float:
        level, slope, (vaa, vab, vbb) = fit
        return level + slope * x + z * math.sqrt(max(0.0, vaa + 2 * x * vab + x * x * vbb))

    def _cross(self, fit, z: float, limit: float, sign: float, x_now: float, x_end: float) -> float | None:
        """The first x in [x_now, x_end] where the z-curve reaches the limit (sign +1: from above)."""
        def beyond(x):
            return sign * (limit - self._at(x, fit, z)) >= 0
        if beyond(x_now):
            return x_now
        if not beyond(x_end):
            return None
        lo, hi = x_now, x_end
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if beyond(mid) else (mid, hi)
        return hi

    def _ms(self, x: float) -> int:
        return int(self.origin_ms + x ** (1.0 / self.exponent) * DAY_MS)

    def forecast(self, limit: float, direction: str) -> Forecast | None:
        """When the series reaches ``limit`` going ``direction`` ("below" or "above"); None while there is
        too little history, or when not even the band's early edge reaches it within the horizon."""
        if self.points < self.min_points or self.last_ms is None:
            return None
        span_days = (self.last_ms - self.origin_ms) / DAY_MS
        fit = self._fit()
        if fit is None or span_days < self.min_span_days:
            return None
        sign = 1.0 if direction == "below" else -1.0
        z = NormalDist().inv_cdf(0.5 + self.band / 2)
        x_now, x_end = self._x(self.last_ms), (span_days + self.horizon_days) ** self.exponent
        # falling towards a lower limit: the lower curve (-z) gets there first
        earliest = self._cross(fit, -sign * z, limit, sign, x_now, x_end)
        if earliest is None:
            return None
        expected = self._cross(fit, 0.0, limit, sign, x_now, x_end)
        latest = self._cross(fit, sign * z, limit, sign, x_now, x_end)
        level, slope, _ = fit
        age = max(span_days, 1e-9)
        rate = slope * self.exponent * age ** (self.exponent - 1)
        expected_ms, earliest_ms = (None if expected is None else self._ms(expected)), self._ms(earliest)
        latest_ms = None if latest is None else self._ms(latest)
        if expected_ms is not None and self.form_spread > 0:
            earliest_ms, latest_ms = widen(expected_ms, earliest_ms, latest_ms, self.last_ms, self.form_spread,
                                           NormalDist().inv_cdf(0.5 + self.band / 2))
        return Forecast(expected_ms, earliest_ms, latest_ms, self.band, self.last_value, self.first_value,
                        rate, self.points, span_days, self.last_ms)


def widen(expected_ms: int, earliest_ms: int, latest_ms: int | None, now_ms: int, form_spread: float,
          z: float) -> tuple[int, int | None]:
    """The band with the form's error added in quadrature: ``form_spread`` of the time left is one
    standard deviation of it (so the band's own z scales it as it scales the fit's)."""
    form = z * form_spread * max(0, expected_ms - now_ms)
    early = expected_ms - int(math.hypot(expected_ms - earliest_ms, form))
    late = None if latest_ms is None else expected_ms + int(math.hypot(latest_ms - expected_ms, form))
    return max(now_ms, early), late


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def _num(value: float, unit: str) -> str:
    return f"{value:.1f}{unit}" if unit.strip() in ("%", "°C") else f"{value:g}{unit}"


def sentence(device: str, device_type: str, rule: Rule, f: Forecast) -> str:
    """One plain sentence: the part, the date range, the evidence and the confidence."""
    part = f"{device_type.upper() if len(device_type) <= 4 else device_type} {device}"
    limit = f"{_num(rule.limit, rule.unit)} {rule.evidence}"
    unit = rule.unit.strip()
    evidence = (f"its {rule.evidence} went from {_num(f.first_value, rule.unit)} to {_num(f.value, rule.unit)} "
                f"over {f.span_days:.0f} days ({f.points} readings, {f.rate_per_day:+.3g}{' ' + unit if unit else ''}"
                f"/day now)")
    if f.expected_ms is not None and f.expected_ms <= f.last_ms:
        return f"{part} is already {rule.direction} {limit}: {evidence}; replace it."
    likely = f" (most likely {_day(f.expected_ms)})" if f.expected_ms is not None else ""
    when = (f"from {_day(f.earliest_ms)} on{likely}" if f.latest_ms is None
            else f"between {_day(f.earliest_ms)} and {_day(f.latest_ms)}{likely}")
    verb = "fall below" if rule.direction == "below" else "reach"
    return f"{part} is expected to {verb} {limit} {when}, {f.band:.0%} confidence: {evidence}."


def forecast_record(point: dict, rule: Rule, f: Forecast, model: str) -> dict:
    """The ``RulForecast`` record of a forecast for a TelemetryPoint's series, with its reason code."""
    passed = f.expected_ms is not None and f.expected_ms <= f.last_ms
    return {"ts_ms": f.last_ms, "site": point["site"], "device": point["device"],
            "device_type": point["device_type"], "metric": rule.metric, "family": rule.family,
            "direction": rule.direction, "limit": float(rule.limit), "value": float(f.value),
            "rate_per_day": float(f.rate_per_day), "expected_ms": f.expected_ms, "earliest_ms": f.earliest_ms,
            "latest_ms": f.latest_ms, "band": float(f.band), "points": f.points, "span_days": float(f.span_days),
            "model": model, "reason_code": "LIMIT_PASSED" if passed else "LIMIT_FORECAST",
            "text": sentence(point["device"], point["device_type"], rule, f)}
