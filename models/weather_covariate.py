"""The outside-temperature forecast as a load-forecast covariate: a chiller plant's power follows the weather.

Pure. A site's cooling draws IT / COP, and the COP falls as it warms outside, so the facility load moves with
the temperature beyond what the time of day says: a warm spell lifts every afternoon of it. A forecast of the
load that is told tomorrow's temperature can see that; one that only knows the days before cannot.

``WeatherCovariate`` (a ``models.step_covariate.StepCovariate``) takes the latest temperature forecast, (valid
time, degC) points from any service, at any spacing, and keeps the forecast temperature at the middle of each
forecast step (linear between points; none outside them). It is learnt from what the forecast said, not from
what the thermometer read later, so the forecaster learns what the forecast is worth, errors included.

>>> cov = WeatherCovariate(step_s=1800, horizon_steps=4)
>>> cov.observe(issued_ms=0, points=[(0, 20.0), (3_600_000, 22.0), (7_200_000, 21.0)])
>>> cov.future_xs(1_800_000, 4)  # the steps from 00:30: midpoints 00:45, 01:15, 01:45 and 02:15 (past the forecast)
[{'outside_c': 21.5}, {'outside_c': 21.75}, {'outside_c': 21.25}, {}]

A forecast issued hours ago still covers the whole horizon ahead, as far as its points reach: the profile runs
``horizon_steps`` past the oldest moment it is used (``max_age_s``).

>>> day = WeatherCovariate(step_s=3600, horizon_steps=24)
>>> day.observe(issued_ms=0, points=[(h * 3_600_000, 20.0 + h / 10) for h in range(48)])
>>> day.future_xs(11 * 3_600_000, 24)[-1]  # 11 h after the issue, a day ahead
{'outside_c': 23.45}
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Sequence

from opsloop.models.step_covariate import StepCovariate

NAME = "outside_c"  # the covariate's name in the forecaster's x
MAX_AGE_S = 12 * 3600.0  # services issue every 6 h or so: two missed issues and the forecast is stale


def at(points: Sequence[tuple[int, float]], ts_ms: float) -> float | None:
    """The forecast at ``ts_ms``, linear between its points (sorted by time); None outside them."""
    if not points or not points[0][0] <= ts_ms <= points[-1][0]:
        return None
    i = bisect.bisect_right([t for t, _ in points], ts_ms) - 1
    if i >= len(points) - 1:
        return points[-1][1]
    (t0, v0), (t1, v1) = points[i], points[i + 1]
    return v0 + (v1 - v0) * (ts_ms - t0) / (t1 - t0)


@dataclass
class WeatherCovariate(StepCovariate):
    name: str = NAME
    max_age_s: float = MAX_AGE_S

    def observe(self, issued_ms: int, points: Sequence[tuple[int, float]]) -> None:
        """Take a forecast issued at ``issued_ms``; one issued before the held one is ignored."""
        if not points or (self.snapshot_ms is not None and issued_ms < self.snapshot_ms):
            return
        points = sorted(points)
        step_ms = self.step_s * 1000
        start_ms = (issued_ms // step_ms - 1) * step_ms
        # A forecast is used until it is max_age_s old, and each use looks horizon_steps ahead: keep that far.
        steps = self.horizon_steps + math.ceil(self.max_age_s / self.step_s) + 3
        self.hold(issued_ms, start_ms, [at(points, start_ms + (k + 0.5) * step_ms) for k in range(steps)])
