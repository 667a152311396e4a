"""Site rollup: raw telemetry points → per-site, event-time tumbling-window snapshots.

Pure logic: no Kafka, no clock. The caller passes event times, the processing time, the
watermarks and (optionally) each point's source position, and gets back closed windows.

Late and out-of-order data (the policy, tested in tests/unit/models/test_rollup.py):

* A window [start, start + window) stays open until the watermark passes
  ``end + grace``; points may arrive in any order until then and all count.
* Watermarks are kept per *lane*, a (site, source) pair (``LaneWatermarks``): a replay of
  the year 2000 and a live source on the wall clock, even for one site, never make each
  other late. A lane's watermark is the minimum over input partitions of the lane's latest
  time on each. A partition read to its end (or, for this lane, past a record of another
  lane) keeps holding it for ``hold`` of processing time before it is let go, and a
  partition that has not delivered the lane's data holds it back entirely for that time
  after the lane starts (or wakes): sources write every partition at once but a consumer
  reads them one after another, so the first partition read must not close the others'
  windows. A lane whose partitions are all let go is asleep: its windows close.
* A window closes when every lane of its site has passed its end plus grace, is asleep, or
  is on another clock: it has no point in the window and its watermark is more than the
  event-time bound (``EventTimeBounds.max_future_ms``) before it, so its next point cannot
  land there.
* A point whose window has already closed is *late*: ``add`` returns ``Late`` with a
  reason and leaves the closed window unchanged; the agent sends it to ``deadletter`` so
  it is kept and visible, never silently lost. Lateness is judged by the point's own lane.
* A point whose value is not finite or beyond ``MAX_MAGNITUDE`` is *invalid*: ``fold``
  returns ``Invalid`` with a reason and changes nothing, so no snapshot carries inf or NaN.
* A point whose time the bounds refuse (``models/event_time.py``) is ``Invalid``: it moves
  no watermark and opens no window.
* ``flush`` closes every open window (end of a replay, or all inputs idle) and moves every
  lane past them, so later points for them are late too.

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
from typing import Iterable

from opsloop.models.event_time import EventTimeBounds, iso_ms

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

Lane = tuple[str, str]  # (site, source): one clock


#: The largest magnitude a point may have. Far above any real reading (1e12 kW is a petawatt; no
#: percentage or price comes near), and small enough that sums and means over any number of
#: devices and samples stay finite: a point beyond it is refused as ``Invalid`` at the door.
MAX_MAGNITUDE = 1e12


@dataclass(frozen=True)
class Late:
    """Returned by ``SiteRollup.add`` for a point behind a closed window."""

    reason: str


@dataclass(frozen=True)
class Invalid:
    """Returned by ``fold`` for a point whose value or time cannot be aggregated."""

    reason: str


def fold(rollup: "SiteRollup", watermarks: "LaneWatermarks", point: dict, partition: int,
         offset: int | None = None, now_ms: int | None = None) -> "Late | Invalid | None":
    """Fold one decoded TelemetryPoint in and move its lane: how every runner feeds the rollup.

    ``now_ms`` is the processing time (wall clock, ms): it bounds event times and lets go of
    partitions that hold a lane.

    >>> r, w = SiteRollup(60, 0), LaneWatermarks([0], hold_ms=0)
    >>> p = {"site": "s", "device": "gm", "metric": "grid_kw", "value": float("nan"), "ts_ms": 0, "source": "t"}
    >>> fold(r, w, p, 0)
    Invalid(reason='grid_kw of gm is nan, not a finite number')
    >>> fold(r, w, {**p, "value": 1e308}, 0)
    Invalid(reason='grid_kw of gm is 1e+308, beyond the plausible magnitude 1e+12')
    >>> fold(r, w, {**p, "ts_ms": -2**62, "value": 1.0}, 0)
    Invalid(reason='grid_kw of gm: event time -4611686018427387904 ms since the epoch is before the epoch')
    >>> fold(r, w, {**p, "value": 5.0}, 0), w.latest(("s", "t"))
    (None, 0)
    """
    value, ts = point["value"], point["ts_ms"]
    if not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:  # false for NaN too: the common case costs one comparison
        return Invalid(value_problem(point))
    lane = (point["site"], point["source"])
    refused = rollup.bounds.check(ts, watermarks.latest(lane), rollup.lane_watermark(lane), now_ms)
    if refused is not None:
        return Invalid(f"{point['metric']} of {point['device']}: {refused}")
    late = rollup.add(point["site"], point["device"], point["metric"], value, ts, partition, offset, lane)
    if late is None:
        watermarks.observe(lane, partition, ts, now_ms or 0)
    return late


def value_problem(point: dict, max_magnitude: float = MAX_MAGNITUDE) -> str | None:
    """Why a point's value cannot be aggregated (not finite, or beyond ``max_magnitude``), or None.

    The check is on each point rather than on the closed window: a refused point is dead-lettered
    as itself, with its offset, and cannot have changed a window (an aggregate found infinite at
    closing could no longer name the message that made it so, and would have to drop the window).
    """
    value = point["value"]
    if not math.isfinite(value):
        return f"{point['metric']} of {point['device']} is {value}, not a finite number"
    if abs(value) > max_magnitude:
        return f"{point['metric']} of {point['device']} is {value:g}, beyond the plausible magnitude {max_magnitude:g}"
    return None


@dataclass
class _Window:
    # (metric, device) → [sum, count]
    sums: dict[tuple[str, str], list] = field(default_factory=dict)
    devices: set = field(default_factory=set)
    lanes: set = field(default_factory=set)
    samples: int = 0
    # source partition → lowest offset folded into this window (for safe commits)
    first_offsets: dict[int, int] = field(default_factory=dict)


class SiteRollup:
    """Event-time tumbling windows per site, closed by caller-supplied watermarks (one, or one per lane)."""

    def __init__(self, window_s: int = 60, grace_s: int = 120, bounds: EventTimeBounds = EventTimeBounds()):
        if window_s <= 0 or grace_s < 0:
            raise ValueError("window_s must be > 0 and grace_s >= 0")
        self.window_s = window_s
        self.grace_s = grace_s
        self.bounds = bounds
        self._window_ms = window_s * 1000
        self._grace_ms = grace_s * 1000
        self._open: dict[tuple[str, int], _Window] = {}
        self.watermark_ms: int | None = None  # the points of no lane (and a floor for every lane)
        self.lanes: dict[Lane, int] = {}  # lane → its watermark (only forward)
        self._site_lanes: dict[str, set[Lane]] = {}
        self._emitted: dict[str, set[int]] = {}  # site → starts of windows closed recently
        self._prunes = 0

    def window_start(self, ts_ms: int) -> int:
        return ts_ms - ts_ms % self._window_ms

    def lane_watermark(self, lane: Lane | None) -> int | None:
        mark = self.lanes.get(lane) if lane is not None else None
        if mark is None:
            return self.watermark_ms
        return mark if self.watermark_ms is None else max(mark, self.watermark_ms)

    def is_closed(self, ts_ms: int, lane: Lane | None = None) -> bool:
        """Whether the window holding ``ts_ms`` has closed at the watermark (of ``lane``)."""
        end = self.window_start(ts_ms) + self._window_ms
        mark = self.lane_watermark(lane)
        return mark is not None and end + self._grace_ms <= mark

    def add(self, site: str, device: str, metric: str, value: float, ts_ms: int,
            partition: int = 0, offset: int | None = None, lane: Lane | None = None) -> Late | None:
        """Fold one point in; returns ``Late`` (and changes nothing) if its window has closed."""
        start = ts_ms - ts_ms % self._window_ms  # window_start and is_closed, inline: this runs for every point
        mark = self.lane_watermark(lane)
        if mark is not None and start + self._window_ms + self._grace_ms <= mark:
            closed_ms = start + self._window_ms + self._grace_ms
            return Late(f"window {iso_ms(start)} of site {site} closed at {iso_ms(closed_ms)} (window end + "
                        f"{self.grace_s} s grace); the watermark is already at {iso_ms(self.lane_watermark(lane))}")
        if start in self._emitted.get(site, ()):
            return Late(f"window {iso_ms(start)} of site {site} was already emitted (closed by the other sources "
                        f"of the site while {lane[1] if lane else 'this source'} was silent or on another clock)")
        window = self._open.get((site, start))
        if window is None:
            window = self._open[(site, start)] = _Window()
        window.samples += 1
        window.devices.add(device)
        if lane is not None and lane not in window.lanes:
            window.lanes.add(lane)
            self._site_lanes.setdefault(site, set()).add(lane)
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

    def move_watermark(self, watermark_ms: int | None, lane: Lane | None = None) -> None:
        """Move a watermark forward (never back) without emitting; later points are judged by it."""
        if watermark_ms is None:
            return
        if lane is None:
            if self.watermark_ms is None or watermark_ms > self.watermark_ms:
                self.watermark_ms = watermark_ms
            return
        self._site_lanes.setdefault(lane[0], set()).add(lane)
        if watermark_ms > self.lanes.get(lane, watermark_ms - 1):
            self.lanes[lane] = watermark_ms

    def advance(self, watermark_ms: int | None = None, lanes: "dict[Lane, LaneMark] | None" = None) -> list[dict]:
        """Move the watermarks forward (never back) and return the windows they close, oldest first.

        ``lanes`` (from ``LaneWatermarks.marks``) gives each lane's watermark, None while it is held
        back, and whether it is asleep; a sleeping lane is moved past its own windows. A lane known only
        from a restored watermark (silent since the restart) counts as asleep.
        """
        self.move_watermark(watermark_ms)
        given = lanes is not None  # then a lane without a mark has been silent since the marks began: asleep
        lanes = lanes or {}
        for lane, mark in lanes.items():
            self.move_watermark(mark.watermark_ms, lane)
        reach = self._grace_ms + self._window_ms
        due = []
        for key, window in self._open.items():
            site, start = key
            if self.watermark_ms is not None and start <= self.watermark_ms - reach:
                due.append(key)
                continue
            site_lanes = self._site_lanes.get(site, ())
            if not site_lanes:
                continue  # points of no lane: only the single watermark closes them
            for lane in site_lanes:
                mark = lanes.get(lane)
                if (mark is None and given) or (mark is not None and mark.asleep):
                    continue
                held = self.lane_watermark(lane) if mark is None else mark.watermark_ms
                if held is None:
                    break  # a lane held back: it may still deliver anything
                if start <= max(held, self.lane_watermark(lane)) - reach:
                    continue  # passed
                if lane not in window.lanes and held + self.bounds.max_future_ms < start:
                    continue  # another clock, far behind: its next point cannot land here
                break
            else:
                due.append(key)
        due.sort(key=lambda k: (k[1], k[0]))
        for key in due:  # a sleeping lane moves past its own windows closed now: later points for them are late
            for lane in self._open[key].lanes:
                mark = lanes.get(lane)
                if mark is not None and mark.asleep:
                    self.move_watermark(key[1] + reach, lane)
        closed = [self._close(key) for key in due]
        self._forget_emitted()
        return closed

    def flush(self) -> list[dict]:
        """Close every open window now and move the watermark of each lane (or the single one) past them."""
        if not self._open:
            return []
        reach = self._window_ms + self._grace_ms
        due = sorted(self._open, key=lambda k: (k[1], k[0]))
        for site, start in due:
            window = self._open[(site, start)]
            for lane in window.lanes:
                self.move_watermark(start + reach, lane)
            if not window.lanes:
                self.move_watermark(start + reach)
        closed = [self._close(key) for key in due]
        self._forget_emitted()
        return closed

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

    def _forget_emitted(self) -> None:
        """Keep the starts of closed windows only while a lane of their site could still reach them
        (pruned every 256 calls: a set of a week of minutes per site is small, scanning it per batch is not)."""
        self._prunes += 1
        if self._prunes % 256:
            return
        for site, starts in self._emitted.items():
            marks = [self.lane_watermark(lane) for lane in self._site_lanes.get(site, ())]
            newest = max((m for m in marks if m is not None), default=None)
            if newest is not None:
                floor = newest - self.bounds.max_past_ms - self._window_ms
                starts.difference_update([s for s in starts if s < floor])

    def _close(self, key: tuple[str, int]) -> dict:
        site, start = key
        window = self._open.pop(key)
        if window.lanes:
            self._emitted.setdefault(site, set()).add(start)
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
        pue = facility / it if it and facility is not None and it > 0 else None
        snapshot["pue"] = pue if pue is None or math.isfinite(pue) else None  # a tiny IT load: no PUE
        snapshot["samples"] = window.samples
        snapshot["devices"] = len(window.devices)
        return snapshot


@dataclass(frozen=True)
class LaneMark:
    watermark_ms: int | None  # None: held back (a partition may still deliver anything)
    asleep: bool = False  # every partition let go: the lane's windows may close


class _LaneState:
    __slots__ = ("latest", "active", "idle_since", "woke", "frontier", "asleep")

    def __init__(self, now_ms: int):
        self.latest: dict[int, int] = {}  # partition → latest time of this lane on it
        self.active: set[int] = set()  # partitions whose last record was this lane's, not read to their end
        self.idle_since: dict[int, int] = {}  # partition → processing time it stopped being active
        self.woke = now_ms  # processing time the lane started or woke from sleep
        self.frontier: int | None = None
        self.asleep = False


class LaneWatermarks:
    """Event-time watermarks per lane over input partitions, robust to partitions read unevenly.

    A lane's watermark is the minimum over partitions of its latest time on each. A partition
    stops holding a lane when it has been inactive for the lane (read to its end, or its last
    record belongs to another lane) for ``hold_ms`` of processing time, counted from when it
    went inactive or from when the lane started or woke, whichever is later. Until then a
    partition that has not delivered the lane's data holds the lane's watermark back entirely
    (None). With no partition holding it the lane is asleep.

    >>> w = LaneWatermarks(partitions=[0, 1], hold_ms=1_000)
    >>> lane = ("demo", "replay")
    >>> w.observe(lane, 0, 5_000, now_ms=0); w.marks(now_ms=0)[lane]  # partition 1 may still deliver
    LaneMark(watermark_ms=None, asleep=False)
    >>> w.observe(lane, 1, 2_000, now_ms=10); w.marks(now_ms=10)[lane]
    LaneMark(watermark_ms=2000, asleep=False)
    >>> w.caught_up(1, now_ms=20); w.marks(now_ms=500)[lane]  # read to its end, still held a while
    LaneMark(watermark_ms=2000, asleep=False)
    >>> w.marks(now_ms=1_020)[lane]  # let go: the other partition leads
    LaneMark(watermark_ms=5000, asleep=False)
    >>> w.caught_up(0, now_ms=1_100); w.marks(now_ms=2_100)[lane]
    LaneMark(watermark_ms=5000, asleep=True)

    With ``keyed`` the input is partitioned by site, so a lane lives on the partitions that delivered it
    (one, once every producer keys by site) and no other partition holds it back:

    >>> w = LaneWatermarks(partitions=[0, 1], hold_ms=1_000, keyed=True)
    >>> w.observe(lane, 0, 5_000, now_ms=0); w.marks(now_ms=0)[lane]
    LaneMark(watermark_ms=5000, asleep=False)
    >>> w.backlog([1]); w.marks(now_ms=0)[lane]  # another partition's backlog is another site's
    LaneMark(watermark_ms=5000, asleep=False)
    """

    def __init__(self, partitions=(), hold_ms: int = 10_000, keyed: bool = False):
        self.partitions = sorted(set(partitions))
        self.hold_ms = hold_ms
        self.keyed = keyed
        self._lanes: dict[Lane, _LaneState] = {}
        self._current: dict[int, Lane] = {}  # partition → lane of its last record
        self._backlog: set[int] = set()  # partitions with records still unread at the broker

    def latest(self, lane: Lane) -> int | None:
        """The lane's latest time while it is awake (None before its first point or while asleep)."""
        state = self._lanes.get(lane)
        return None if state is None or state.asleep else state.frontier

    def observe(self, lane: Lane, partition: int, ts_ms: int, now_ms: int) -> None:
        state = self._lanes.get(lane)
        if state is None:
            state = self._lanes[lane] = _LaneState(now_ms)
            if partition not in self.partitions:
                self.partitions = sorted({*self.partitions, partition})
        elif state.asleep:
            state.asleep, state.woke = False, now_ms
        previous = self._current.get(partition)
        if previous != lane:
            if previous is not None:
                self._inactive(previous, partition, now_ms)
            self._current[partition] = lane
        state.active.add(partition)
        state.idle_since.pop(partition, None)
        latest = state.latest.get(partition)
        if latest is None or ts_ms > latest:
            state.latest[partition] = ts_ms
        if state.frontier is None or ts_ms > state.frontier:
            state.frontier = ts_ms

    def partitions_of(self, lane: Lane) -> set[int]:
        """The partitions that have delivered the lane's data."""
        state = self._lanes.get(lane)
        return set(state.latest) if state is not None else set()

    def caught_up(self, partition: int, now_ms: int) -> None:
        """The partition was read to its end."""
        if partition not in self.partitions:
            self.partitions = sorted({*self.partitions, partition})
        lane = self._current.get(partition)
        if lane is not None:
            self._inactive(lane, partition, now_ms)

    def _inactive(self, lane: Lane, partition: int, now_ms: int) -> None:
        state = self._lanes[lane]
        if partition in state.active:
            state.active.discard(partition)
            state.idle_since[partition] = now_ms

    def stale(self, partition: int, now_ms: int) -> None:
        """The partition's end is no longer known (the broker was away, and data may have queued meanwhile):
        it holds its lane back again, at its latest time, until it delivers or is read to its end.

        >>> w = LaneWatermarks(partitions=[0, 1], hold_ms=0)
        >>> lane = ("demo", "replay")
        >>> w.observe(lane, 0, 5_000, now_ms=0); w.observe(lane, 1, 2_000, now_ms=0); w.caught_up(1, now_ms=0)
        >>> w.marks(now_ms=0)[lane].watermark_ms
        5000
        >>> w.stale(1, now_ms=0); w.marks(now_ms=0)[lane].watermark_ms
        2000
        """
        lane = self._current.get(partition)
        if lane is None:
            return
        state = self._lanes[lane]
        if state.asleep:
            state.asleep, state.woke = False, now_ms
        state.active.add(partition)
        state.idle_since.pop(partition, None)

    def marks(self, now_ms: int) -> dict[Lane, LaneMark]:
        return {lane: self._mark(state, now_ms) for lane, state in self._lanes.items()}

    def backlog(self, partitions: Iterable[int]) -> None:
        """The partitions that have records still unread at the broker (the reader knows; the records do not).

        Such a partition is never let go: it is behind, not done, and may still deliver any lane's data. A
        slow or uneven reader therefore costs latency, never late data.

        >>> w = LaneWatermarks(partitions=[0, 1], hold_ms=0)
        >>> lane = ("demo", "replay")
        >>> w.observe(lane, 0, 5_000, now_ms=0); w.backlog([1]); w.marks(now_ms=10)[lane]
        LaneMark(watermark_ms=None, asleep=False)
        >>> w.backlog([]); w.marks(now_ms=10)[lane]
        LaneMark(watermark_ms=5000, asleep=False)
        """
        self._backlog = set(partitions)

    def _mark(self, state: _LaneState, now_ms: int) -> LaneMark:
        if state.asleep:
            return LaneMark(state.frontier, True)
        low, held = None, False
        for p in sorted(state.latest) if self.keyed else self.partitions:
            latest = state.latest.get(p)
            if p not in state.active and p not in self._backlog:
                since = max(state.idle_since.get(p, state.woke), state.woke)
                if now_ms - since >= self.hold_ms:
                    continue  # let go
            if latest is None:
                return LaneMark(None)  # may still deliver anything
            held = True
            if low is None or latest < low:
                low = latest
        if not held:
            state.asleep = True
            return LaneMark(state.frontier, True)
        return LaneMark(low)
