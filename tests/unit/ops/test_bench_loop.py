"""The loop bench's clocking, without a broker: which send a step's action is timed from."""

import pytest

from opsloop.ops.bench.loop import first_sent_at

pytestmark = pytest.mark.unit

TICKS = [(1_000, 10.00), (1_600, 10.01), (2_200, 10.02), (2_200, 10.03), (2_800, 10.04)]


def test_an_action_is_timed_from_the_first_point_sent_at_or_past_its_window_close():
    assert first_sent_at(TICKS, 1_600) == 10.01  # a point at exactly the close
    assert first_sent_at(TICKS, 2_000) == 10.02  # the first past it, not a later one with the same event time
    assert first_sent_at(TICKS, 500) == 10.00
    assert first_sent_at(TICKS, 2_801) is None  # never sent: the action is not timed
