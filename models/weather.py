"""Synthetic outside temperature and its forecasts, for the site twin: seeded, pure, readable in any order.

The temperature is a daily cycle (``mean_c`` +/- ``swing_c``, warmest at ``peak_hour`` UTC) plus a
day-to-day anomaly: a first-order autoregression of daily means (standard deviation ``day_sd_c``, lag-one
correlation ``day_corr``), so warm and cool spells last a few days, as they do. Each day's anomaly is
centred on its noon and interpolated linearly between noons, so the temperature has no step at midnight.
``day_sd_c`` 0 is the plain daily cycle.

Forecasts are issued every ``cycle_h`` hours, as weather services run their models; a forecast's error
grows with lead time: ``forecast_sd_c`` at lead 0 plus ``forecast_sd_per_day_c`` per day of lead, with
one error path per issue (knots every 12 h, interpolated), so consecutive steps of one forecast miss
together. The defaults are of the size national services report for a day-ahead 2 m temperature
(root-mean-square error of about 1.5-2 degC at a day).

Random numbers come from ``random.Random`` seeded by text (``seed``, what, index), so any day, any issue
and any valid time reads the same whatever was read before: nothing depends on the order of calls.

>>> SyntheticWeather().outside_c(15 * 3_600_000) - SyntheticWeather().outside_c(3 * 3_600_000)  # the plain cycle
12.0
>>> w = SyntheticWeather(day_sd_c=3.0, seed=1)
>>> import statistics
>>> round(statistics.pstdev(w.anomaly_c(day) for day in range(2000)), 1)  # spells of warm and cool days
3.1
>>> w.outside_c(86_400_000) == SyntheticWeather(day_sd_c=3.0, seed=1).outside_c(86_400_000)
True
>>> points = w.forecast(issued_ms=6 * 3_600_000, hours=48)
>>> len(points), points[0][0]  # hourly values from the issue's cycle on
(48, 21600000)
>>> abs(points[0][1] - w.outside_c(6 * 3_600_000)) < 3 * 0.5  # lead 0: within three sd of the truth
True
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
KNOT_MS = 12 * HOUR_MS  # a forecast's error path is drawn at these steps of valid time and interpolated
MEMORY_DAYS = 30  # days of innovations summed into one day's anomaly (day_corr ** 30 is negligible)


@dataclass
class SyntheticWeather:
    mean_c: float = 18.0
    swing_c: float = 6.0
    peak_hour: float = 15.0
    day_sd_c: float = 0.0
    day_corr: float = 0.7
    forecast_sd_c: float = 0.5
    forecast_sd_per_day_c: float = 1.5
    cycle_h: int = 6
    seed: int = 0
    _anomalies: dict[int, float] = field(default_factory=dict, repr=False)

    def _normal(self, *key) -> float:
        return random.Random(":".join(str(k) for k in (self.seed, *key))).gauss(0.0, 1.0)

    def anomaly_c(self, day: int) -> float:
        """The daily mean's departure on ``day`` (days since the epoch): a stationary AR(1) written as the sum
        of past innovations, so each day is computed alone."""
        if self.day_sd_c == 0.0:
            return 0.0
        if day not in self._anomalies:
            rho = self.day_corr
            scale = self.day_sd_c * math.sqrt(1 - rho * rho)
            self._anomalies[day] = scale * sum(rho ** k * self._normal("day", day - k) for k in range(MEMORY_DAYS))
        return self._anomalies[day]

    def outside_c(self, ts_ms: int) -> float:
        hour = (ts_ms % DAY_MS) / HOUR_MS
        cycle = self.mean_c + self.swing_c * math.cos(2 * math.pi * (hour - self.peak_hour) / 24)
        noon = ts_ms - DAY_MS // 2  # days counted from noon to noon
        day, into = noon // DAY_MS, (noon % DAY_MS) / DAY_MS
        return cycle + self.anomaly_c(day) * (1 - into) + self.anomaly_c(day + 1) * into

    def issue_ms(self, ts_ms: int) -> int:
        """The latest forecast cycle at or before ``ts_ms``."""
        cycle_ms = self.cycle_h * HOUR_MS
        return ts_ms // cycle_ms * cycle_ms

    def forecast_c(self, issued_ms: int, valid_ms: int) -> float:
        """The forecast of the cycle ``issued_ms`` for ``valid_ms`` (not before the issue)."""
        lead_days = max(0, valid_ms - issued_ms) / DAY_MS
        k, into = divmod(max(0, valid_ms - issued_ms), KNOT_MS)
        path = self._normal("fc", issued_ms, k) * (1 - into / KNOT_MS) + self._normal("fc", issued_ms, k + 1) * into / KNOT_MS
        return self.outside_c(valid_ms) + (self.forecast_sd_c + self.forecast_sd_per_day_c * lead_days) * path

    def forecast(self, issued_ms: int, hours: int = 48) -> list[tuple[int, float]]:
        """The latest forecast at ``issued_ms``: (valid time, degC) hourly from its cycle on, ``hours`` of them."""
        cycle = self.issue_ms(issued_ms)
        return [(cycle + h * HOUR_MS, self.forecast_c(cycle, cycle + h * HOUR_MS)) for h in range(hours)]
