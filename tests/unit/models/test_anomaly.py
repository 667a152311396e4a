"""The series detector and the raise/clear decision: behaviour, River conventions, restart safety."""

from __future__ import annotations

import pickle
import random

import pytest

from opsloop.models.anomaly import DEFAULT_RAISE_AT, EarlyWarning, SeriesDetector

pytestmark = pytest.mark.unit


def feed(detector, values):
    out = []
    for v in values:
        out.append(detector.score_one({"value": v}))
        detector.learn_one({"value": v})
    return out


def noisy(n, seed=3, level=100.0, sd=5.0):
    rng = random.Random(seed)
    return [level + rng.gauss(0, sd) for _ in range(n)]


def test_level_shift_is_the_top_score():
    values = noisy(800) + noisy(200, seed=4, level=160.0)
    scores = feed(SeriesDetector(), values)
    top = max(range(len(scores)), key=scores.__getitem__)
    assert 800 <= top <= 802 and scores[top] > DEFAULT_RAISE_AT


def test_score_does_not_learn_and_learn_follows_score():
    det = SeriesDetector()
    feed(det, noisy(400))
    twin = pickle.loads(pickle.dumps(det))
    assert det.score_one({"value": 500.0}) == det.score_one({"value": 500.0})
    det.score_one({"value": 90.0})  # scoring other values in between learns nothing
    rest = noisy(100, seed=5)
    assert feed(det, rest) == feed(twin, rest)


def test_river_conventions_hyperparameters_and_clone():
    det = SeriesDetector(window=50, long=100, refractory=20)
    assert det._get_params()["window"] == 50 and det.long == 100
    fresh = det.clone()
    assert fresh.window == 50 and fresh is not det


def test_state_survives_a_pickle_round_trip_exactly():
    values = noisy(700)
    a = SeriesDetector()
    feed(a, values[:500])
    b = pickle.loads(pickle.dumps(a))
    assert feed(a, values[500:]) == feed(b, values[500:])


def test_raise_then_clear_once_per_episode():
    ew = EarlyWarning(clear_after=20)
    transitions = [ew.update(v, ts_ms=i * 1000) for i, v in enumerate(noisy(700) + [400.0] * 3 + noisy(300, seed=9))]
    states = [(i, t.state) for i, t in enumerate(transitions) if t]
    assert [s for _, s in states] == ["raise", "clear"]
    assert states[0][0] == 700 and transitions[700].ts_ms == 700_000
    assert "reached" in transitions[700].reason


def test_non_finite_values_score_0_and_are_not_learnt():
    a, b = SeriesDetector(), SeriesDetector()
    values = noisy(500)
    feed(a, values[:400])
    feed(b, values[:400])
    assert feed(a, [float("nan"), float("inf")]) == [0.0, 0.0]
    assert feed(a, values[400:]) == feed(b, values[400:])
