"""The Numenta Anomaly Benchmark (NAB) scoring method, from its published description.

Lavin & Ahmad, "Evaluating Real-time Anomaly Detection Algorithms -- the Numenta
Anomaly Benchmark" (2015), and the NAB documentation. Written here from that
description; no NAB code is used. Pure: no I/O.

The rules, per data file:

* Each labelled anomaly sits in a *window* (start, end) of timestamps. A detection
  is a point whose anomaly score is at or above the threshold.
* Only the first detection inside a window counts. It earns ``tp_weight`` times
  the scaled sigmoid of its relative position, divided by the sigmoid's value at
  the window's left edge, so the earliest possible detection earns exactly
  ``tp_weight`` and one on the right edge earns about 0.
* A window with no detection costs ``fn_weight``.
* Every detection outside a window is a false positive and costs ``fp_weight``
  times the scaled sigmoid of its distance past the end of the previous window
  (in window widths): a detection just after a window costs little, one three
  widths later (or before any window) costs the full ``fp_weight``.
* The first 15% of each file (at most 750 points) is a probationary period in
  which the detector learns: it is not scored, and a window lying wholly inside
  it is not counted.
* One threshold per detector and profile is chosen for the whole corpus: the
  one that maximises the total raw score (every distinct score is tried).
* ``normalised = 100 * (raw - null) / (perfect - null)``: the null detector (no
  detections) loses ``fn_weight`` per window, the perfect one earns ``tp_weight``
  per window.

>>> cost = CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
>>> series = label_series(list(range(100)), [(40, 49)], probation_percent=0.0)
>>> scores = [0.0] * 100
>>> scores[40] = 1.0  # a detection on the window's first point
>>> score_series(series, scores, 0.5, cost).raw
1.0
>>> scores[90] = 1.0  # plus a false positive four window-widths later
>>> round(score_series(series, scores, 0.5, cost).raw, 4)
0.89
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

PROBATION_PERCENT = 0.15
PROBATION_CAP_ROWS = 5000  # the probationary period is at most 15% of 5,000 rows


def scaled_sigmoid(position: float) -> float:
    """NAB's reward curve: 2·sigmoid(-5·position) - 1, and -1 from 3 window widths on.

    ``position`` is -1 at a window's left edge, 0 at its right edge, positive past it.

    >>> round(scaled_sigmoid(-1.0), 5), round(scaled_sigmoid(-0.5), 5), scaled_sigmoid(0.0), scaled_sigmoid(3.0)
    (0.98661, 0.84828, 0.0, -1.0)
    """
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


@dataclass(frozen=True)
class CostMatrix:
    """One NAB application profile's weights."""

    tp_weight: float
    fp_weight: float
    fn_weight: float

    @classmethod
    def from_profile(cls, profile: Mapping) -> "CostMatrix":
        """From one entry of NAB's profiles.json (``{"CostMatrix": {"tpWeight": ..., ...}}``)."""
        m = profile["CostMatrix"]
        return cls(float(m["tpWeight"]), float(m["fpWeight"]), float(m["fnWeight"]))


@dataclass(frozen=True)
class LabelledSeries:
    """Where each point of one file stands against its windows.

    ``window[i]`` is the index of the window holding point i, or -1; ``position[i]``
    is the scaled-sigmoid value of the point (inside a window: as a detection;
    outside: as a false positive); ``scorable[i]`` is False in the probationary period.
    """

    window: tuple[int, ...]
    position: tuple[float, ...]
    scorable: tuple[bool, ...]
    windows_counted: tuple[int, ...]  # windows with at least one scorable point


def probation_length(n: int, probation_percent: float = PROBATION_PERCENT) -> float:
    """Rows at the start of a file that are not scored."""
    return min(math.floor(probation_percent * n), probation_percent * PROBATION_CAP_ROWS)


def label_series(timestamps: Sequence, windows: Iterable[tuple], probation_percent: float = PROBATION_PERCENT
                 ) -> LabelledSeries:
    """Label each point of a file (timestamps ascending) against its anomaly windows.

    A window covers the points whose timestamps lie within [start, end]. Its width
    is its number of points; inside it the relative position of point i is
    ``-(right - i + 1) / width``; past it, ``(i - right) / (width - 1)``.

    >>> s = label_series(list(range(10)), [(3, 6)], probation_percent=0.0)
    >>> s.window
    (-1, -1, -1, 0, 0, 0, 0, -1, -1, -1)
    >>> [round(p, 3) for p in s.position[2:9]]
    [-1.0, 0.987, 0.954, 0.848, 0.555, -0.682, -0.931]
    """
    n = len(timestamps)
    window = [-1] * n
    position = [-1.0] * n  # before any window: a false positive at full cost
    spans = []
    for w, (start, end) in enumerate(sorted(windows)):
        idx = [i for i in range(n) if start <= timestamps[i] <= end]
        if idx:
            spans.append((w, idx[0], idx[-1]))
    for k, (w, left, right) in enumerate(spans):
        width = right - left + 1
        for i in range(left, right + 1):
            window[i] = w
            position[i] = scaled_sigmoid(-(right - i + 1) / width)
        following = spans[k + 1][1] if k + 1 < len(spans) else n
        for i in range(right + 1, following):
            past = (i - right) / (width - 1) if width > 1 else 3.0
            position[i] = scaled_sigmoid(past)
    probation = probation_length(n, probation_percent)
    scorable = tuple(i >= probation for i in range(n))
    counted = tuple(sorted({window[i] for i in range(n) if scorable[i] and window[i] >= 0}))
    return LabelledSeries(tuple(window), tuple(position), scorable, counted)


