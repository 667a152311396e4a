"""Battery model and SunSpec scaling; no device needed."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from opsloop.models import sunspec
from opsloop.models.battery import Battery, PcsBattery

pytestmark = pytest.mark.unit


def test_soc_stops_at_the_bounds_and_commands_are_clamped_to_the_ratings():
    b = PcsBattery(Battery(1000, pcs_charge_kw=200, pcs_discharge_kw=500), soc_pct=5, now_s=0)
    assert b.command(800, revert_s=None, now_s=0) == 500
    b.advance(3600)
    assert b.soc_pct == 0 and b.power_kw == 0  # empty: no more discharge
    assert b.command(-900, revert_s=None, now_s=3600) == -200
    b.advance(3600 * 10)
    assert b.soc_pct == 100 and b.power_kw == 0


def test_efficiency_and_health_shape_the_state_of_charge():
    b = PcsBattery(Battery(1000, 500, 500, round_trip_efficiency=0.81, soh_pct=50), soc_pct=50, now_s=0)
    b.command(-100, None, 0)
    b.advance(3600)  # 100 kWh in at 90% one way = 90 kWh stored of 500 usable
    assert b.soc_pct == pytest.approx(50 + 18)


def test_time_never_runs_backwards_and_a_new_command_restarts_the_revert_timer():
    b = PcsBattery(Battery(1000, 500, 500), soc_pct=50, now_s=100)
    b.command(100, revert_s=60, now_s=100)
    b.advance(50)
    assert b.now_s == 100
    b.command(100, revert_s=60, now_s=150)
    b.advance(200)
    assert b.power_kw == 100 and not b.reverted
    b.advance(211)
    assert b.power_kw == 0 and b.reverted


@given(st.floats(-5000, 5000), st.integers(0, 65535))
def test_setpoints_survive_the_registers(kw, revert_s):
    values = sunspec.setpoint_registers(kw, revert_s, 5000)
    assert all(0 <= v <= 0xFFFF for v in values.values())
    assert sunspec.setpoint_from(values, 5000) == pytest.approx(kw, abs=5000 * 1e-4 / 2 + 1e-9)


def test_register_image_starts_with_the_sunspec_marker_and_chains_its_models():
    regs = sunspec.initial_registers(5000, 10)
    assert regs[:2] == [0x5375, 0x6E53]
    at = 2
    models = []
    while regs[at] != 0xFFFF:
        models.append(regs[at])
        at += 2 + regs[at + 1]
    assert models == [1, 103, 124, 802, 203, 203] and regs[at + 1] == 0
    values = sunspec.storage_values(regs)
    assert values["WChaMax"] * 10 ** values["WChaMax_SF"] == 5_000_000 and values["MinRsvPct"] == 10
