"""What a closed-loop run measured: billed peaks from the twin's meter and the loop's end-to-end latencies.

Pure: the caller reads the topics and the twin's samples and passes them in. Every latency is given in
twin time and in wall-clock time; wall times are the producers' Kafka timestamps (and the twin's own
publication time for its samples), twin times the records' event times on the run's one clock.

>>> billed_peaks([(0, 10.0), (450_000, 30.0), (900_000, 5.0)], "day")
{'1970-01-01': 20.0}
>>> percentile([3.0, 1.0, 2.0], 0.5), percentile([], 0.5)
(2.0, None)
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable, Iterable

from opsloop.models.peak_planner import billing_period

DEMAND_STEP_MS = 900_000  # demand is billed on the highest aligned 15-minute average import


def billed_peaks(samples: Iterable[tuple[int, float]], period: str, step_ms: int = DEMAND_STEP_MS) -> dict[str, float]:
    """Billing period key -> its highest aligned ``step_ms`` average of the (ts_ms, kW) samples."""
    steps: dict[int, list[float]] = {}
    for ts, kw in samples:
        steps.setdefault(ts // step_ms, []).append(kw)
    peaks: dict[str, float] = {}
    for index, values in sorted(steps.items()):
        key, _ = billing_period(index * step_ms, period)
        peaks[key] = max(peaks.get(key, -math.inf), sum(values) / len(values))
    return peaks


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Latency:
    """One hop's latencies, seconds: twin time and wall clock, one pair per action measured."""

    name: str
    twin_s: tuple[float, ...]
    wall_s: tuple[float, ...]
    unit: str = "actions"  # what each pair is measured on

    def line(self) -> str:
        if not self.twin_s:
            return f"{self.name}: not measured (no action got that far)"
        t50, t99 = percentile(list(self.twin_s), 0.5), percentile(list(self.twin_s), 0.99)
        w50, w99 = percentile(list(self.wall_s), 0.5), percentile(list(self.wall_s), 0.99)
        return (f"{self.name}: p50 {t50:,.0f} s / p99 {t99:,.0f} s twin time, "
                f"p50 {w50:.2f} s / p99 {w99:.2f} s wall ({len(self.twin_s)} {self.unit})")


@dataclass(frozen=True)
class Sample:
    """One twin sample: event time, what the meter and the PCS read, and when the twin published it (wall s)."""

    ts_ms: int
    grid_kw: float
    ess_kw: float
    wall_s: float


def loop_latencies(samples: list[Sample], proposed: list[dict], executed: list[dict],
                   twin_time: Callable[[float], float], ess_change_kw: float = 1.0) -> list[Latency]:
    """The three hops of the loop, per PCS action.

    ``proposed``: {action_id, created_ms, wall_s} (``created_ms`` is the end of the planning step it decides
    after); ``executed``: {action_id, ts_ms, wall_s, expires_ms}; ``twin_time``: wall s -> twin s (the clock).

    - telemetry point -> proposed: from the last sample of the planning step, when it was due on the run's
      clock, to the proposal's publication (the live sources stamp what they read with their poll's time, so
      a twin that falls behind its clock shows a sample after a reading stamped later was taken: counted from
      the twin's showing it, the hop could be negative; that lag is the fourth figure);
    - proposed -> executed: from that publication to the sink's ``executed`` result;
    - executed -> seen on the meter: to the first sample whose ESS power differs from the one before the
      write by more than ``ess_change_kw``, within the action's life (a write that changes nothing is not
      counted here);
    - the twin's own lag, per sample: from when it was due on the clock to when the twin showed it.
    """
    speed = twin_time(1.0) - twin_time(0.0)
    due_wall = lambda ts_ms: (ts_ms / 1000 - twin_time(0.0)) / speed  # noqa: E731 (the clock, inverted)
    times = [s.ts_ms for s in samples]
    by_id = {p["action_id"]: p for p in proposed}
    point, run, meter = ([], []), ([], []), ([], [])
    for p in proposed:
        i = bisect.bisect_left(times, p["created_ms"]) - 1
        if i >= 0:
            point[0].append(twin_time(p["wall_s"]) - times[i] / 1000)
            point[1].append(p["wall_s"] - due_wall(times[i]))
    for e in executed:
        p = by_id.get(e["action_id"])
        if p is not None:
            run[0].append(e["ts_ms"] / 1000 - twin_time(p["wall_s"]))
            run[1].append(e["wall_s"] - p["wall_s"])
        i = bisect.bisect_left(times, e["ts_ms"])
        if i == 0 or i >= len(samples):
            continue
        before = samples[i - 1].ess_kw
        for s in samples[i:]:
            if s.ts_ms > e["expires_ms"]:
                break
            if abs(s.ess_kw - before) > ess_change_kw:
                meter[0].append((s.ts_ms - e["ts_ms"]) / 1000)
                meter[1].append(s.wall_s - e["wall_s"])
                break
    lag = [s.wall_s - due_wall(s.ts_ms) for s in samples]
    twin = ([w * speed for w in lag], lag)
    names = ("telemetry point -> action proposed", "proposed -> executed", "executed -> seen on the meter",
             "the twin: sample due -> shown on its meters")
    return [Latency(n, tuple(t), tuple(w), u) for n, (t, w), u in zip(names, (point, run, meter, twin),
                                                                      ("actions",) * 3 + ("samples",))]
