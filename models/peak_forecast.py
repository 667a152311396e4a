"""Online site-load forecaster: River regression on seasonal lag features, with an uncertainty band.

The forecast for ``h`` steps after the latest observation ``y_t`` is

    y_t + model(features)         (a correction of persistence)

where the features say how the load moved over the same span yesterday and a
week ago, and how far today's level is from those days'. A River
``BayesianLinearRegression`` (exact online least squares, ``smoothing`` < 1
forgets slowly, so there is no learning rate to tune) learns the mix from every
realised value, for a few horizons at a time. Chosen over River's HoltWinters
and SNARIMAX by measured accuracy (``opsloop eval peaks --compare-forecasters``:
1 h and 4 h MAPE on the Taylor curve and on a NAB series; see the closing note).

The regression is one of three candidates, beside the same step a day before and a
week before (seasonal naive): each is scored per learned horizon on the forecasts it
really made (no hindsight), and the forecast weights them by the inverse square of
their error (``skill_power``), over ``skill_halflife`` steps (default half a week).
Within ``long_share`` of a day a naive forecast joins only where it measures
``skill_margin`` times the regression's error or better (a plan sized on a naive
forecast's flattened peak runs the battery dry on curves the regression suits);
beyond, the best-measured mix speaks. So a curve whose shape the regression does not
catch (a weekly pattern, holidays that repeat the week before) falls back to seasonal
naive by measurement, not by a setting.

Two more options, off by default: ``mean_days`` adds a fourth candidate, the same step's mean over
the last ``mean_days`` days (a noisy periodic load is best forecast by averaging past days), and
``mix_guard`` scores the mix itself per horizon and lets the best single candidate allowed there speak
alone where it has measured better (a mix of a right and a wrong candidate right after a level shift is
worse than the right one). Both were scored against seasonal naive on the 25 peaks-suite curves, with a
one-day skill memory and ``skill_margin`` 0.8: with the mean, the faster memory and the smaller margin,
the forecaster beats seasonal naive at all three horizons on 17 curves instead of 16 (leave-one-curve-out
chose it for 24 of 25), but the plan sized on it loses 4.5 points of the oracle on Taylor and a week to the
reactive rule on two NAB series: the defaults stay as they were.

Covariates (``covariates``: names of keys of ``x``, e.g. the Slurm queue's pending GPU
demand by start time, or an outside temperature): each value given with a step is
remembered, and its change between a forecast's issue and its target, in its usual
size, joins the regression; ``forecast(horizon, xs)`` takes the known future values. The values a
forecast was given are remembered for the horizons it learns, and it learns from them, not from the
values the target step later came with: what is known ahead (a queue that does not yet hold
tomorrow's jobs, a weather forecast) differs from what comes, and the regression learns the former's
worth. That forecast, covariates included, is also what the regression's skill is scored on.

Public holidays (``holidays``: any container of dates, e.g. the site's country calendar; default
none): a holiday runs like a Sunday, so its seasonal references are the latest regular Sundays (the day
reference the latest, the week reference the one before), and a regular day whose day or week
reference falls on a holiday references the latest comparable day instead (the last regular workday
for a workday: the Tuesday after Easter Monday is forecast from the Thursday before Good Friday; the
same weekday a week earlier for the week reference). Every candidate and feature reads the same
references. Days are UTC days of the step times.

Robust by construction: a missing lag (a gap, the first day, the first week)
contributes 0, so with no history the forecast is persistence and it improves
as days accumulate; features and target are divided by the latest load's size,
so the model is the same for a 30 kW rack and a 30 MW site (a running mean over about a day instead: MASE
a little better on two NAB series, Taylor's monthly share of the oracle 93.2% -> 89.8%). The band is
``forecast ± z x 1.25 x`` the mean absolute error measured per horizon over the last ``error_halflife``
steps or so (1.25 x MAE ~ one standard deviation for normal errors; chosen by leave-one-curve-out over
1, 4, 16 and 200 steps and the band the planner had been tuned with, the latest error nearly alone). The
forecast and the band's upper edge stay within the loads remembered (the last week and a day), as a seasonal-naive
forecast always does: a day unlike both its references (the first workday after a holiday) cannot make
the regression extrapolate past any load seen.

A River forecaster: ``learn_one(y, x)`` returns nothing, where ``x`` may give the
step's time as ``{"ts_ms": ...}`` (without it, ``y`` is the step after the latest);
``forecast(horizon, xs)`` returns the values of the ``horizon`` steps after the
latest one, and ``forecast_points`` the same with their times and band.

>>> f = PeakForecaster(step_s=3600, season_steps=24)
>>> for hour in range(24 * 14):  # two weeks of a daily cycle
...     f.learn_one(1000.0 + (300.0 if 9 <= hour % 24 < 18 else 0.0), {"ts_ms": hour * 3_600_000})
>>> [round(kw) for kw in f.forecast(4)]  # at 23:00: midnight .. 03:00
[1000, 1000, 1000, 1000]
>>> [round(kw) for kw in f.forecast(11)][-2:]  # 09:00 and 10:00 tomorrow
[1300, 1300]
>>> p = f.forecast_points(1)[0]; p.lower_kw <= p.kw <= p.upper_kw
True
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Container
from dataclasses import dataclass

from river import linear_model, stats
from river.time_series.base import Forecaster

# the lag regression, the same step a day / a week before, the mean of that step over the last mean_days days
CANDIDATES = ("lags", "day_naive", "week_naive", "days_mean")
FEATURE_NAMES = ("day_shape", "week_shape", "day_level", "week_level", "day_level_h", "week_level_h",
                 "day_shape_h", "week_shape_h")


@dataclass(frozen=True)
class ForecastPoint:
    ts_ms: int
    kw: float
    lower_kw: float
    upper_kw: float


class PeakForecaster(Forecaster):
    """Forecasts a regular series (one value per ``step_s``) ``h`` steps ahead, learning one step at a time.

    Hyperparameters: ``step_s`` (series step), ``season_steps`` (steps per day; default 1 day of
    ``step_s``), ``weekly`` (use the same time last week), ``max_horizon`` (longest forecast;
    default one season), ``smoothing`` (River BayesianLinearRegression forgetting factor),
    ``error_halflife`` (steps over which band errors are averaged), ``band_z`` (band width in
    standard deviations), ``skill_power``, ``skill_halflife``, ``skill_margin``, ``long_share`` (how the
    candidates are mixed), ``mean_days`` (days averaged by the seasonal-mean candidate; 0: none), ``mix_guard``
    (the best single candidate instead of the mix where it measured better), ``covariates``, ``holidays`` (dates
    forecast like a Sunday; see the module note).
    """

    def __init__(self, step_s: int = 900, season_steps: int | None = None, weekly: bool = True,
                 max_horizon: int | None = None, smoothing: float = 0.999, noise_precision: float = 1e4,
                 error_halflife: int = 16, band_z: float = 1.64, skill_power: float = 2.0,
                 skill_halflife: int | None = None, skill_margin: float = 0.25,
                 long_share: float = 0.5, mean_days: int = 0, mix_guard: bool = False,
                 covariates: tuple[str, ...] | None = None, holidays: Container[dt.date] | None = None):
        self.step_s = step_s
        self.season_steps = season_steps
        self.weekly = weekly
        self.max_horizon = max_horizon
        self.smoothing = smoothing
        self.noise_precision = noise_precision
        self.error_halflife = error_halflife
        self.band_z = band_z
        self.skill_power = skill_power
        self.skill_halflife = skill_halflife
        self.skill_margin = skill_margin
        self.long_share = long_share
        self.mean_days = mean_days
        self.mix_guard = mix_guard
        self.covariates = covariates
        self.holidays = holidays
        self._holiday_days: dict[int, bool] = {}  # day index -> a holiday (the calendar asked once per day)
        self._ref_back: dict[tuple[int, int], int] = {}  # (day index, lag) -> steps back to its reference
        self._cov_names = tuple(covariates or ())  # River's params cannot hold an empty tuple
        self._cov: dict[int, dict[str, float]] = {}  # step index -> covariate values given with it
        self._cov_scale = {name: stats.EWMean(fading_factor=0.01) for name in self._cov_names}
        self._day = season_steps or max(1, 86_400 // step_s)
        self._week = 7 * self._day if weekly else None
        self._max_h = max(1, min(max_horizon or self._day, self._day))  # lags of a day back stay known
        self._learn_h = sorted({h for h in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 288)
                                if h <= self._max_h} | {self._max_h})
        self._model = linear_model.BayesianLinearRegression(beta=noise_precision, smoothing=smoothing)
        newest = min(1.0, 0.693 / error_halflife)  # River's fading_factor is the newest value's weight
        self._errors = {h: stats.EWMean(fading_factor=newest) for h in self._learn_h}
        fading = 0.693 / (skill_halflife or max(4, self._day * 7 // 2))  # River EWMean: the newest value weight
        # Each candidate's absolute error per horizon: the forecast mixes them by measured skill.
        self._skill = {h: {name: stats.EWMean(fading_factor=fading) for name in (*CANDIDATES, "mix")}
                       for h in self._learn_h}
        self._measured: set[tuple[int, str]] = set()
        self._issued: dict[tuple[int, int], float] = {}  # (step, h) -> the regression's forecast made at step
        self._ahead: dict[tuple[int, int], tuple[dict[str, float], float]] = {}  # (step, h) -> covariates a forecast
        # made at step was given for step + h, and what they added to it (kW)
        self._issued_mix: dict[tuple[int, int], float] = {}  # (step, h) -> the candidates' mix made at step
        self._scale = stats.EWMean(fading_factor=0.99)  # the newest value's weight: the latest load's size
        self._history: dict[int, float] = {}  # step index -> value
        self._last: int | None = None  # step index of the latest value

    def __setstate__(self, state: dict) -> None:
        """State pickled before a parameter or table was added (a worker's changelog) gets its defaults."""
        params = {k: v for k, v in state.items() if not k.startswith("_")}
        self.__dict__.update({**type(self)(**params).__dict__, **state})

    # -- River's forecaster interface ------------------------------------------------------
    def learn_one(self, y: float, x: dict | None = None) -> None:
        """Fold in ``y``, the value of the step starting at ``x["ts_ms"]`` (no time given: the step after the
        latest); a repeated or older step is ignored."""
        t = self._step_of(x)
        if self._last is not None and t <= self._last:
            return
        self._scale.update(abs(y))
        scale = self._scale.get() or 1.0
        self._remember_covariates(t, x)
        for h in self._learn_h:  # the forecast made h steps ago, had it been asked for
            issued = t - h
            base = self._history.get(issued)
            if base is None:
                continue
            made = self._issued.pop((issued, h), None)  # the regression's forecast then: no hindsight
            ahead, added = self._ahead.pop((issued, h), (None, 0.0))
            made = None if made is None else made + added
            guesses = {"lags": made, **self._naive_guesses(t), "mix": self._issued_mix.pop((issued, h), None)}
            x = self._features(issued, base, h, scale, ahead)
            target = (y - base) / scale
            # The band: the regression's error refit on what it knows now (as the planner was tuned with).
            self._errors[h].update(abs(target - self._model.predict_one(x)) * scale)
            for name, guess in guesses.items():
                if guess is not None:
                    self._skill[h][name].update(abs(y - guess))
                    self._measured.add((h, name))
            self._model.learn_one(x, target)
        self._history[t] = y
        self._last = t
        for h in self._learn_h:  # what is forecast now, to be scored when it comes due
            made = self._issued[t, h] = y + self._model.predict_one(self._features(t, y, h, scale)) * scale
            if self.mix_guard:
                self._issued_mix[t, h] = self._mix(h, {"lags": made, **self._naive_guesses(t + h)})
        keep = self._window_start(t)
        for old in [k for k in self._history if k < keep]:  # at most a few at a time after the first
            del self._history[old]
            self._cov.pop(old, None)
        if len(self._issued) > 2 * len(self._learn_h) * (self._max_h + 1):  # forecasts a gap left unscored
            self._issued = {k: v for k, v in self._issued.items() if k[0] >= t - self._max_h}
            self._ahead = {k: v for k, v in self._ahead.items() if k[0] >= t - self._max_h}
            self._issued_mix = {k: v for k, v in self._issued_mix.items() if k[0] >= t - self._max_h}

    def forecast(self, horizon: int, xs: list[dict] | None = None) -> list[float]:
        """Values of the ``horizon`` steps after the latest one (empty before the first value).

        ``xs[k]``, when given, holds the known future ``covariates`` of step k + 1 (e.g. the Slurm queue's
        pending GPU demand by start time, an outside-temperature forecast); a missing one counts as unchanged.
        """
        return [p.kw for p in self.forecast_points(horizon, xs)]

    def forecast_points(self, horizon: int, xs: list[dict] | None = None) -> list[ForecastPoint]:
        """``forecast`` with each step's time and uncertainty band."""
        if self._last is None:
            return []
        t, base = self._last, self._history[self._last]
        scale = self._scale.get() or 1.0
        step_ms = self.step_s * 1000
        # The model is linear: read its weights once (one unit vector each), then each horizon is a dot
        # product of the same features as _features, inlined: this runs for every step of every forecast.
        w = {name: self._model.predict_one({name: 1.0}) for name in FEATURE_NAMES}
        w_cov = {name: self._model.predict_one({f"cov_{name}": 1.0}) for name in self._cov_names}
        now_cov = self._cov.get(t, {})
        n = min(horizon, self._max_h)
        errors = self._errors_up_to(n)
        learned = set(self._learn_h)
        lags = [(lag, self._history.get(self._ref(t, lag)), w[f"{k}_shape"], w[f"{k}_level"], w[f"{k}_shape_h"],
                 w[f"{k}_level_h"]) for lag, k in ((self._day, "day"), (self._week, "week")) if lag]
        half_width = self.band_z * 1.25
        # The regression corrects persistence; on a day unlike its references (the first workday after a
        # holiday) it can extrapolate far past any load seen. Its forecast stays within the loads of the
        # history kept (the last week and a day), as the seasonal-naive candidates always do.
        recent = self._history.values() if self.holidays is None else [
            v for k, v in self._history.items() if k >= t - (self._week or self._day) - self._max_h - 1]
        low, high = min(recent), max(recent)
        out = []
        for h in range(1, n + 1):
            ramp = h / self._day
            correction = 0.0
            for lag, then, w_shape, w_level, w_shape_h, w_level_h in lags:
                ahead = self._history.get(self._ref(t + h, lag))
                if then is not None and ahead is not None:
                    shape, level = (ahead - then) / scale, (base - then) / scale
                    correction += (w_shape + w_shape_h * ramp) * shape + (w_level + w_level_h * ramp) * level
            if w_cov and xs and h <= len(xs) and xs[h - 1]:
                given = sum(w_cov[name] * self._cov_change(now_cov.get(name), xs[h - 1].get(name), name)
                            for name in self._cov_names)
                correction += given
                if h in learned:  # learnt from, and scored, as given
                    self._ahead[t, h] = ({n: float(v) for n, v in xs[h - 1].items() if n in w_cov and v is not None},
                                         given * scale)
            guesses = {"lags": min(max(base + correction * scale, low), high), **self._naive_guesses(t + h)}
            kw = self._combine(h, guesses)
            half = half_width * errors[h - 1]
            # the band too: right after a surprise its errors are large, and a plan sized on its edge would
            # hold import above any load remembered with a full battery
            out.append(ForecastPoint((t + h) * step_ms, kw, kw - half, min(kw + half, max(kw, high))))
        return out

    def add_covariate(self, name: str) -> None:
        """Take ``name`` as a covariate from now on (a trained forecaster keeps what it learned; the new one's
        weight starts at the prior and learns from the steps given with it)."""
        if name in self._cov_names:
            return
        self._cov_names += (name,)
        self.covariates = self._cov_names
        self._cov_scale[name] = stats.EWMean(fading_factor=0.01)

    @property
    def last_ts_ms(self) -> int | None:
        return None if self._last is None else self._last * self.step_s * 1000

    # -- internals -------------------------------------------------------------------------
    def _step_of(self, x: dict | None) -> int:
        ts_ms = None if x is None else x.get("ts_ms")
        if ts_ms is None:
            return 0 if self._last is None else self._last + 1
        return ts_ms // (self.step_s * 1000)

    def _features(self, t: int, base: float, h: int, scale: float,
                  known: dict[str, float] | None = None) -> dict[str, float]:
        """``known``: the covariates a forecast made at ``t`` was given for ``t + h`` (default: those ``t + h``
        came with)."""
        def shape_and_level(lag: int | None) -> tuple[float, float]:
            if lag is None:
                return 0.0, 0.0
            then, ahead = self._history.get(self._ref(t, lag)), self._history.get(self._ref(t + h, lag))
            if then is None or ahead is None:
                return 0.0, 0.0
            return (ahead - then) / scale, (base - then) / scale

        day_shape, day_level = shape_and_level(self._day)
        week_shape, week_level = shape_and_level(self._week)
        ramp = h / self._day  # lets the model decide how fast today's level offset fades with the horizon
        return {"day_shape": day_shape, "week_shape": week_shape, "day_level": day_level,
                "week_level": week_level, "day_level_h": day_level * ramp, "week_level_h": week_level * ramp,
                "day_shape_h": day_shape * ramp, "week_shape_h": week_shape * ramp,
                **{f"cov_{name}": self._cov_change(self._cov.get(t, {}).get(name),
                                                   (known if known is not None else self._cov.get(t + h, {})).get(name),
                                                   name) for name in self._cov_names}}

    def _window_start(self, t: int) -> int:
        """The oldest step kept: a week and a horizon back, three weeks with holidays (a reference that skips
        one reaches up to two weeks further)."""
        return t - (self._week or self._day) * (1 if self.holidays is None else 3) - self._max_h - 1

    def _ref(self, s: int, lag: int) -> int:
        """The step standing for ``s - lag`` in the seasonal references (see the module note on holidays)."""
        if self.holidays is None:
            return s - lag
        today = s * self.step_s // 86_400
        back = self._ref_back.get((today, lag))
        if back is None:  # the same for every step of a day: worked out once a day (this runs per forecast step)
            back = self._ref_back[today, lag] = self._steps_back(today, lag)
            if len(self._ref_back) > 256:
                self._ref_back = {k: v for k, v in self._ref_back.items() if k[0] >= today - 28}
        return s - back

    def _steps_back(self, today: int, lag: int) -> int:
        """How many steps back a step of day ``today`` finds its reference ``lag`` steps back stands for."""
        day = self._day  # steps per day: one season is a calendar day here
        if self._is_holiday(today):  # like a Sunday: the latest regular Sunday (day lag), the one before (week)
            wanted = 1 if lag == day else 2
            for back in range(1, 22):
                if _weekday(today - back) == 6 and not self._is_holiday(today - back):
                    wanted -= 1
                    if wanted == 0:
                        return back * day
            return lag
        if not self._is_holiday(today - lag // day):
            return lag
        if lag != day:  # the week reference: the same weekday a week earlier, twice at most
            for back in (lag + 7 * day, lag + 14 * day):
                if not self._is_holiday(today - back // day):
                    return back
            return lag
        kind = _day_kind(today - 1)  # the day reference: the latest regular day of the same kind
        for back in range(2, 15):
            if _day_kind(today - back) == kind and not self._is_holiday(today - back):
                return back * day
        return lag

    def _is_holiday(self, day: int) -> bool:
        known = self._holiday_days.get(day)
        if known is None:
            known = self._holiday_days[day] = (_EPOCH + dt.timedelta(days=day)) in self.holidays
            if len(self._holiday_days) > 64:  # days long past are never asked again
                self._holiday_days = {d: v for d, v in self._holiday_days.items() if d >= day - 28}
        return known

    def _remember_covariates(self, t: int, x: dict | None) -> None:
        given = {name: float(x[name]) for name in self._cov_names if x and x.get(name) is not None}
        if given:
            self._cov[t] = given
            for name, value in given.items():
                self._cov_scale[name].update(abs(value))

    def _cov_change(self, then: float | None, ahead: float | None, name: str) -> float:
        """How much a covariate moves between the forecast's issue and its target, in its usual size."""
        if then is None or ahead is None:
            return 0.0
        return (ahead - then) / (self._cov_scale[name].get() or 1.0)

    def _naive_guesses(self, s: int) -> dict[str, float | None]:
        """The seasonal candidates' forecasts of step ``s``: the same step a day and a week before, and its mean
        over the last ``mean_days`` days (each the day reference of the one after it, so holidays are skipped)."""
        out = {"day_naive": self._history.get(self._ref(s, self._day)),
               "week_naive": self._history.get(self._ref(s, self._week)) if self._week else None}
        if self.mean_days:
            seen, ref = [], s
            for _ in range(self.mean_days):
                ref = self._ref(ref, self._day)
                value = self._history.get(ref)
                if value is not None:
                    seen.append(value)
            # one day alone is the day naive: the mean speaks once it averages at least two
            out["days_mean"] = sum(seen) / len(seen) if len(seen) >= 2 else None
        return out

    def _combine(self, h: int, guesses: dict[str, float | None]) -> float:
        """The candidates' mix at ``h`` (see ``_mix``); with ``mix_guard``, the best single candidate allowed
        at ``h`` instead where it has measured better than the mix (a mix of a good and a bad candidate, e.g.
        right after a level shift, is worse than the good one alone)."""
        errors = self._allowed_errors(h, guesses)
        mixed = self._mix(h, guesses, errors)
        if not self.mix_guard or errors.get("lags") is None:
            return mixed
        learned = self._learned(h)
        if (learned, "mix") not in self._measured:
            return mixed
        best = min(errors, key=errors.get)
        return guesses[best] if errors[best] < self._skill[learned]["mix"].get() else mixed

    def _mix(self, h: int, guesses: dict[str, float | None], errors: dict[str, float | None] | None = None) -> float:
        """The candidates' forecasts weighted by the inverse square of their measured error at ``h`` (the
        learned horizon at or above it; ``errors``: ``_allowed_errors``, when already known): a candidate that a
        curve does not suit fades out of the mix."""
        errors = self._allowed_errors(h, guesses) if errors is None else errors
        if errors.get("lags") is None:
            return guesses["lags"]
        best = min(errors.values())
        if best <= 0:  # a perfect candidate: it alone
            weights = {n: 1.0 for n, e in errors.items() if e <= 0}
        else:  # relative weights, so the curve's units do not matter
            weights = {n: (best / e) ** self.skill_power for n, e in errors.items()}
        total = sum(weights.values())
        return sum(w * guesses[name] for name, w in weights.items()) / total

    def _learned(self, h: int) -> int:
        """The learned horizon at or above ``h`` (the longest beyond them)."""
        return self._learn_h[min(bisect.bisect_left(self._learn_h, h), len(self._learn_h) - 1)]

    def _allowed_errors(self, h: int, guesses: dict[str, float | None]) -> dict[str, float | None]:
        """The measured error at ``h`` of each candidate that may speak there (``lags``: None while unmeasured)."""
        learned = self._learned(h)
        skill = self._skill[learned]
        errors = {}
        for name in CANDIDATES:
            if guesses.get(name) is None:
                continue
            if (learned, name) in self._measured:
                errors[name] = skill[name].get()
            elif name == "lags":  # unmeasured yet: only the regression speaks (persistence at first)
                errors[name] = None
        if errors.get("lags") is None:
            return {"lags": None}
        # Within the day the plan acts on, the regression keeps its slight peak bias unless a naive forecast
        # is clearly better (a plan sized on a too-low peak runs the battery dry); beyond, the best mix speaks.
        margin = self.skill_margin if h < self._day * self.long_share else 1.0
        return {n: e for n, e in errors.items() if n == "lags" or e < margin * errors["lags"]}

    def _errors_up_to(self, n: int) -> list[float]:
        """Mean absolute error at horizons 1..n, interpolated between the learned horizons."""
        hs = self._learn_h
        known = [self._errors[h].get() for h in hs]
        out = []
        k = 0
        for h in range(1, n + 1):
            while k + 1 < len(hs) and hs[k + 1] < h:
                k += 1
            if h <= hs[0]:
                out.append(known[0])
            elif k + 1 >= len(hs):
                out.append(known[-1])
            else:
                lo, hi = hs[k], hs[k + 1]
                weight = (h - lo) / (hi - lo)
                out.append((1 - weight) * known[k] + weight * known[k + 1])
        return out


_EPOCH = dt.date(1970, 1, 1)


def _weekday(day: int) -> int:
    """Monday 0 .. Sunday 6 of a day index since 1970-01-01 (a Thursday)."""
    return (day + 3) % 7


def _day_kind(day: int) -> int:
    """Workdays are alike (0); a Saturday (5) and a Sunday (6) each their own."""
    weekday = _weekday(day)
    return 0 if weekday < 5 else weekday
