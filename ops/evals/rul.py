"""`opsloop eval rul`: battery remaining-useful-life forecasts scored against ageing trajectories.

The trajectories come from a semi-empirical cycle-ageing model from the literature, not from a
physics (electrochemical) simulation: Wang et al., "Cycle-life model for graphite-LiFePO4 cells",
Journal of Power Sources 196 (2011) 3942-3948. Its capacity loss after ``Ah`` amp-hours of
throughput at C-rate ``c`` and absolute temperature ``T`` is

    Q_loss % = B(c) * exp((-31700 + 370.3 c) / (R T)) * Ah ** z,   z = 0.55,

with the paper's pre-factors B(C/2) = 31630, B(2C) = 21681, B(6C) = 12934, B(10C) = 15512, for its
2.2 Ah cell. State of health is ``100 - Q_loss``; end of life is the first day it is at or below the
policy's minimum (80 %). One full cycle (charge and discharge, 2 x 2.2 Ah) a day, as an ESS does.
Every condition (C-rate x temperature, 16 of them) has ``--cells`` cells that differ as real ones
do: B times a log-normal factor (sd 10 %) and z drawn around 0.55 (sd 0.02); the BMS reports
health once a day with Gaussian noise (sd ``--noise`` points) rounded to 0.1 %. Everything is
generated from ``--seed``, so a run is repeatable without a stored data set.

Scoring: each cell is fed to a fresh ``models.rul.DegradationTrend`` day by day; at 25 %, 50 % and
75 % of its true life the forecast of the date it falls below 80 % is compared with the truth: the
absolute error as a share of the true remaining life, and whether the 80 % band holds the truth
(a cell with no forecast counts as a miss). The configuration (exponent and half-life) is chosen by
leave-one-condition-out: each condition is scored with the configuration that did best on the 15
others (80 % coverage first, then the median error at 50 % of life), and the held-out scores are
pooled. The band's extra spread for the curve's form (``form_spread``) is chosen the same way: the
narrowest that covers 80 % on the training conditions. The all-in choice, which becomes the battery
default in ``streams/rul.py``, is printed too.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from dataclasses import dataclass
from itertools import product

from statistics import NormalDist

from opsloop.models.rul import DAY_MS, DegradationTrend, Forecast, widen

GAS_CONSTANT = 8.314  # J/(mol K)
PREFACTOR = {0.5: 31630.0, 2.0: 21681.0, 6.0: 12934.0, 10.0: 15512.0}  # B(c), Wang et al. 2011, table 2
TEMPERATURES_C = (15.0, 25.0, 45.0, 60.0)
CELL_AH = 2.2
MIN_SOH = 80.0
FRACTIONS = (0.25, 0.5, 0.75)
EXPONENTS = (0.5, 0.55, 0.6, 0.75, 1.0)
HALF_LIVES = (None, 90.0, 365.0)
FORM_SPREADS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2)
TARGET_ERROR, TARGET_COVERAGE = 0.10, 0.80
Z_BAND = NormalDist().inv_cdf(0.9)  # the 80 % band's edge


@dataclass(frozen=True)
class Trajectory:
    condition: str  # "2C 45°C"
    cell: int
    readings: list[float]  # reported state of health, one a day from day 0
    eol_day: int  # the first day the true health is at or below MIN_SOH


def _soh(prefactor: float, c_rate: float, temp_c: float, z: float, day: int) -> float:
    ah = day * 2 * CELL_AH
    loss = prefactor * math.exp((-31700 + 370.3 * c_rate) / (GAS_CONSTANT * (temp_c + 273.15))) * ah ** z
    return 100.0 - loss


def generate(cells: int = 5, noise: float = 0.3, seed: int = 19) -> list[Trajectory]:
    """Every condition's cells, each read daily until a little past its end of life."""
    rng = random.Random(seed)
    out = []
    for temp_c, (c_rate, prefactor) in product(TEMPERATURES_C, PREFACTOR.items()):
        for cell in range(cells):
            b = prefactor * math.exp(rng.gauss(0.0, 0.10))
            z = rng.gauss(0.55, 0.02)
            truth, day = [], 0
            while True:
                truth.append(_soh(b, c_rate, temp_c, z, day))
                if truth[-1] <= MIN_SOH:
                    break
                day += 1
            readings = [round(s + rng.gauss(0.0, noise), 1) for s in truth]
            out.append(Trajectory(f"{c_rate:g}C {temp_c:g}°C", cell, readings, day))
    return out


@dataclass(frozen=True)
class Score:
    error: float  # |predicted - true| / true remaining life (1.0 when there was no forecast)
    covered: bool  # the band held the true date


@dataclass(frozen=True)
class Made:
    """One forecast made at ``day`` (None: the model made none) and the true end of life."""

    forecast: Forecast | None
    day: int
    eol_day: int

    def score(self, form_spread: float) -> Score:
        fc = self.forecast
        if fc is None or fc.expected_ms is None:
            return Score(1.0, False)
        earliest, latest = fc.earliest_ms, fc.latest_ms
        if form_spread:
            earliest, latest = widen(fc.expected_ms, earliest, latest, fc.last_ms, form_spread, Z_BAND)
        eol_ms = self.eol_day * DAY_MS
        covered = earliest <= eol_ms and (latest is None or eol_ms <= latest)
        return Score(abs(fc.expected_ms - eol_ms) / DAY_MS / (self.eol_day - self.day), covered)


