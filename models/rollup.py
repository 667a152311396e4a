"""Site rollup: raw telemetry points → per-site, event-time tumbling-window snapshots.

Pure logic: no Kafka, no clock. The caller passes event times, the watermark
and (optionally) each point's source position, and gets back closed windows.

Late and out-of-order data (the policy, tested in tests/unit/models/test_rollup.py):

* A window [start, start + window) stays open until the watermark passes
  ``end + grace``; points may arrive in any order until then and all count.
* The watermark only moves forward. It is supplied by the caller: the minimum
  over input partitions of each partition's latest event time (see
  ``PartitionWatermark``), so one fast partition cannot close windows early.
* A point whose window has already closed is *late*: ``add`` returns
  ``Late`` with a reason and leaves the closed window unchanged; the agent
  sends it to ``deadletter`` so it is kept and visible, never silently lost.
* ``flush`` closes every open window (end of a replay, or all inputs idle)
  and moves the watermark past them, so later points for them are late too.

Aggregation: within a window each device's metric is averaged; site powers
are sums over devices of those means (grid, IT, facility, ESS, GPU kW);
state-of-charge, state-of-health and price are means over devices. PUE is
facility / IT when both are known and IT > 0.

>>> r = SiteRollup(window_s=60, grace_s=0)
>>> for ts, dev, metric, kw in [(0, "pdu-1", "it_kw", 100.0), (30_000, "pdu-1", "it_kw", 110.0),
...                             (10_000, "pdu-2", "it_kw", 50.0), (5_000, "fm", "facility_kw", 190.0)]:
...     r.add("demo", dev, metric, kw, ts)
>>> [s["it_kw"] for s in r.advance(59_999)]  # the window [0, 60 s) is not over yet
[]
>>> snap, = r.advance(60_000)
>>> snap["it_kw"], snap["facility_kw"], round(snap["pue"], 3), snap["devices"]
(155.0, 190.0, 1.226, 3)
>>> r.add("demo", "pdu-1", "it_kw", 120.0, 59_000)
Late(reason='window 1970-01-01T00:00:00Z of site demo closed at 1970-01-01T00:01:00Z (window end + 0 s grace); the watermark is already at 1970-01-01T00:01:00Z')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

# metric → (snapshot field, how devices combine)
SUM, MEAN = "sum", "mean"
METRICS: dict[str, tuple[str, str]] = {
    "grid_kw": ("grid_kw", SUM),
    "it_kw": ("it_kw", SUM),
    "facility_kw": ("facility_kw", SUM),
    "ess_kw": ("ess_kw", SUM),
    "gpu_kw": ("gpu_kw", SUM),
    "ess_soc_pct": ("ess_soc_pct", MEAN),
    "ess_soh_pct": ("ess_soh_pct", MEAN),
    "price_per_mwh": ("price_per_mwh", MEAN),
}


@dataclass(frozen=True)
class Late:
    """Returned by ``SiteRollup.add`` for a point behind a closed window."""

    reason: str


@dataclass(frozen=True)
class Invalid:
    """Returned by ``fold`` for a point whose value cannot be aggregated."""

    reason: str


def fold(rollup: "SiteRollup", watermark: "PartitionWatermark", point: dict, partition: int,
         offset: int | None = None) -> "Late | Invalid | None":
    """Fold one decoded TelemetryPoint in and move the watermark: how every runner feeds the rollup.

    >>> r, w = SiteRollup(60, 0), PartitionWatermark([0])
    >>> p = {"site": "s", "device": "gm", "metric": "grid_kw", "value": float("nan"), "ts_ms": 0}
    >>> fold(r, w, p, 0)
    Invalid(reason='grid_kw of gm is nan, not a finite number')
    >>> fold(r, w, {**p, "value": 5.0}, 0), w.value, r.watermark_ms
    (None, 0, 0)
    """
    value, ts = point["value"], point["ts_ms"]
    if not math.isfinite(value):
        return Invalid(f"{point['metric']} of {point['device']} is {value}, not a finite number")
    late = rollup.add(point["site"], point["device"], point["metric"], value, ts, partition, offset)
    if late is None:
        watermark.observe(partition, ts)
        rollup.move_watermark(watermark.value)
    return late


@dataclass
class _Window:
    # (metric, device) → [sum, count]
    sums: dict[tuple[str, str], list] = field(default_factory=dict)
    devices: set = field(default_factory=set)
    samples: int = 0
    # source partition → lowest offset folded into this window (for safe commits)
    first_offsets: dict[int, int] = field(default_factory=dict)


class SiteRollup:
    """Event-time tumbling windows per site, closed by a caller-supplied watermark."""

    def __init__(self, window_s: int = 60, grace_s: int = 120):
        if window_s <= 0 or grace_s < 0:
            raise ValueError("window_s must be > 0 and grace_s >= 0")
        self.window_s = window_s
        self.grace_s = grace_s
        self._window_ms = window_s * 1000
        self._grace_ms = grace_s * 1000
        self._open: dict[tuple[str, int], _Window] = {}
        self.watermark_ms: int | None = None

    def window_start(self, ts_ms: int) -> int:
        return ts_ms - ts_ms % self._window_ms

    def is_closed(self, ts_ms: int) -> bool:
        """Whether the window holding ``ts_ms`` has closed at the current watermark."""
        end = self.window_start(ts_ms) + self._window_ms
        return self.watermark_ms is not None and end + self._grace_ms <= self.watermark_ms

    def add(self, site: str, device: str, metric: str, value: float, ts_ms: int,
            partition: int = 0, offset: int | None = None) -> Late | None:
        """Fold one point in; returns ``Late`` (and changes nothing) if its window has closed."""
        start = self.window_start(ts_ms)
        if self.is_closed(ts_ms):
            closed_ms = start + self._window_ms + self._grace_ms
            return Late(f"window {_iso(start)} of site {site} closed at {_iso(closed_ms)} (window end + "
                        f"{self.grace_s} s grace); the watermark is already at {_iso(self.watermark_ms)}")
        window = self._open.get((site, start))
        if window is None:
            window = self._open[(site, start)] = _Window()
        window.samples += 1
        window.devices.add(device)
        if offset is not None:
            known = window.first_offsets.get(partition)
            if known is None or offset < known:
                window.first_offsets[partition] = offset
        if metric in METRICS:
            acc = window.sums.get((metric, device))
            if acc is None:
                window.sums[(metric, device)] = [value, 1]
            else:
                acc[0] += value
                acc[1] += 1
        return None

    def move_watermark(self, watermark_ms: int | None) -> None:
        """Move the watermark forward (never back) without emitting; later points are judged by it."""
        if watermark_ms is not None and (self.watermark_ms is None or watermark_ms > self.watermark_ms):
            self.watermark_ms = watermark_ms

    def advance(self, watermark_ms: int | None) -> list[dict]:
        """Move the watermark forward (never back) and return the windows it closes, oldest first."""
        self.move_watermark(watermark_ms)
        if self.watermark_ms is None:
            return []
        horizon = self.watermark_ms - self._grace_ms - self._window_ms
        due = sorted(k for k in self._open if k[1] <= horizon)
        return [self._close(key) for key in due]

    def flush(self) -> list[dict]:
        """Close every open window now and move the watermark past the last of them."""
        if not self._open:
            return []
        last_start = max(start for _, start in self._open)
        return self.advance(last_start + self._window_ms + self._grace_ms)

    def pending_offsets(self) -> dict[int, int]:
        """Per source partition, the lowest offset still held by an open window.

        Committing below this keeps every point of an unemitted window replayable after a crash.
        """
        lowest: dict[int, int] = {}
        for window in self._open.values():
            for partition, offset in window.first_offsets.items():
                if offset < lowest.get(partition, offset + 1):
                    lowest[partition] = offset
        return lowest

    @property
    def open_windows(self) -> int:
        return len(self._open)

    def _close(self, key: tuple[str, int]) -> dict:
        site, start = key
        window = self._open.pop(key)
        per_field: dict[str, list[float]] = {}
        for (metric, _device), (total, count) in window.sums.items():
            per_field.setdefault(METRICS[metric][0], []).append(total / count)
        snapshot = {"site": site, "window_start_ms": start, "window_end_ms": start + self._window_ms}
        for name, how in METRICS.values():
            means = per_field.get(name)
            if not means:
                snapshot[name] = None
            else:
                snapshot[name] = sum(means) if how == SUM else sum(means) / len(means)
        it, facility = snapshot["it_kw"], snapshot["facility_kw"]
        snapshot["pue"] = facility / it if it and facility is not None and it > 0 else None
        snapshot["samples"] = window.samples
        snapshot["devices"] = len(window.devices)
        return snapshot


class PartitionWatermark:
    """Event-time watermark over input partitions: the minimum of each active partition's latest time.

    Until every input partition has either delivered or caught up there is no watermark
    (consumers read partitions unevenly: one partition's hour of data must not make
    another's late). A partition that has caught up (no data waiting) stops holding the
    watermark back until it delivers again; with no active partition the watermark is the
    latest time seen.
    ``value`` is kept up to date per observation (cheap: the minimum is recomputed only
    when the partition holding it moves), so lateness does not depend on batch boundaries.

    >>> w = PartitionWatermark(partitions=[0, 1])
    >>> w.observe(0, 5_000); w.value is None
    True
    >>> w.observe(1, 2_000); w.value
    2000
    >>> w.caught_up(1); w.value
    5000
    """

    def __init__(self, partitions=()):
        self._latest: dict[int, int] = {}
        self._idle: set[int] = set()
        self._unheard: set[int] = set(partitions)  # no data and no end-of-partition yet
        self.value: int | None = None
        self._holder: int | None = None  # partition whose time is the current value

    def observe(self, partition: int, ts_ms: int) -> None:
        latest = self._latest.get(partition)
        was_idle = partition in self._idle
        if latest is not None and ts_ms <= latest and not was_idle:
            return  # not newer than what this partition already showed: nothing moves
        if latest is None or ts_ms > latest:
            self._latest[partition] = ts_ms
        self._idle.discard(partition)
        self._unheard.discard(partition)
        if was_idle or latest is None or self._holder in (None, partition):
            self._recompute()

    def caught_up(self, partition: int) -> None:
        self._idle.add(partition)
        self._unheard.discard(partition)
        self._recompute()

    def stale(self, partition: int) -> None:
        """A caught-up partition's end is no longer known (the broker was away, and data may have queued
        meanwhile): it holds the watermark back again, at its latest time, until it delivers or catches up.

        >>> w = PartitionWatermark(partitions=[0, 1])
        >>> w.observe(0, 5_000); w.observe(1, 2_000); w.caught_up(1); w.stale(1); w.value
        2000
        """
        if partition not in self._idle:
            return
        self._idle.discard(partition)
        if partition not in self._latest:
            self._unheard.add(partition)
        self._recompute()

    def forget(self, partition: int) -> None:
        self._latest.pop(partition, None)
        self._idle.discard(partition)
        self._unheard.discard(partition)
        self._recompute()

    def _recompute(self) -> None:
        if self._unheard:
            self.value = self._holder = None
            return
        active = [(ts, p) for p, ts in self._latest.items() if p not in self._idle]
        if active:
            self.value, self._holder = min(active)
        elif self._latest:
            self.value, self._holder = max(self._latest.values()), None
        else:
            self.value = self._holder = None


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
