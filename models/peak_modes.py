"""Which mode decides a billing period: the forecast-driven plan, or the reactive one-line rule.

The reactive rule is what an operator sets without a forecast: hold grid import at
``T``, the ``percentile`` (95th) of the previous ``lookback_days`` (28) days' load,
re-set each day, discharging above it and recharging below it at full power
(``ops.evals.peak_baselines.ReactiveThreshold`` is the same rule, scored offline).

``ModeArbiter`` runs both modes in the shadow on the measured site load, each with
its own simulated battery and billed peak, and at the start of every billing
period hands the period to the mode that cut the billed peak more over the last
``skill_periods`` closed periods (the forecast-driven plan on a tie and before any
period closed). A forecaster that stops fitting a curve thus costs at most the
periods it takes to measure it, and the rule is never worse than the better of the
two by more than that: the site falls back to the reactive rule by measured skill,
not by a setting.

Before two periods have closed (a site's first weeks, a short record), ``skill_days`` > 0 lets the
days already seen speak: once that many days have closed, each day starts with the mode whose
shadow cut the day's peak more, summed over those days (the plan on a tie). Periods then
mix both modes; which decided how many steps is reported per period. Until anything is measured
the ``start_mode`` decides: the plan by default; ``reactive`` makes the plan show its skill first.

Skill is measured after the fact; the reactive floor (``LoopConfig.reactive_floor``, on by default)
guards within a period: the plan's target never stays above both the rule's ``T`` and
the period's billed peak (``models.peak_planner.plan``), so the plan never gives less than the
rule once the load passes the billed peak, as its energy allows.

The floor costs a plan whose forecast is right: one that keeps its energy for a later, larger peak
(a household's evening) spends it on the rule's ``T`` earlier in the day. With ``floor_skill_days``
> 0 the arbiter also shadows the plan with the floor (``FLOORED``) and without it (``UNFLOORED``)
and measures, at the end of each day, how far each has cut the billed peak so far this period;
``floor_lifted()`` lifts the floor while, over the last ``floor_skill_days`` closed days, the plan
without it cut more by over ``floor_margin_pct`` of the PCS's power a day. Until then (a site's
first days, a forecast that keeps missing) the floor stands: it protects where the forecast fails
and steps aside where the forecast has shown it does better alone.

Pure and deterministic: event time and measured loads only.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from opsloop.models.battery import Battery, Command

FORECAST, REACTIVE = "forecast", "reactive"
MODES = (FORECAST, REACTIVE)
# The plan with and without the reactive floor, shadowed to measure whether the floor helps (``floor_skill_days``).
FLOORED, UNFLOORED = "plan_floored", "plan_unfloored"


class ReactiveRule:
    """``threshold_kw(day)``: the rule's ``T`` for a day, from the loads learned on the days before it."""

    def __init__(self, step_s: int, percentile: float = 95.0, lookback_days: int = 28):
        self.step_s = step_s
        self.percentile = percentile
        self.lookback_days = lookback_days
        self._loads: deque[tuple[int, float]] = deque()  # (day, load)
        self._day: int | None = None
        self._threshold = math.inf
        self._peak_day: tuple[int, int] | None = None  # (day, look-back days) the cached peak is for
        self._peak = 0.0
        self._today: tuple[int | None, float] = (None, 0.0)  # (day, its highest load so far)
        self._last_ms: int | None = None  # the latest step learned

    def __setstate__(self, state: dict) -> None:  # pickled before repeated steps were ignored
        self.__dict__.update({"_last_ms": None, **state})

    def learn_one(self, start_ms: int, load_kw: float) -> None:
        """Learn the load of the step starting at ``start_ms``; a repeated or older step is ignored (as the
        forecaster ignores it: the warm-up's last step is learned again when the first step is planned)."""
        if self._last_ms is not None and start_ms <= self._last_ms:
            return
        self._last_ms = start_ms
        day = start_ms // 86_400_000
        self._loads.append((day, load_kw))
        self._today = (day, max(load_kw, self._today[1] if self._today[0] == day else 0.0))
        while self._loads and self._loads[0][0] < day - self.lookback_days:
            self._loads.popleft()

    def threshold_kw(self, start_ms: int) -> float:
        """``T`` for the day of ``start_ms`` (infinite before any history: the battery idles)."""
        day = start_ms // 86_400_000
        if day != self._day:
            self._day = day
            seen = sorted(kw for d, kw in self._loads if day - self.lookback_days <= d < day)
            self._threshold = _percentile(seen, self.percentile) if seen else math.inf
        return self._threshold

    def recent_peak_kw(self, start_ms: int, days: int = 7) -> float:
        """The highest load learned over the ``days`` days before the day of ``start_ms`` and that day so far
        (0 before any)."""
        day = start_ms // 86_400_000
        if (day, days) != self._peak_day:
            self._peak_day = (day, days)
            self._peak = max((kw for d, kw in self._loads if day - days <= d < day), default=0.0)
        return max(self._peak, self._today[1] if self._today[0] == day else 0.0)

    def daily_peaks_kw(self, start_ms: int) -> tuple[float, ...]:
        """The highest load of each whole day learned before the day of ``start_ms`` (up to ``lookback_days``)."""
        day = start_ms // 86_400_000
        peaks: dict[int, float] = {}
        for d, kw in self._loads:
            if day - self.lookback_days <= d < day:
                peaks[d] = max(kw, peaks.get(d, kw))
        return tuple(peaks.values())

    def command(self, battery: Battery, energy_kwh: float, start_ms: int) -> Command:
        limit = self.threshold_kw(start_ms)
        if math.isinf(limit):
            return Command(limit_kw=math.inf, charge_ceiling_kw=math.inf)
        step_h = self.step_s / 3600
        return Command(limit, battery.max_discharge_kw(energy_kwh, step_h), battery.max_charge_kw(energy_kwh, step_h),
                       charge_ceiling_kw=limit)


