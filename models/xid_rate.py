"""XID errors as wear: a GPU's XID alarms counted, and when the count will reach its retirement limit.

The live sources (the Prometheus exporter's last XID code, kernel logs) turn each NVIDIA XID into an
``Alarm`` with the code ``XID_<n>``; ``xid_code`` recognises one. ``XidRate`` (River style: ``learn_one``,
``forecast``) counts one GPU's XIDs and learns their rate as a Poisson process: a gamma belief about the
rate from the XIDs after the first and the time they took, each XID's weight halving every
``half_life_days`` (a GPU that was noisy a year ago and quiet since is not judged by its old burst).
``forecast`` answers when the count reaches ``limit``: the number of XIDs in the next t days is then
negative binomial, so the earliest, median and latest dates of the ``band`` are where its chance of
holding the ``limit - count`` XIDs still missing crosses (1 - band) / 2, 1/2 and (1 + band) / 2. It
returns ``models.rul.Forecast``, so the forecast record and its sentence are the other GPU rules'
(``models.rul.forecast_record``, the rule ``xid_count``). Pure: event times come from the alarms.

>>> rate = XidRate()
>>> for day, code in ((0, 79), (9, 48), (20, 79), (30, 79)):  # about one XID every ten days
...     rate.learn_one(day * DAY_MS, code)
>>> f = rate.forecast(5)
>>> f.value, round(f.rate_per_day, 3), f.earliest_ms < f.expected_ms < f.latest_ms
(4.0, 0.111, True)
>>> round((f.expected_ms - f.last_ms) / DAY_MS)  # one more to go: about a week (median of the wait)
7
"""

from __future__ import annotations

import math
import re
from typing import Mapping

from opsloop.models.rul import DAY_MS, Forecast

_XID = re.compile(r"XID_(\d+)$")


def xid_code(alarm: Mapping) -> int | None:
    """The XID number of a raised XID alarm (code ``XID_<n>``), else None (clears and other alarms).

    >>> xid_code({"code": "XID_79", "state": "raise"}), xid_code({"code": "XID_79", "state": "clear"})
    (79, None)
    """
    found = _XID.match(alarm.get("code", ""))
    return int(found.group(1)) if found and alarm.get("state", "raise") == "raise" else None


def _at_least(k: int, shape: float, exposure_days: float, days: float) -> float:
    """The chance of ``k`` or more XIDs in the next ``days``, the rate being gamma(``shape``, ``exposure_days``)
    (negative binomial)."""
    p = exposure_days / (exposure_days + days)
    below = sum(math.exp(math.lgamma(i + shape) - math.lgamma(shape) - math.lgamma(i + 1)
                         + shape * math.log(p) + (i * math.log1p(-p) if i else 0.0)) for i in range(k))
    return max(0.0, 1.0 - below)


class XidRate:
    """One GPU's XIDs: the count so far and their rate.

    ``half_life_days``: an XID's weight in the rate halves every this many days (None: all count the same).
    ``band``: the confidence of the date range. ``min_span_days``: the history a rate needs (a burst within
    minutes says little about next month; a count at the limit is reported whatever the history).
    ``horizon_days``: how far ahead the forecast looks.
    """

    REMEMBERED = 16

    def __init__(self, half_life_days: float | None = 30.0, band: float = 0.8, min_span_days: float = 1.0,
                 horizon_days: float = 3650.0):
        self.half_life_days = half_life_days
        self.band = band
        self.min_span_days = min_span_days
        self.horizon_days = horizon_days
        self.count = 0
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self.seen: tuple[tuple[int, int], ...] = ()  # the last XIDs' (time, code): a resent alarm is no new XID
        self._shape = 0.0  # the XIDs after the first, weighted
        self._exposure = 0.0  # the days they took, weighted the same way

    def configuration(self) -> tuple:
        return (type(self).__name__, self.half_life_days, self.band, self.min_span_days, self.horizon_days)

    def describe(self) -> str:
        """The configuration as a forecast record names it."""
        return f"XidRate(half_life_days={self.half_life_days}, band={self.band:g})"

    def learn_one(self, ts_ms: int, code: int) -> None:
        """One XID. The same code at the same time as one of the last ``REMEMBERED`` is a resent alarm, not
        another XID; one older than the last counts but does not move the clock."""
        if (ts_ms, code) in self.seen:
            return
        self.seen = self.seen[-(self.REMEMBERED - 1):] + ((ts_ms, code),)
        self.count += 1
        if self.first_ms is None:
            self.first_ms = self.last_ms = ts_ms
            return
        gap = max(0.0, (ts_ms - self.last_ms) / DAY_MS)
        if self.half_life_days:
            decay = 0.5 ** (gap / self.half_life_days)
            self._exposure = self._exposure * decay + self.half_life_days / math.log(2) * (1 - decay)
            self._shape = self._shape * decay + 1.0
        else:
            self._exposure += gap
            self._shape += 1.0
        self.last_ms = max(self.last_ms, ts_ms)

    def _wait(self, k: int, chance: float) -> float | None:
        """Days until ``k`` more XIDs have come with this ``chance``; None beyond the horizon."""
        if _at_least(k, self._shape, self._exposure, self.horizon_days) < chance:
            return None
        lo, hi = 0.0, self.horizon_days
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if _at_least(k, self._shape, self._exposure, mid) >= chance else (mid, hi)
        return hi

    def forecast(self, limit: float) -> Forecast | None:
        """When the count reaches ``limit``; None while the history is too short, or when not even the band's
        early edge reaches it within the horizon."""
        if self.last_ms is None:
            return None
        span_days = (self.last_ms - self.first_ms) / DAY_MS
        rate = self._shape / self._exposure if self._exposure > 0 else 0.0
        missing = math.ceil(limit - self.count)
        if missing <= 0:
            return Forecast(self.last_ms, self.last_ms, self.last_ms, self.band, float(self.count), 1.0, rate,
                            self.count, span_days, self.last_ms)
        if span_days < self.min_span_days or self._exposure <= 0 or self._shape <= 0:
            return None
        earliest = self._wait(missing, (1 - self.band) / 2)
        if earliest is None:
            return None
        expected, latest = self._wait(missing, 0.5), self._wait(missing, (1 + self.band) / 2)

        def ms(days: float | None) -> int | None:
            return None if days is None else self.last_ms + int(days * DAY_MS)

        return Forecast(ms(expected), ms(earliest), ms(latest), self.band, float(self.count), 1.0, rate, self.count,
                        span_days, self.last_ms)
