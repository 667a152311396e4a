"""The site twin's physics: load from the curve, cooling with the weather, the ESS on the meter, stopped
jobs, failures that move telemetry."""

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site
from opsloop.models.jobs import Job
from opsloop.models.twin import Fault, SiteTwin, parse_curve, stopped_kw

pytestmark = pytest.mark.unit

H = 3_600_000
SITE = load_site(DEMO_SITE)


def flat(kw=30_000.0):
    return [(0, kw), (48 * H, kw)]


def test_load_follows_the_curve_and_wraps_past_its_end():
    twin = SiteTwin(SITE, [(0, 20_000.0), (H, 30_000.0)])
    assert twin.demand(0) == 20_000.0 and twin.demand(H // 2) == 25_000.0
    assert twin.demand(2 * H + H // 2) == twin.demand(H // 2)  # span = 2 h: one step past the last point


def test_facility_is_it_plus_cooling_and_the_battery_lowers_the_grid_import():
    twin = SiteTwin(SITE, flat())
    idle, discharging = twin.measure(12 * H), twin.measure(12 * H, ess_kw=4000.0)
    assert idle.facility_kw == pytest.approx(idle.it_kw + idle.cooling_kw)
    assert idle.it_kw == pytest.approx(sum(idle.pdu_kw.values())) == pytest.approx(sum(idle.rack_kw.values()))
    assert discharging.grid_kw == pytest.approx(idle.grid_kw - 4000.0)
    charging = twin.measure(12 * H, ess_kw=-2000.0)
    assert charging.grid_kw == pytest.approx(idle.grid_kw + 2000.0)


def test_cooling_costs_more_when_it_is_hot_outside():
    twin = SiteTwin(SITE, flat())
    night, afternoon = twin.measure(3 * H), twin.measure(15 * H)
    assert afternoon.outside_c > night.outside_c + 10
    assert afternoon.it_kw == pytest.approx(night.it_kw)
    assert afternoon.cooling_kw > night.cooling_kw * 1.2


def test_stopped_jobs_take_their_power_off_their_pod_and_the_it_load():
    twin = SiteTwin(SITE, flat())
    base = twin.measure(0)
    shed = twin.measure(0, stopped_kw={"batch": 500.0})
    assert base.pod_kw["gpu-pod-3"] - shed.pod_kw["gpu-pod-3"] == pytest.approx(500.0)
    assert shed.pod_kw["gpu-pod-1"] == pytest.approx(base.pod_kw["gpu-pod-1"])
    assert base.it_kw - shed.it_kw == pytest.approx(500.0)
    assert shed.grid_kw < base.grid_kw - 500.0  # less IT heat to remove too


def test_stopped_jobs_are_the_suspended_and_those_pending_again_after_running():
    seen: set[str] = set()
    assert stopped_kw([Job("1", "batch", "RUNNING", 1, 8), Job("2", "batch", "PENDING", 1, 8)], 0.7, seen) == {}
    assert stopped_kw([Job("1", "batch", "SUSPENDED", 1, 8), Job("2", "batch", "PENDING", 1, 8)], 0.5, seen) == \
        {"batch": 4.0}  # job 2 never ran: it never drew power


def test_a_pdu_breaker_trip_drops_its_racks_and_a_chiller_trip_heats_its_zones():
    twin = SiteTwin(SITE, flat(), zone_tau_s=600)
    before = twin.measure(0)
    twin.inject(Fault("power", "pdu-a1", H, 2 * H, frozenset({"pdu-a1", "rack-a01", "rack-a02"})))
    twin.inject(Fault("cooling", "chiller-1", H, 2 * H,
                      frozenset({"chiller-1", "crah-a1", "crah-a2", "zone-a1", "zone-a2"})))
    during = twin.measure(H + 1800_000)
    assert during.rack_kw["rack-a01"] == during.rack_kw["rack-a02"] == during.pdu_kw["pdu-a1"] == 0.0
    assert during.it_kw == pytest.approx(before.it_kw - before.pdu_kw["pdu-a1"], rel=1e-6)
    assert during.zone_c["zone-a1"] > before.zone_c["zone-a1"] + 15
    assert during.zone_c["zone-b1"] == pytest.approx(before.zone_c["zone-b1"])
    assert during.chiller_kw["chiller-1"] == 0.0 and during.chiller_kw["chiller-2"] == pytest.approx(during.cooling_kw)
    after = twin.measure(4 * H)
    assert after.rack_kw["rack-a01"] > 0 and after.zone_c["zone-a1"] < 26


def test_points_use_rollup_metrics_once_per_device():
    twin = SiteTwin(SITE, flat())
    points = twin.points(twin.measure(0, ess_kw=100.0), soc_pct=55.0)
    keys = [(p["device"], p["metric"]) for p in points]
    assert len(keys) == len(set(keys))
    by = {k: p["value"] for k, p in zip(keys, points)}
    assert by[("grid-meter-1", "grid_kw")] == pytest.approx(by[("facility-meter-1", "facility_kw")] - 100.0)
    assert by[("ess-1", "ess_soc_pct")] == 55.0
    it_points = [p for p in points if p["metric"] == "it_kw"]
    assert {p["device"] for p in it_points} == {p.id for p in SITE.pdus}


def test_a_curve_needs_two_distinct_finite_points():
    with pytest.raises(ValueError, match="two values"):
        parse_curve([(0, 1.0), (0, 2.0)])
    with pytest.raises(ValueError, match="non-finite"):
        parse_curve([(0, 1.0), (1, float("nan"))])
