"""The rollup's windowing and late-data policy (models/rollup.py), without a broker."""

import pytest

from opsloop.models.rollup import PartitionWatermark, SiteRollup

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


def test_partition_watermark_is_the_slowest_active_partition():
    w = PartitionWatermark()
    assert w.value is None
    w.observe(0, 100)
    w.observe(1, 50)
    w.observe(2, 70)
    assert w.value == 50
    w.observe(0, 500)  # not the slowest: nothing moves
    assert w.value == 50
    w.observe(1, 400)
    assert w.value == 70
    w.observe(2, 60)  # older than partition 2 already showed
    assert w.value == 70
    w.caught_up(2)
    assert w.value == 400
    w.caught_up(0)
    w.caught_up(1)
    assert w.value == 500  # all caught up: the latest time seen
    w.observe(2, 450)  # partition 2 is back and holds the watermark again
    assert w.value == 450
    w.forget(2)
    assert w.value == 500


def test_no_watermark_until_every_partition_has_been_heard_from():
    w = PartitionWatermark(partitions=[0, 1, 2])
    w.observe(0, 10_000)  # partition 0 raced ahead; 1 and 2 may hold older data
    assert w.value is None
    w.caught_up(1)  # empty partition
    assert w.value is None
    w.observe(2, 3_000)
    assert w.value == 3_000


def test_huge_values_are_refused_so_no_snapshot_carries_a_non_finite_number():
    import math

    from opsloop.models.rollup import MAX_MAGNITUDE, Invalid, fold

    r, w = SiteRollup(60, 0), PartitionWatermark([0])
    point = {"site": "s", "device": "gm", "metric": "grid_kw", "ts_ms": 0}
    for value in (1e308, -1e308, MAX_MAGNITUDE * 1.01, float("inf"), float("-inf"), float("nan")):
        rejected = fold(r, w, {**point, "value": value}, 0, 0)
        assert isinstance(rejected, Invalid) and "gm" in rejected.reason
    assert r.open_windows == 0 and w.value is None  # a refused point changes nothing
    for device in ("gm-1", "gm-2"):  # the largest accepted values, summed, stay finite
        assert fold(r, w, {**point, "device": device, "value": MAX_MAGNITUDE}, 0, 1) is None
    r.add("s", "fm", "facility_kw", 1e3, 0)
    r.add("s", "pdu", "it_kw", 5e-324, 0)  # facility / IT would overflow: no PUE rather than inf
    (snap,) = r.flush()
    assert snap["grid_kw"] == 2 * MAX_MAGNITUDE and snap["pue"] is None
    assert all(math.isfinite(v) for v in snap.values() if isinstance(v, float))
