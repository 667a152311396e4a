import pytest

from opsloop.models.loop_report import Sample, billed_peaks, loop_latencies, percentile

pytestmark = pytest.mark.unit

STEP = 900_000


def test_billed_peaks_take_each_days_highest_aligned_quarter_hour_average():
    day = 86_400_000
    samples = [(0, 10.0), (STEP // 2, 30.0), (STEP, 25.0), (day, 5.0), (day + STEP, 7.0)]
    assert billed_peaks(samples, "day") == {"1970-01-01": 25.0, "1970-01-02": 7.0}
    assert billed_peaks(samples, "month") == {"1970-01": 25.0}


def test_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_each_hop_is_measured_in_twin_time_and_wall_time():
    speed = 100.0
    twin_time = lambda wall_s: 1_000.0 + (wall_s - 10.0) * speed  # noqa: E731 (the run's clock)
    # samples every 60 twin s, each shown 0.05 wall s after its twin time
    samples = [Sample(ts, 0.0 if ts < 1_300_000 else -500.0, 0.0 if ts < 1_300_000 else 500.0,
                      10.0 + (ts / 1000 - 1_000.0) / speed + 0.05) for ts in range(1_000_000, 1_600_000, 60_000)]
    proposed = [{"action_id": "a", "created_ms": 1_120_000, "wall_s": 11.5}]  # step ends at 1,120 s twin
    executed = [{"action_id": "a", "ts_ms": 1_170_000, "wall_s": 11.7, "expires_ms": 1_600_000}]
    point, run, meter, twin = loop_latencies(samples, proposed, executed, twin_time)
    # the last sample before the step's end is at 1,060 s twin, due at wall 10.6 (shown 0.05 s later)
    assert point.twin_s == pytest.approx((90.0,)) and point.wall_s == pytest.approx((0.9,))
    assert twin.wall_s == pytest.approx((0.05,) * len(samples)) and twin.twin_s == pytest.approx((5.0,) * len(samples))
    assert "(10 samples)" in twin.line()
    assert run.twin_s == pytest.approx((20.0,)) and run.wall_s == pytest.approx((0.2,))
    # the ESS power first changes in the sample at 1,300 s twin, published at wall 13.05
    assert meter.twin_s == pytest.approx((130.0,)) and meter.wall_s == pytest.approx((1.35,))
    assert "p50 20 s" in run.line() and "(1 actions)" in run.line()


def test_a_write_that_changes_nothing_within_its_life_is_not_counted_as_seen():
    samples = [Sample(ts, 100.0, 0.0, ts / 1000) for ts in range(0, 600_000, 60_000)]
    executed = [{"action_id": "a", "ts_ms": 60_000, "wall_s": 60.0, "expires_ms": 300_000}]
    _, _, meter, _ = loop_latencies(samples, [], executed, lambda wall_s: wall_s)
    assert meter.twin_s == () and "not measured" in meter.line()
