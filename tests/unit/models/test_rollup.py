"""The rollup's windowing and late-data policy (models/rollup.py), without a broker."""

import pytest

from opsloop.models.event_time import EventTimeBounds, iso_ms
from opsloop.models.rollup import Invalid, Late, LaneMark, LaneWatermarks, SiteRollup, fold

pytestmark = pytest.mark.unit
MIN = 60_000


def test_device_means_then_site_sums_and_means():
    r = SiteRollup(window_s=60, grace_s=0)
    for ts, dev, metric, value in [
        (0, "pdu-1", "it_kw", 100.0), (20_000, "pdu-1", "it_kw", 120.0),  # one PDU: mean 110
        (5_000, "pdu-2", "it_kw", 40.0),
        (1_000, "fm", "facility_kw", 180.0),
        (2_000, "ess-1", "ess_soc_pct", 80.0), (3_000, "ess-2", "ess_soc_pct", 60.0),  # mean over units: 70
        (4_000, "ess-1", "ess_kw", -50.0),
        (6_000, "pdu-1", "inlet_temp_c", 24.0),  # not a site field: counted, not aggregated
    ]:
        assert r.add("s", dev, metric, value, ts) is None
    (snap,) = r.advance(MIN)
    assert snap["it_kw"] == 150.0 and snap["facility_kw"] == 180.0
    assert snap["pue"] == pytest.approx(1.2)
    assert snap["ess_soc_pct"] == 70.0 and snap["ess_kw"] == -50.0
    assert snap["grid_kw"] is None and snap["gpu_kw"] is None
    assert (snap["samples"], snap["devices"]) == (8, 5)
    assert (snap["window_start_ms"], snap["window_end_ms"]) == (0, MIN)


@pytest.mark.parametrize("it, facility", [(None, 100.0), (0.0, 100.0), (50.0, None)])
def test_pue_only_when_both_powers_known_and_it_positive(it, facility):
    r = SiteRollup(60, 0)
    if it is not None:
        r.add("s", "pdu", "it_kw", it, 0)
    if facility is not None:
        r.add("s", "fm", "facility_kw", facility, 0)
    r.add("s", "gm", "grid_kw", 1.0, 0)
    (snap,) = r.flush()
    assert snap["pue"] is None


def test_out_of_order_within_grace_counts_and_windows_close_in_order():
    r = SiteRollup(window_s=60, grace_s=120)
    r.add("s", "gm", "grid_kw", 10.0, 2 * MIN + 1)
    r.add("s", "gm", "grid_kw", 20.0, 1)  # two windows behind, still within grace
    assert r.advance(2 * MIN + 1) == []  # window 0 closes at 1 min + 2 min grace
    r.add("s", "gm", "grid_kw", 30.0, 59_999)  # still open
    closed = r.advance(3 * MIN)
    assert [(s["window_start_ms"], s["grid_kw"]) for s in closed] == [(0, 25.0)]
    assert [s["window_start_ms"] for s in r.flush()] == [2 * MIN]


def test_late_point_is_reported_and_changes_nothing():
    r = SiteRollup(window_s=60, grace_s=0)
    r.add("s", "gm", "grid_kw", 10.0, 0)
    (snap,) = r.advance(MIN)
    late = r.add("s", "gm", "grid_kw", 99.0, 30_000)
    assert late is not None and "closed" in late.reason and "site s" in late.reason
    assert r.open_windows == 0 and r.flush() == []


def test_flush_moves_the_watermark_so_later_points_for_flushed_windows_are_late():
    r = SiteRollup(window_s=60, grace_s=30)
    r.add("a", "gm", "grid_kw", 1.0, 10_000)
    r.add("b", "gm", "grid_kw", 2.0, MIN + 10_000)
    assert [(s["site"], s["window_start_ms"]) for s in r.flush()] == [("a", 0), ("b", MIN)]
    assert r.add("b", "gm", "grid_kw", 3.0, MIN + 20_000) is not None


def test_watermark_never_moves_back():
    r = SiteRollup(60, 0)
    r.advance(10 * MIN)
    r.advance(MIN)
    r.move_watermark(2 * MIN)
    assert r.watermark_ms == 10 * MIN


def test_pending_offsets_hold_back_commits_for_open_windows_only():
    r = SiteRollup(window_s=60, grace_s=0)
    r.add("s", "a", "grid_kw", 1.0, 0, partition=0, offset=7)
    r.add("s", "b", "grid_kw", 1.0, MIN, partition=0, offset=9)
    r.add("s", "c", "grid_kw", 1.0, MIN + 1, partition=1, offset=3)
    assert r.pending_offsets() == {0: 7, 1: 3}
    r.advance(MIN)  # closes window 0 only
    assert r.pending_offsets() == {0: 9, 1: 3}
    r.flush()
    assert r.pending_offsets() == {}


def test_windows_are_per_site():
    r = SiteRollup(60, 0)
    r.add("a", "gm", "grid_kw", 1.0, 0)
    r.add("b", "gm", "grid_kw", 2.0, 0)
    assert {s["site"]: s["grid_kw"] for s in r.advance(MIN)} == {"a": 1.0, "b": 2.0}


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        SiteRollup(window_s=0)
    with pytest.raises(ValueError):
        SiteRollup(window_s=60, grace_s=-1)


