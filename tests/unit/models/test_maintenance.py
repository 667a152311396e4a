"""Maintenance windows: the cheapest slot before the forecast date, proposed to the guard for approval."""

from __future__ import annotations

import pytest

from opsloop.config.assets import POLICY_FILE
from opsloop.config.policy import load_policy
from opsloop.models.guard import NEEDS_APPROVAL, REJECTED, PlantState, decide
from opsloop.models.maintenance import (HOUR_MS, MAINTENANCE_URGENT, MAINTENANCE_WINDOW, HourlyProfile,
                                        MaintenancePlan, Slot, hourly_slots, maintenance_action, plan_window,
                                        propose, queue_demand)
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.unit

DAY_PRICES = [0.10] * 7 + [0.25] * 16 + [0.10]  # cheap nights
FORECAST = {"site": "demo", "device": "node7/gpu3", "device_type": "gpu", "metric": "rows_remapped_uncorrectable",
            "earliest_ms": 5 * 24 * HOUR_MS}


def slots(hours=96, load=lambda h: 900 if 8 <= h % 24 < 22 else 400, busy=lambda h: None):
    return [Slot(h * HOUR_MS, load(h), DAY_PRICES[h % 24], busy(h)) for h in range(hours)]


def plan(s, duration=4, deadline_h=72, **kw):
    args = dict(gpus=8, capacity=1000, gpu_hour_value=2.0, node_kw=10.0, not_before_ms=2 * HOUR_MS) | kw
    return plan_window(s, HOUR_MS, duration, deadline_h * HOUR_MS, **args)


def test_the_cheapest_window_is_at_night_when_load_and_tariff_are_low():
    w = plan(slots())
    hours = [(w.start_ms // HOUR_MS + i) % 24 for i in range(4)]
    assert w.reason_code == MAINTENANCE_WINDOW and all(h < 7 or h >= 22 for h in hours)
    assert w.displaced_gpu_hours == pytest.approx(4 * 8 * 0.4)


def test_the_job_queue_outranks_the_load_forecast_where_it_reaches():
    # the queue says the nodes are free from 10:00 to 14:00 on day one: worth the day tariff
    free = plan(slots(busy=lambda h: 0.0 if 10 <= h < 14 else (8.0 if h < 24 else None)))
    assert free.start_ms == 10 * HOUR_MS and free.displaced_gpu_hours == 0
    assert plan(slots()).start_ms >= 2 * HOUR_MS  # the notice: never a window starting now


def test_the_window_ends_before_the_deadline_or_is_marked_urgent():
    w = plan(slots(), deadline_h=10)
    assert w.end_ms <= 10 * HOUR_MS
    urgent = plan(slots(), deadline_h=4)
    assert urgent.reason_code == MAINTENANCE_URGENT and urgent.start_ms == 2 * HOUR_MS
    assert plan(slots(hours=3)) is None


def test_hourly_slots_follow_the_learnt_profile_and_the_tariff():
    profile = HourlyProfile(alpha=0.5)
    for day in range(3):
        for h in range(24):
            profile.learn_one((day * 24 + h) * HOUR_MS, 90.0 if 8 <= h < 20 else 20.0)
    got = hourly_slots(profile, tuple(DAY_PRICES), 100 * HOUR_MS + 1, 24, default_load=100.0)
    assert got[0].start_ms == 101 * HOUR_MS and len(got) == 24
    assert [(s.load, s.price_per_kwh) for s in got[:2]] == [(20.0, 0.10), (20.0, 0.10)]  # 05:00, 06:00
    assert got[3].load == 90.0 and got[3].price_per_kwh == 0.25  # 08:00
    assert hourly_slots(HourlyProfile(), tuple(DAY_PRICES), 0, 1, default_load=100.0)[0].load == 100.0


def test_the_reservation_goes_to_the_guard_in_approval_mode():
    policy = load_policy(POLICY_FILE)
    w = plan(slots())
    action = maintenance_action(FORECAST, w, "demo-cluster", ["node7"], ["train-a"], 8, now_ms=0)
    assert Codec.default().decode_as("Action", Codec.default().encode("Action", action)) == action
    assert action["kind"] == "slurm_reserve" and action["params"]["nodes"] == "node7"
    assert action["reason"].startswith("Replace gpu node7/gpu3 between ")
    decision = decide(action, PlantState(), policy, now_ms=0)
    assert decision.verdict == NEEDS_APPROVAL and decision.reason_codes == ("needs_approval",)
    # a protected partition is no bar: the reservation takes no running job
    too_long = {**action, "params": {**action["params"], "end_ms": str(w.start_ms + 13 * HOUR_MS)}}
    assert decide(too_long, PlantState(), policy, now_ms=0).reason_codes == ("over_max_window",)
    started = decide(action, PlantState(), policy, now_ms=w.start_ms + 1)
    assert started.verdict == REJECTED and started.reason_codes == ("expired",)


def queued(state, gpus, start_h=None, end_h=None, expected_h=None, entry="job", ts_h=0):
    def ms(h):
        return None if h is None else h * HOUR_MS
    return {"entry": entry, "ts_ms": ts_h * HOUR_MS, "state": state, "gpus": gpus, "start_ms": ms(start_h),
            "expected_start_ms": ms(expected_h), "end_ms": ms(end_h)}


def test_queue_demand_counts_running_pending_and_reserved_gpus_hour_by_hour():
    queue = [queued("RUNNING", 8, start_h=-5, end_h=2), queued("PENDING", 16, expected_h=3, end_h=6),
             queued("ACTIVE", 4, start_h=1, end_h=3, entry="reservation"), queued("PENDING", 2),  # no estimate
             queued("PENDING", 0, expected_h=0, end_h=9), {**queued("", 26), "entry": "snapshot"}]
    assert queue_demand(queue, 0, 8) == [10.0, 14.0, 6.0, 18.0, 18.0, 18.0, None, None]


def test_a_window_avoids_the_hours_the_queue_wants_the_gpus():
    now = 0
    profile = HourlyProfile()
    for h in range(48):  # the load forecast alone: flat, so the tariff picks the night
        profile.learn_one(h * HOUR_MS, 50.0)
    forecast = {**FORECAST, "family": "gpu", "earliest_ms": 3 * 24 * HOUR_MS}
    mp = MaintenancePlan(prices_by_hour=tuple(DAY_PRICES))
    alone = propose(forecast, profile, mp, now)
    start = int(alone["params"]["start_ms"])
    assert (start // HOUR_MS) % 24 < 7 or (start // HOUR_MS) % 24 == 23  # a cheap night hour
    # the queue wants 32 GPUs through that window's night: the window moves to hours it leaves free
    busy_night = queued("PENDING", 32, expected_h=start // HOUR_MS - 2, end_h=start // HOUR_MS + 8)
    free = queued("RUNNING", 0, start_h=0, end_h=48)
    moved = propose(forecast, profile, mp, now, queue=[busy_night, free, queued("RUNNING", 1, start_h=0, end_h=48)])
    moved_start, moved_end = int(moved["params"]["start_ms"]), int(moved["params"]["end_ms"])
    assert moved_end <= busy_night["expected_start_ms"] or moved_start >= busy_night["end_ms"]
    # a snapshot older than the plan's queue_max_age_h is ignored
    stale = [{**e, "ts_ms": e["ts_ms"] - 2 * HOUR_MS} for e in (busy_night, free)]
    assert propose(forecast, profile, mp, now, queue=stale)["params"]["start_ms"] == alone["params"]["start_ms"]