@dataclass(frozen=True)
class Score:
    """Raw NAB score and its parts for a file, a family or a corpus at one threshold."""

    raw: float
    tp: int  # windows detected
    fn: int  # windows missed
    fp: int  # detections outside windows
    windows: int

    def __add__(self, other: "Score") -> "Score":
        return Score(self.raw + other.raw, self.tp + other.tp, self.fn + other.fn, self.fp + other.fp,
                     self.windows + other.windows)

    def normalised(self, cost: CostMatrix) -> float | None:
        """100 for a perfect detector, 0 for the null one; None without windows (nothing to normalise)."""
        if self.windows == 0:
            return None
        null, perfect = -cost.fn_weight * self.windows, cost.tp_weight * self.windows
        return 100.0 * (self.raw - null) / (perfect - null)


EMPTY = Score(0.0, 0, 0, 0, 0)


def _weighted(series: LabelledSeries, i: int, cost: CostMatrix) -> float:
    if series.window[i] >= 0:
        return cost.tp_weight * series.position[i] / MAX_TP
    return cost.fp_weight * series.position[i]


def score_series(series: LabelledSeries, scores: Sequence[float], threshold: float, cost: CostMatrix) -> Score:
    """The raw score of one file's anomaly scores at ``threshold`` (detection: score >= threshold)."""
    best: dict[int, float] = {}
    fp_total, fp = 0.0, 0
    for i, s in enumerate(scores):
        if not series.scorable[i] or s < threshold:
            continue
        w = series.window[i]
        if w >= 0:
            best.setdefault(w, _weighted(series, i, cost))  # the first detection in a window counts
        else:
            fp_total += _weighted(series, i, cost)
            fp += 1
    counted = series.windows_counted
    tp = sum(1 for w in counted if w in best)
    raw = sum(best[w] for w in counted if w in best) - cost.fn_weight * (len(counted) - tp) + fp_total
    return Score(raw, tp, len(counted) - tp, fp, len(counted))


def best_threshold(corpus: Iterable[tuple[LabelledSeries, Sequence[float]]], cost: CostMatrix
                   ) -> tuple[float, float]:
    """(threshold, raw corpus score) maximising the corpus score; every distinct anomaly score is tried.

    Sweeps thresholds downwards: lowering the threshold to the next distinct score
    adds that score's points as detections. Within a window the earliest point has
    the highest weighted value, so "first detection" is the best one seen so far.

    >>> cost = CostMatrix(1.0, 0.11, 1.0)
    >>> s = label_series(list(range(100)), [(40, 49)], probation_percent=0.0)
    >>> scores = [0.1] * 100
    >>> scores[45], scores[90] = 0.6, 0.9
    >>> t, raw = best_threshold([(s, scores)], cost)
    >>> t, round(raw, 3)
    (0.6, 0.75)
    """
    points = []  # (anomaly score, window key or None, weighted value)
    window_keys: list[tuple[int, int]] = []
    for f, (series, scores) in enumerate(corpus):
        window_keys += [(f, w) for w in series.windows_counted]
        for i, s in enumerate(scores):
            if series.scorable[i]:
                w = series.window[i]
                points.append((s, (f, w) if w >= 0 else None, _weighted(series, i, cost)))
    points.sort(key=lambda p: p[0], reverse=True)
    window_part = {k: -cost.fn_weight for k in window_keys}
    total = sum(window_part.values())
    best = (math.inf, total)  # a threshold above every score: no detections
    i = 0
    while i < len(points):
        level = points[i][0]
        while i < len(points) and points[i][0] == level:
            _, key, value = points[i]
            if key is None:
                total += value
            elif value > window_part[key]:  # a miss (-fn_weight) or a later detection in this window
                total += value - window_part[key]
                window_part[key] = value
            i += 1
        if total > best[1]:
            best = (level, total)
    return best