LANE = ("s", "replay")
WALL = 1_780_000_000_000  # the processing clock, in 2026


def test_lane_watermark_is_the_slowest_partition_and_read_ends_hold_it_for_a_while():
    w = LaneWatermarks(partitions=[0, 1, 2], hold_ms=1_000)
    for p, ts in [(0, 100), (1, 50), (2, 70)]:
        w.observe(LANE, p, ts, now_ms=0)
    assert w.marks(0)[LANE] == LaneMark(50)
    w.observe(LANE, 1, 400, now_ms=0)
    assert w.marks(0)[LANE] == LaneMark(70)
    w.caught_up(2, now_ms=10)  # read to its end: still holds for the hold time
    assert w.marks(500)[LANE] == LaneMark(70)
    assert w.marks(1_010)[LANE] == LaneMark(100)  # let go
    w.caught_up(0, now_ms=1_010)
    w.caught_up(1, now_ms=1_010)
    assert w.marks(2_010)[LANE] == LaneMark(400, asleep=True)  # all let go: asleep at its latest time
    w.observe(LANE, 2, 450, now_ms=3_000)  # wakes: the others hold it again for the hold time
    assert w.marks(3_000)[LANE] == LaneMark(100)
    assert w.marks(4_000)[LANE] == LaneMark(450)


def test_a_partition_that_has_not_delivered_the_lane_holds_it_back_after_the_lane_starts():
    w = LaneWatermarks(partitions=[0, 1, 2], hold_ms=2_000)
    for p in (0, 1, 2):
        w.caught_up(p, now_ms=0)  # the worker started long before its sources
    w.observe(LANE, 0, 10_000, now_ms=8_000)  # partition 0 raced ahead; 1 and 2 may hold older data
    assert w.marks(8_000)[LANE] == LaneMark(None)
    w.observe(LANE, 2, 3_000, now_ms=8_001)
    assert w.marks(8_001)[LANE] == LaneMark(None)
    assert w.marks(10_000)[LANE] == LaneMark(3_000)  # partition 1 had nothing for it: let go


def test_a_record_of_another_lane_ends_a_partition_for_this_lane():
    w = LaneWatermarks(partitions=[0], hold_ms=0)
    live = ("s", "pcs-sim")
    w.observe(LANE, 0, 1_000, now_ms=0)
    w.observe(live, 0, 1_780_000_000_000, now_ms=0)
    marks = w.marks(0)
    assert marks[LANE] == LaneMark(1_000, asleep=True) and marks[live] == LaneMark(1_780_000_000_000)


def replay_day(rollup, marks, partitions, day_ms, lane=LANE, now=0, step=1_800_000):
    """Every half-hour of one day: one device per partition, all of partition p before p + 1 (read unevenly)."""
    out = []
    for p in partitions:
        for ts in range(day_ms, day_ms + 86_400_000, step):
            point = {"site": lane[0], "source": lane[1], "device": f"d{p}", "metric": "grid_kw", "value": 1.0,
                     "ts_ms": ts}
            out.append(fold(rollup, marks, point, p, None, now))
            now += 1
    return out, now


def test_the_first_partition_read_does_not_close_the_windows_of_the_others():
    r, w = SiteRollup(60, 120), LaneWatermarks(range(4), hold_ms=1_500)
    for p in range(4):
        w.caught_up(p, now_ms=WALL)
    june_2000 = 960_163_200_000
    results, now = replay_day(r, w, range(4), june_2000, now=WALL + 8_000)
    assert results == [None] * len(results)
    closed = r.advance(lanes=w.marks(now))
    for p in range(4):
        w.caught_up(p, now_ms=now)
    closed += r.advance(lanes=w.marks(now + 1_500))  # every partition let go: asleep, all windows close
    assert len(closed) == 48 and all(s["samples"] == 4 for s in closed)


def test_a_live_source_on_the_wall_clock_does_not_make_a_replay_late_nor_the_reverse():
    r, w = SiteRollup(60, 120), LaneWatermarks(range(4), hold_ms=1_000)
    live = ("s", "pcs-sim")
    wall = 1_780_000_000_000
    for i in range(300):  # five minutes of live telemetry on partition 3 first
        assert fold(r, w, {"site": "s", "source": "pcs-sim", "device": "ess", "metric": "ess_kw", "value": 1.0,
                           "ts_ms": wall + i * 1_000}, 3, None, wall + i * 1_000) is None
        w.caught_up(3, wall + i * 1_000)
    live_closed = r.advance(lanes=w.marks(wall + 300_000))
    assert sum(s["samples"] for s in live_closed) == 300  # quiet for the hold time: the live lane closes its windows
    results, now = replay_day(r, w, range(4), 960_163_200_000, now=wall + 300_000)
    assert results == [None] * len(results)  # the replay is not late against the live clock
    for p in range(4):
        w.caught_up(p, now)
    closed = r.advance(lanes=w.marks(now + 1_000))
    replayed = [s for s in closed if s["window_start_ms"] < wall]
    assert len(replayed) == 48 and all(s["samples"] == 4 for s in replayed)