def forecasts(trajectory: Trajectory, exponent: float, half_life: float | None) -> dict[float, Made]:
    """The forecast at each fraction of life (the band without the form's spread, added when scored)."""
    model = DegradationTrend(exponent=exponent, half_life_days=half_life, horizon_days=40 * 365)
    due = {f: max(1, int(f * trajectory.eol_day)) for f in FRACTIONS}
    out = {}
    for day, value in enumerate(trajectory.readings):
        model.learn_one(day * DAY_MS, value)
        for f in [f for f, d in due.items() if d == day]:
            out[f] = Made(model.forecast(MIN_SOH, "below"), day, trajectory.eol_day)
        if len(out) == len(due):
            break
    return out


def summary(scores: list[dict[float, Score]], fraction: float) -> tuple[float, float]:
    """(median error, coverage) at one fraction of life."""
    at = [s[fraction] for s in scores]
    return statistics.median(s.error for s in at), sum(s.covered for s in at) / len(at)


def _rank(config, scores: list[dict[float, Score]]) -> tuple:
    """Coverage first, then the error, then the narrower band."""
    error, coverage = summary(scores, 0.5)
    return (coverage < TARGET_COVERAGE, error, config[2], -coverage)


def evaluate(trajectories: list[Trajectory]) -> dict:
    fits = list(product(EXPONENTS, HALF_LIVES))
    made = {(c, i): forecasts(t, *c) for c in fits for i, t in enumerate(trajectories)}
    configs = [(e, h, s) for (e, h), s in product(fits, FORM_SPREADS)]
    table = {(c, i): {f: m.score(c[2]) for f, m in made[c[:2], i].items()}
             for c in configs for i in range(len(trajectories))}
    conditions = sorted({t.condition for t in trajectories})
    held_out, chosen = [], {}
    for condition in conditions:
        train = [i for i, t in enumerate(trajectories) if t.condition != condition]
        best = min(configs, key=lambda c: _rank(c, [table[c, i] for i in train]))
        chosen[condition] = best
        held_out += [table[best, i] for i, t in enumerate(trajectories) if t.condition == condition]
    all_in = min(configs, key=lambda c: _rank(c, [table[c, i] for i in range(len(trajectories))]))
    return {"held_out": held_out, "chosen": chosen, "all_in": all_in,
            "all_in_scores": [table[all_in, i] for i in range(len(trajectories))],
            "per_config": {c: [table[c, i] for i in range(len(trajectories))] for c in configs}}


def _config(c) -> str:
    exponent, half_life, spread = c
    return (f"exponent {exponent:g}, half-life {'none' if half_life is None else f'{half_life:g} d'}, "
            f"form spread {spread:g}")


def report(result: dict, trajectories: list[Trajectory]) -> list[str]:
    lives = [t.eol_day for t in trajectories]
    lines = [f"battery RUL: {len(trajectories)} cells, {len(result['chosen'])} conditions (C-rate x temperature), "
             f"Wang et al. 2011 LFP cycle-ageing model, life {min(lives)}..{max(lives)} days to {MIN_SOH:g}% SoH",
             "leave-one-condition-out (each condition scored with the configuration chosen on the others):"]
    for f in FRACTIONS:
        error, coverage = summary(result["held_out"], f)
        lines.append(f"  at {f:.0%} of life: median |date error| {error:.1%} of remaining life, "
                     f"80% band coverage {coverage:.0%}")
    error, coverage = summary(result["held_out"], 0.5)
    ok = error <= TARGET_ERROR and coverage >= TARGET_COVERAGE
    lines.append(f"  targets at 50% (error <= {TARGET_ERROR:.0%}, coverage >= {TARGET_COVERAGE:.0%}): "
                 f"{'met' if ok else 'NOT met'}")
    picks = sorted(set(result["chosen"].values()))
    lines.append("  configurations chosen: " + "; ".join(
        f"{_config(c)} ({sum(v == c for v in result['chosen'].values())} folds)" for c in picks))
    error, coverage = summary(result["all_in_scores"], 0.5)
    lines.append(f"all-in choice (the battery default): {_config(result['all_in'])}: "
                 f"at 50% {error:.1%}, coverage {coverage:.0%}")
    lines.append("every fit at 50% of life (median error; coverage without and with the chosen form spread):")
    for c, scores in result["per_config"].items():
        if c[2] == 0.0:
            error, coverage = summary(scores, 0.5)
            widened = summary(result["per_config"][c[:2] + result["all_in"][2:]], 0.5)[1]
            lines.append(f"  {_config(c)[:-len(', form spread 0')]:34} {error:6.1%} {coverage:5.0%} {widened:5.0%}")
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cells", type=int, default=5, help="cells per condition (default 5)")
    p.add_argument("--noise", type=float, default=0.3, help="sd of the reported health, points of %% (default 0.3)")
    p.add_argument("--seed", type=int, default=19, help="random seed of the generated cells (default 19)")


def main(args) -> int:
    trajectories = generate(args.cells, args.noise, args.seed)
    result = evaluate(trajectories)
    print("\n".join(report(result, trajectories)))
    error, coverage = summary(result["held_out"], 0.5)
    return 0 if error <= TARGET_ERROR and coverage >= TARGET_COVERAGE else 1
