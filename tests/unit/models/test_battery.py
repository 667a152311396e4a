"""One battery model: the planner's step, the guard's end state of charge and the simulator agree."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from opsloop.models.battery import Battery, Command, PcsBattery

pytestmark = pytest.mark.unit

batteries = st.builds(Battery, capacity_kwh=st.floats(100, 20_000), pcs_charge_kw=st.floats(10, 5000),
                      pcs_discharge_kw=st.floats(10, 5000), round_trip_efficiency=st.floats(0.7, 1.0),
                      reserve_soc_pct=st.floats(0, 30), soh_pct=st.floats(50, 100))


@given(batteries, st.floats(35, 95), st.floats(-1, 1), st.floats(0.05, 2))
def test_planner_guard_and_simulator_integrate_the_same_energy(battery, soc, share, hours):
    energy = battery.energy_kwh(soc)
    power = share * (battery.max_discharge_kw(energy, hours) if share > 0 else battery.max_charge_kw(energy, hours))
    # planner: hold import at 0 kW against a load of the discharge, or charge with all the headroom there is
    command = Command(limit_kw=0.0, max_discharge_kw=max(power, 0.0), charge_kw=max(-power, 0.0),
                      charge_ceiling_kw=1e9)
    stepped = battery.step(energy, command, load_kw=max(power, 0.0), step_h=hours)
    assert stepped.power_kw == pytest.approx(power) and stepped.violations == 0
    planner_soc = battery.soc_pct(stepped.energy_kwh)
    guard_soc = battery.soc_after(soc, power, hours * 3600)
    pcs = PcsBattery(battery, soc_pct=soc, now_s=0)
    pcs.command(power, revert_s=None, now_s=0)
    pcs.advance(hours * 3600)
    assert planner_soc == pytest.approx(guard_soc, abs=1e-6) and pcs.soc_pct == pytest.approx(guard_soc, abs=1e-6)


@given(batteries, st.floats(0, 100), st.lists(st.floats(0, 6000), min_size=1, max_size=48),
       st.lists(st.booleans(), min_size=48, max_size=48), st.floats(0, 6000), st.floats(0.25, 1))
def test_the_planners_fast_paths_follow_step(battery, soc, load, charge_at, limit, step_h):
    energy = battery.energy_kwh(soc)
    ceiling = limit * 0.98
    schedule = battery.dispatch(load, charge_at, energy, step_h, limit, ceiling)
    for kw, charge, expected in zip(load, charge_at, schedule):
        command = Command(limit, battery.max_discharge_kw(energy, step_h),
                          battery.max_charge_kw(energy, step_h) if charge else 0.0, ceiling)
        result = battery.step(energy, command, kw, step_h)
        assert result.power_kw == pytest.approx(expected, abs=1e-6) and result.violations == 0
        energy = result.energy_kwh
    if battery.holds(load, charge_at, battery.energy_kwh(soc), step_h, limit, ceiling):
        assert all(kw - power <= limit + 1e-3 for kw, power in zip(load, schedule))


def test_the_simulator_clamps_to_the_ratings_and_stops_at_its_floor():
    pcs = PcsBattery(Battery(1000, 200, 500, round_trip_efficiency=1.0), soc_pct=20, min_soc_pct=10, now_s=0)
    assert pcs.command(900, revert_s=None, now_s=0) == 500
    pcs.advance(3600)
    assert pcs.soc_pct == 10 and pcs.power_kw == 0


def test_a_maximum_state_of_charge_stops_every_charging_path_of_the_planner():
    battery = Battery(1000, 500, 500, round_trip_efficiency=1.0, reserve_soc_pct=10, soh_pct=100, max_soc_pct=90)
    assert battery.max_charge_kw(battery.energy_kwh(80), 1.0) == pytest.approx(100)  # 100 kWh of room in an hour
    assert battery.max_charge_kw(battery.energy_kwh(95), 1.0) == 0.0  # above it: no charge, never a discharge
    stepped = battery.step(battery.energy_kwh(80), Command(limit_kw=1000, charge_kw=500), load_kw=0, step_h=1.0)
    assert stepped.violations == 1 and battery.soc_pct(stepped.energy_kwh) == pytest.approx(90)
    assert battery.dispatch([0, 0], [True, True], battery.energy_kwh(80), 1.0, 1000, 1000) == [-100.0, 0.0]