@dataclass
class _Shadow:
    energy_kwh: float
    billed_kw: float = 0.0
    pending: Command | None = None  # the command for the step being measured
    day_kw: float = 0.0  # the highest import of the day being measured

    def __setstate__(self, state: dict) -> None:  # pickled before days were measured
        self.__dict__.update({"day_kw": 0.0, **state})


@dataclass
class ModeArbiter:
    """Shadows both modes and picks the one that decides each billing period."""

    battery: Battery
    skill_periods: int = 4
    skill_days: int = 0  # before two periods close: decide each day on this many closed days or more (0: never)
    start_mode: str = FORECAST  # the mode until skill is measured (reactive: the plan must first show it cuts more)
    mode: str = FORECAST
    period: str | None = None
    shadows: dict = field(default_factory=dict)  # mode -> _Shadow
    load_peak_kw: float = 0.0  # this period's highest load: the billed peak without a battery
    history: deque = field(default_factory=deque)  # (period, {mode: reduction kW}) of closed periods
    day: int | None = None  # the day being measured
    day_load_kw: float = 0.0  # its highest load
    days: deque = field(default_factory=deque)  # (day, {mode: cut of the day's peak, kW}) of closed days
    decided_day: int | None = None  # the day the mode was last chosen by days
    # The floor's own evidence: closed days it is judged on (0: it is never lifted), and by how much the plan
    # without it must have cut more a day, in % of the PCS's power, before it is lifted.
    floor_skill_days: int = 0
    floor_margin_pct: float = 1.0
    floor_days: deque = field(default_factory=deque)  # (day, {FLOORED/UNFLOORED: billed-peak cut so far, kW})
    billed_cut_kw: dict = field(default_factory=dict)  # shadow -> its cut of this period's billed peak so far

    def __setstate__(self, state: dict) -> None:
        """An arbiter pickled before days were measured (a worker's changelog) gets their defaults."""
        self.__dict__.update({"skill_days": 0, "day": None, "day_load_kw": 0.0, "days": deque(), "decided_day": None,
                              "start_mode": FORECAST, "floor_skill_days": 0, "floor_margin_pct": 1.0,
                              "floor_days": deque(), "billed_cut_kw": {}, **state})

    def __post_init__(self) -> None:
        if self.start_mode not in MODES:
            raise ValueError(f"start_mode must be one of {', '.join(MODES)}, not {self.start_mode!r}")
        if self.period is None and not self.history:
            self.mode = self.start_mode

    def measure(self, load_kw: float, step_s: int, energy_kwh: float, start_ms: int | None = None) -> None:
        """Apply each shadow's pending command to the step just measured (``start_ms``: when it began)."""
        step_h = step_s / 3600
        day = None if start_ms is None else start_ms // 86_400_000
        if day is not None and day != self.day:
            if self.day is not None and self.shadows:
                self.days.append((self.day, {m: self.day_load_kw - s.day_kw for m, s in self.shadows.items()}))
                while len(self.days) > 28:
                    self.days.popleft()
                if self.floor_skill_days and self.billed_cut_kw:
                    self.floor_days.append((self.day, dict(self.billed_cut_kw)))
                    while len(self.floor_days) > self.floor_skill_days:
                        self.floor_days.popleft()
            self.day, self.day_load_kw = day, 0.0
            for shadow in self.shadows.values():
                shadow.day_kw = 0.0
        for mode in MODES + ((FLOORED, UNFLOORED) if self.floor_skill_days else ()):
            shadow = self.shadows.setdefault(mode, _Shadow(energy_kwh))
            if shadow.pending is None:
                continue
            result = self.battery.step(shadow.energy_kwh, shadow.pending, load_kw, step_h)
            shadow.energy_kwh = result.energy_kwh
            shadow.billed_kw = max(shadow.billed_kw, result.grid_kw)
            shadow.day_kw = max(shadow.day_kw, result.grid_kw)
        self.load_peak_kw = max(self.load_peak_kw, load_kw)
        self.day_load_kw = max(self.day_load_kw, load_kw)
        # Kept after every step, not read at the day's close: the day a period ends, its billed peaks are reset
        # before the next day's first step is measured.
        self.billed_cut_kw = {m: self.load_peak_kw - self.shadows[m].billed_kw for m in (FLOORED, UNFLOORED)
                              if m in self.shadows and self.shadows[m].pending is not None}

    def start_period(self, period: str, start_ms: int | None = None) -> str:
        """Close the period that ended (if any) and choose the mode of ``period`` (``start_ms``: of the step to
        decide; before two periods have closed, a new day may change the mode: ``skill_days``)."""
        if period == self.period:
            return self._by_days(start_ms)
        if self.period is not None and self.shadows:
            self.history.append((self.period, {m: self.load_peak_kw - s.billed_kw for m, s in self.shadows.items()}))
            while len(self.history) > self.skill_periods:
                self.history.popleft()
        self.period, self.load_peak_kw = period, 0.0
        for shadow in self.shadows.values():
            shadow.billed_kw = 0.0
        score = {m: sum(cut.get(m, 0.0) for _, cut in self.history) for m in MODES}
        measured = len(self.history) >= min(2, self.skill_periods)
        if measured:
            self.mode = REACTIVE if score[REACTIVE] > score[FORECAST] + 1e-6 else FORECAST
        else:
            self.mode = self.start_mode
        self.decided_day = None
        return self.mode if measured else self._by_days(start_ms)

    def _by_days(self, start_ms: int | None) -> str:
        """Before two periods have closed: at each new day, the mode whose shadow cut the closed days' peaks more."""
        if not self.skill_days or start_ms is None or len(self.history) >= min(2, self.skill_periods):
            return self.mode
        day = start_ms // 86_400_000
        if day == self.decided_day or len(self.days) < self.skill_days:
            return self.mode
        self.decided_day = day
        score = self.day_skill()
        self.mode = REACTIVE if score[REACTIVE] > score[FORECAST] + 1e-6 else FORECAST
        return self.mode

    def day_skill(self) -> dict[str, float]:
        """Each mode's cut of the daily peak (kW) summed over the closed days remembered."""
        return {m: round(sum(cut.get(m, 0.0) for _, cut in self.days), 1) for m in MODES}

    def starting(self) -> bool:
        """Whether the mode is still the start mode: no two periods closed, nor ``skill_days`` days (if any)."""
        measured = len(self.history) >= min(2, self.skill_periods)
        return not measured and (not self.skill_days or len(self.days) < self.skill_days)

    def by_days(self) -> bool:
        """Whether the mode is being chosen on days (no two periods closed yet)."""
        return bool(self.skill_days) and len(self.history) < min(2, self.skill_periods)

    def floor_skill(self) -> dict[str, float]:
        """The plan's cut of the billed peak so far (kW) with the floor and without it, summed over the closed days
        the floor is judged on."""
        return {m: round(sum(cut.get(m, 0.0) for _, cut in self.floor_days), 1) for m in (FLOORED, UNFLOORED)}

    def floor_lifted(self) -> bool:
        """Whether the plan runs without the reactive floor: over the last ``floor_skill_days`` closed days, the
        plan without it cut the billed peak so far by more than with it, beyond the margin."""
        if not self.floor_skill_days or len(self.floor_days) < self.floor_skill_days:
            return False
        skill = self.floor_skill()
        margin = self.floor_margin_pct / 100 * self.battery.pcs_discharge_kw * len(self.floor_days)
        return skill[UNFLOORED] > skill[FLOORED] + margin

    def skill(self) -> dict[str, float]:
        """Each mode's billed-peak cut (kW) summed over the periods the choice was measured on."""
        return {m: round(sum(cut.get(m, 0.0) for _, cut in self.history), 1) for m in MODES}


def _percentile(ranked: list[float], q: float) -> float:
    pos = (len(ranked) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ranked) - 1)
    return ranked[lo] + (ranked[hi] - ranked[lo]) * (pos - lo)
