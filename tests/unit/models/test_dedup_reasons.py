"""Dedup and noise decisions carry a reason code from their declared vocabulary, on every path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from opsloop.models import dedup, noise
from opsloop.models.dedup import DedupConfig, decide, fold, settle
from opsloop.models.noise import NoiseScorer

pytestmark = pytest.mark.unit
CFG = DedupConfig(window_ms=60_000, flap_window_ms=100_000, flap_threshold=4)


def alarm(ts: int, state: str = "raise") -> dict:
    return {"ts_ms": ts, "site": "s", "device": "pdu-1", "device_type": "pdu", "source": "bms",
            "code": "PWR_INPUT_LOSS", "severity": "major", "state": state, "text": "", "attributes": {}}


def codes(events: list[tuple[int, str]]) -> list[str]:
    state, out = None, []
    for ts, s in events:
        state, d = decide(state, alarm(ts, s), "fp", CFG)
        out.append(d.reason_code)
    return out


@pytest.mark.parametrize("events, last_code", [
    ([(0, "raise")], "first_raise"),
    ([(0, "raise"), (10_000, "raise")], "duplicate"),
    ([(0, "raise"), (70_000, "raise")], "still_raised"),
    ([(0, "raise"), (10_000, "clear")], "cleared"),
    ([(0, "raise"), (10_000, "clear"), (300_000, "raise")], "raised_again"),
    ([(0, "clear")], "clear_not_raised"),
    ([(0, "raise"), (5_000, "clear"), (10_000, "raise"), (15_000, "clear")], "flapping_started"),
    ([(0, "raise"), (5_000, "clear"), (10_000, "raise"), (15_000, "clear"), (20_000, "raise")], "flapping"),
    ([(0, "raise"), (5_000, "clear"), (10_000, "raise"), (15_000, "clear"), (200_000, "raise")], "flapping_stopped"),
])
def test_each_dedup_path_yields_its_code(events, last_code):
    assert codes(events)[-1] == last_code


@pytest.mark.parametrize("last_state, code", [("raise", "settled_raised"), ("clear", "settled_cleared")])
def test_a_settled_flap_yields_its_code(last_state, code):
    state = None
    for ts, s in [(0, "raise"), (5_000, "clear"), (10_000, "raise"), (15_000, "clear"), (20_000, last_state)]:
        state, _ = decide(state, alarm(ts, s), "fp", CFG)
    _, settled = settle(state, 200_000, CFG)
    assert settled.reason_code == code and settled.emit


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30_000), st.sampled_from(["raise", "clear"])), max_size=40))
def test_every_decision_code_is_declared_and_says_whether_it_was_announced(steps):
    state, t = None, 0
    for gap, s in steps:
        t += gap
        state, d = decide(state, alarm(t, s), "fp", CFG)
        assert d.reason_code in dedup.REASON_CODES
        assert (d.reason_code in dedup.ANNOUNCED_CODES) == d.emit
        state, settled = settle(state, t, CFG)
        assert settled is None or settled.reason_code in dedup.ANNOUNCED_CODES


def test_clean_alarms_carry_the_dedup_and_noise_codes():
    scorer = NoiseScorer()
    states: dict = {}
    [first] = fold(states, alarm(0), 1, CFG, scorer)
    assert (first["reason_code"], first["noise_reason_code"]) == ("first_raise", "no_labels")
    for _ in range(20):
        scorer.learn_one(alarm(0), True)
        scorer.learn_one({**alarm(0), "device": "ups-1", "device_type": "ups"}, False)
    [cleared] = fold(states, alarm(1_000, "clear"), 2, CFG, scorer)
    assert (cleared["reason_code"], cleared["noise_reason_code"], cleared["noise"]) == ("cleared", "noise", True)


def test_the_noise_codes_follow_the_score():
    scorer = NoiseScorer(threshold=0.5)
    assert scorer.reason_code(0.9) == "no_labels"  # no labels yet: the score is the prior, whatever it is
    scorer.learn_one(alarm(0), True)
    scorer.learn_one(alarm(0), False)
    assert (scorer.reason_code(0.5), scorer.reason_code(0.49)) == ("noise", "actionable")
    assert {scorer.reason_code(s) for s in (0.0, 0.5, 1.0)} <= noise.REASON_CODES


def test_learning_returns_nothing_as_in_river():
    assert NoiseScorer().learn_one(alarm(0), True) is None
