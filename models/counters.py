"""Counters to rates: a cumulative reading (energy in µJ, bytes, requests) becomes a rate per second
between two polls, with wrap-around at a known range and resets told apart from it.

A counter that wraps at ``wrap_at`` (RAPL's ``max_energy_range_uj``) and reads lower than before
has gone round once: the rate adds the range. A counter without a range that reads lower was
reset (a driver reload, a reboot): no rate for that interval, and the caller says so. Several
wraps within one interval cannot be seen; poll well inside the wrap time (RAPL: ~60 s at 250 W+).

>>> rates = CounterRates()
>>> rates.update("pkg", 1_000_000, 0).status
'first'
>>> r = rates.update("pkg", 31_000_000, 1_000)   # 30 J in 1 s
>>> r.status, r.per_s
('ok', 30000000.0)
>>> r = rates.update("pkg", 5_000_000, 2_000, wrap_at=32_000_000)   # went round: 1 + 5 J
>>> r.status, r.per_s
('wrap', 6000000.0)
>>> rates.update("pkg", 1_000, 3_000).status   # lower, no range known: a reset
'reset'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    status: str  # first | ok | wrap | reset | stale (no time has passed)
    per_s: float | None = None  # counter units per second; None unless ok or wrap


class CounterRates:
    """The last reading of each counter by key; ``update`` gives the rate since it."""

    def __init__(self):
        self.last: dict[str, tuple[int, int]] = {}  # key -> (value, ts_ms)

    def update(self, key: str, value: int, ts_ms: int, wrap_at: int | None = None) -> Rate:
        previous = self.last.get(key)
        self.last[key] = (value, ts_ms)
        if previous is None:
            return Rate("first")
        before, then = previous
        elapsed_s = (ts_ms - then) / 1000
        if elapsed_s <= 0:
            self.last[key] = previous  # keep the older reading: the next interval measures from it
            return Rate("stale")
        if value >= before:
            return Rate("ok", (value - before) / elapsed_s)
        if wrap_at and before <= wrap_at:
            return Rate("wrap", (value + wrap_at - before) / elapsed_s)
        return Rate("reset")

    def forget(self, keep: set[str]) -> None:
        """Drop counters not seen any more (a device removed), so a returning one starts afresh."""
        for key in set(self.last) - keep:
            del self.last[key]
