"""Bounded event time (models/event_time.py) and where it guards state: the correlator and dedup."""

import pytest

from opsloop.models.correlate import SiteCorrelator
from opsloop.models.dedup import new_state, refuse
from opsloop.models.event_time import EventTimeBounds, iso_ms
from opsloop.models.topology import Topology

pytestmark = pytest.mark.unit
HOUR, DAY = 3_600_000, 86_400_000
NOW = 1_780_000_000_000  # the processing clock, in 2026
Y2100 = 4_102_444_800_000
BOUNDS = EventTimeBounds(max_future_ms=DAY, max_past_ms=7 * DAY)


def test_a_replay_of_the_past_passes_with_or_without_history():
    june_2000 = 960_163_200_000
    assert BOUNDS.check(june_2000, None, None, NOW) is None
    assert BOUNDS.check(june_2000 + HOUR, june_2000, june_2000, NOW) is None


@pytest.mark.parametrize("ts", [-2**62, -1, Y2100, NOW + DAY + 1, 2**62])
def test_before_the_epoch_or_ahead_of_the_clock_is_refused_even_without_history(ts):
    assert BOUNDS.check(ts, None, None, NOW) is not None


def test_a_jump_ahead_of_the_stream_is_refused_unless_it_lands_in_the_present():
    june_2000 = 960_163_200_000
    assert "ahead of its stream" in BOUNDS.check(june_2000 + 2 * DAY, june_2000, None, NOW)
    assert BOUNDS.check(NOW - HOUR, june_2000, None, NOW) is None  # a live source back after a silence
    assert "behind its stream" in BOUNDS.check(june_2000 - 8 * DAY, None, june_2000, NOW)


def test_time_formatting_never_raises():
    for ts in (-2**63, -2**62, -1, 0, 2**53, 2**62, 2**63 - 1):
        assert isinstance(iso_ms(ts), str)


def clean(ts, device, state="raise"):
    alarm = {"ts_ms": ts, "site": "s", "device": device, "device_type": "pdu", "source": "bms",
             "code": "PWR_INPUT_LOST", "severity": "major", "state": state, "text": "", "attributes": {}}
    return {"alarm": alarm, "fingerprint": f"{device}|PWR_INPUT_LOST", "duplicate_count": 1, "flapping": False}


def fold_bounded(corr, record):
    """What the correlate agent does: refuse out-of-bounds times, fold the rest, expire, flush."""
    reason = corr.refuse(record, BOUNDS, NOW)
    if reason is None:
        corr.on_alarm(record)
    corr.expire()
    return reason, corr.flush()


def test_an_alarm_dated_2100_does_not_resolve_a_real_open_incident():
    topo = Topology.from_dict("s", {"power": [{"id": "pdu-1", "type": "pdu"}, {"id": "pdu-2", "type": "pdu"}]})
    corr = SiteCorrelator("s", topo)
    _, [opened] = fold_bounded(corr, clean(NOW - HOUR, "pdu-1"))
    reason, changed = fold_bounded(corr, clean(Y2100, "pdu-2"))
    assert "ahead of the processing clock" in reason and changed == []
    assert corr.watermark == NOW - HOUR and list(corr.incidents) == [opened["incident_id"]]
    unbounded = SiteCorrelator("s", topo)  # what happened without the bound
    unbounded.on_alarm(clean(NOW - HOUR, "pdu-1"))
    unbounded.on_alarm(clean(Y2100, "pdu-2"))
    unbounded.expire()
    assert any(i["state"] == "resolved" and i["incident_id"] == opened["incident_id"] for i in unbounded.flush())


def test_before_any_alarm_the_correlator_trusts_the_clock_and_the_epoch_only():
    corr = SiteCorrelator("s", None)
    assert corr.refuse(clean(960_163_200_000, "pdu-1"), BOUNDS, NOW) is None  # a replayed storm of 2000
    assert corr.refuse(clean(-2**62, "pdu-1"), BOUNDS, NOW) is not None


def test_dedup_refuses_a_device_time_far_ahead_or_far_behind_its_latest():
    states = {"fp": {**new_state(NOW - HOUR), "last": NOW - HOUR}, "_offset": 7}
    assert refuse(states, {"ts_ms": NOW}, BOUNDS, NOW) is None
    assert refuse(states, {"ts_ms": Y2100}, BOUNDS, NOW) is not None
    assert refuse(states, {"ts_ms": NOW - 8 * DAY}, BOUNDS, NOW) is not None
    assert refuse({}, {"ts_ms": 960_163_200_000}, BOUNDS, NOW) is None
