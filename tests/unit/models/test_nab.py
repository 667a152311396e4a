"""The NAB scorer against cases worked by hand from the published rules."""

from __future__ import annotations

import math

import pytest

from opsloop.ops.evals.nab import CostMatrix, EMPTY, best_threshold, label_series, probation_length, scaled_sigmoid, score_series

pytestmark = pytest.mark.unit

STANDARD = CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
LOW_FN = CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=2.0)
SIG = lambda y: 2 / (1 + math.exp(5 * y)) - 1  # noqa: E731  the published curve, written out again


def one_window(n=100, window=(40, 49)):
    return label_series(list(range(n)), [window], probation_percent=0.0)


def scores_with(n, hits, level=1.0):
    s = [0.0] * n
    for i in hits:
        s[i] = level
    return s


def test_sigmoid_values_at_the_window_edges_and_beyond():
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(2.99) > -1.0 and scaled_sigmoid(3.0) == -1.0


def test_earliest_detection_earns_the_full_tp_weight_and_scores_100():
    s = score_series(one_window(), scores_with(100, [40]), 0.5, STANDARD)
    assert (s.raw, s.tp, s.fn, s.fp) == (pytest.approx(1.0), 1, 0, 0)
    assert s.normalised(STANDARD) == pytest.approx(100.0)


def test_null_detector_scores_0_in_every_profile():
    for cost in (STANDARD, LOW_FN):
        s = score_series(one_window(), [0.0] * 100, 0.5, cost)
        assert s.raw == -cost.fn_weight and s.normalised(cost) == pytest.approx(0.0)


def test_detection_halfway_through_the_window():
    # width 10, point 45: position -(49 - 45 + 1) / 10 = -0.5
    s = score_series(one_window(), scores_with(100, [45]), 0.5, STANDARD)
    assert s.raw == pytest.approx(SIG(-0.5) / SIG(-1.0))
    assert s.normalised(STANDARD) == pytest.approx(100 * (s.raw + 1) / 2)


def test_only_the_first_detection_in_a_window_counts():
    first = score_series(one_window(), scores_with(100, [44]), 0.5, STANDARD)
    more = score_series(one_window(), scores_with(100, [44, 45, 48]), 0.5, STANDARD)
    assert more.raw == first.raw and more.tp == 1 and more.fp == 0


def test_false_positives_cost_by_distance_after_the_window():
    # before any window: the full fp weight
    assert score_series(one_window(), scores_with(100, [10]), 0.5, STANDARD).raw == pytest.approx(-1.0 - 0.11)
    # one point after the window: position (50 - 49) / (10 - 1)
    near = score_series(one_window(), scores_with(100, [50]), 0.5, STANDARD)
    assert near.raw == pytest.approx(-1.0 + 0.11 * SIG(1 / 9)) and near.fp == 1
    # 3 or more window widths after: the full fp weight again
    assert score_series(one_window(), scores_with(100, [80]), 0.5, STANDARD).raw == pytest.approx(-1.11)


def test_probationary_points_and_windows_inside_it_are_not_scored():
    assert probation_length(1000) == 150 and probation_length(10_000) == 750
    series = label_series(list(range(1000)), [(100, 120), (500, 520)])
    assert series.windows_counted == (1,)  # the first window lies wholly in the probation
    s = score_series(series, scores_with(1000, [5, 100, 500]), 0.5, STANDARD)
    assert (s.tp, s.fn, s.fp, s.windows) == (1, 0, 0, 1) and s.raw == pytest.approx(1.0)


def test_threshold_sweep_matches_scoring_at_each_candidate():
    series = [one_window(), label_series(list(range(60)), [(20, 29)], probation_percent=0.0)]
    scores = [[0.1 * (i % 7) for i in range(100)], [0.05 * (i % 11) for i in range(60)]]
    threshold, raw = best_threshold(list(zip(series, scores)), STANDARD)
    by_hand = {t: sum((score_series(s, sc, t, STANDARD) for s, sc in zip(series, scores)), EMPTY).raw
               for t in {x for sc in scores for x in sc} | {math.inf}}
    assert raw == pytest.approx(max(by_hand.values()))
    assert by_hand[threshold] == pytest.approx(raw)


def test_cost_matrix_from_a_profiles_json_entry():
    profile = {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 2.0, "fpWeight": 0.11, "tnWeight": 1.0}}
    assert CostMatrix.from_profile(profile) == LOW_FN


def test_reward_low_fn_profile_normalisation():
    # a miss and a hit: raw = 1 - 2 = -1; null = -4, perfect = 2 -> 100 * 3 / 6
    series = label_series(list(range(100)), [(10, 19), (60, 69)], probation_percent=0.0)
    s = score_series(series, scores_with(100, [60]), 0.5, LOW_FN)
    assert s.raw == pytest.approx(-1.0) and s.normalised(LOW_FN) == pytest.approx(50.0)
    assert EMPTY.normalised(LOW_FN) is None  # no windows: nothing to normalise