def test_event_times_outside_the_bounds_are_invalid_and_move_nothing():
    bounds = EventTimeBounds(max_future_ms=86_400_000, max_past_ms=7 * 86_400_000)
    r, w = SiteRollup(60, 120, bounds), LaneWatermarks([0], hold_ms=0)
    wall = 1_780_000_000_000
    day = 86_400_000

    def point(ts):
        return {"site": "s", "source": "meter", "device": "gm", "metric": "grid_kw", "value": 1.0, "ts_ms": ts}

    for ts in (-2**62, 4_102_444_800_000, 2**62):  # before the epoch, 2100, far beyond
        result = fold(r, w, point(ts), 0, None, wall)
        assert isinstance(result, Invalid), ts
    start = 960_163_200_000  # a replay of June 2000
    assert fold(r, w, point(start), 0, None, wall) is None
    bad = fold(r, w, point(start + 2 * day), 0, None, wall)  # behind the clock, two days ahead of its stream
    assert isinstance(bad, Invalid) and "ahead of its stream" in bad.reason
    for minute in range(1, 60 * 24):  # the next real day: nothing late, nothing invalid
        assert fold(r, w, point(start + minute * 60_000), 0, None, wall) is None
    assert all(mark < start + day for mark in r.lanes.values())  # nothing moved a watermark ahead
    closed = r.advance(lanes=w.marks(wall))
    assert len(closed) == 60 * 24 - 3  # all but the last window and its grace
    old = fold(r, w, point(start - 8 * day), 0, None, wall)
    assert isinstance(old, Invalid) and "behind its stream" in old.reason


def test_late_reasons_and_every_time_format_without_raising():
    r = SiteRollup(60, 0)
    r.advance(2**62)
    late = r.add("s", "gm", "grid_kw", 1.0, 2**40)
    assert isinstance(late, Late) and "ms since the epoch" in late.reason
    for ts in (-2**63, -1, 0, 2**53, 2**63 - 1):
        assert isinstance(iso_ms(ts), str)


def test_a_window_closed_without_a_silent_source_stays_closed_for_it():
    r, w = SiteRollup(60, 0), LaneWatermarks([0, 1], hold_ms=0)
    a, b = ("s", "a"), ("s", "b")
    w.observe(a, 0, 0, 0)
    r.add("s", "d0", "grid_kw", 1.0, 0, lane=a)
    w.observe(b, 1, 0, 0)
    r.add("s", "d1", "grid_kw", 1.0, 0, lane=b)
    w.caught_up(1, 0)  # b falls silent and is let go; a moves on
    w.observe(a, 0, 60_000, 0)
    assert [s["samples"] for s in r.advance(lanes=w.marks(0))] == [2]
    late = r.add("s", "d1", "grid_kw", 5.0, 30_000, lane=b)  # b comes back for the emitted window
    assert isinstance(late, Late)


def test_a_lane_restored_from_a_commit_and_silent_since_does_not_hold_windows_open():
    r, w = SiteRollup(60, 0), LaneWatermarks([0], hold_ms=0)
    r.move_watermark(WALL, ("s", "pcs-sim"))  # from the commit metadata; the simulator is gone
    w.observe(("s", "meter"), 0, WALL + 60_000, WALL)
    assert r.add("s", "gm", "grid_kw", 1.0, WALL + 60_000, lane=("s", "meter")) is None
    w.observe(("s", "meter"), 0, WALL + 180_000, WALL)
    assert [s["samples"] for s in r.advance(lanes=w.marks(WALL))] == [1]


def test_huge_values_are_refused_so_no_snapshot_carries_a_non_finite_number():
    import math

    from opsloop.models.rollup import MAX_MAGNITUDE, Invalid, fold

    r, w = SiteRollup(60, 0), LaneWatermarks([0], hold_ms=0)
    point = {"site": "s", "device": "gm", "metric": "grid_kw", "ts_ms": 0, "source": "t"}
    for value in (1e308, -1e308, MAX_MAGNITUDE * 1.01, float("inf"), float("-inf"), float("nan")):
        rejected = fold(r, w, {**point, "value": value}, 0, 0)
        assert isinstance(rejected, Invalid) and "gm" in rejected.reason
    assert r.open_windows == 0 and w.latest(("s", "t")) is None  # a refused point changes nothing
    for device in ("gm-1", "gm-2"):  # the largest accepted values, summed, stay finite
        assert fold(r, w, {**point, "device": device, "value": MAX_MAGNITUDE}, 0, 1) is None
    r.add("s", "fm", "facility_kw", 1e3, 0)
    r.add("s", "pdu", "it_kw", 5e-324, 0)  # facility / IT would overflow: no PUE rather than inf
    (snap,) = r.flush()
    assert snap["grid_kw"] == 2 * MAX_MAGNITUDE and snap["pue"] is None
    assert all(math.isfinite(v) for v in snap.values() if isinstance(v, float))
