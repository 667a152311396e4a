"""The cooling lever's pure decisions: where the setpoint goes, whether a change held, what the guard allows."""

import pytest

from opsloop.config.assets import POLICY_FILE
from opsloop.config.policy import load_policy
from opsloop.models import cooling, guard
from opsloop.models.twin import SiteTwin
from opsloop.config.site import parse_site

pytestmark = pytest.mark.unit
POLICY = load_policy(POLICY_FILE)
LIMITS = POLICY.cooling
MIN = 60_000


def state(setpoint, *inlets, changes=(), pending=False, ts=0):
    return cooling.CoolingState(setpoint, {f"zone-{i}": c for i, c in enumerate(inlets)}, ts, tuple(changes), pending)


def test_the_loop_raises_towards_the_aim_one_step_at_a_time_and_not_while_a_raise_settles():
    p = cooling.propose(state(18.0, 21.0, 22.0), LIMITS, 0)
    assert (p.reason_code, p.setpoint_c) == (cooling.RAISE, 19.0)  # 3.5 degC of room, one max_step_c
    assert cooling.propose(state(18.0, 21.0, 22.0, pending=True), LIMITS, 0) is None
    assert cooling.propose(state(18.0, 25.4, 22.0), LIMITS, 0) is None  # within the deadband of the aim


def test_the_loop_lowers_at_once_when_the_hottest_inlet_passes_the_aim_even_while_a_raise_settles():
    p = cooling.propose(state(22.0, 26.3, 24.0, pending=True), LIMITS, 0)
    assert (p.reason_code, p.setpoint_c) == (cooling.LOWER, 21.2)
    assert "26.3 degC, 0.8 degC above the 25.5 degC aim" in p.text


def test_the_hourly_ramp_budget_and_the_setpoint_bounds_hold_the_loop_back():
    spent = [(0, 1.0), (15 * MIN, 1.0), (30 * MIN, 0.6)]
    p = cooling.propose(state(20.0, 21.0, changes=spent), LIMITS, 45 * MIN)
    assert p.setpoint_c == 20.4  # 3.0 - 2.6 left in the hour
    assert cooling.propose(state(20.0, 21.0, changes=spent + [(40 * MIN, 0.4)]), LIMITS, 45 * MIN) is None
    assert cooling.propose(state(20.0, 21.0, changes=spent), LIMITS, 61 * MIN).setpoint_c == 21.0  # first one aged out
    assert cooling.propose(state(25.0, 19.0), LIMITS, 0) is None  # at setpoint_max_c already


def test_the_coldest_inlet_is_never_pushed_under_the_range():
    p = cooling.propose(state(20.0, 27.0, 19.8), LIMITS, 0)
    assert p.setpoint_c == 19.7  # not the 1 degC step the hot zone asks for: zone-1 keeps 19.5


def test_verification_reverts_on_a_readback_mismatch_an_inlet_out_of_range_or_no_verdict_in_time():
    ok = {"zone-a": 24.0}
    assert cooling.verify(21.0, 21.0, ok, LIMITS, 0, 10 * MIN).status == cooling.PENDING
    assert cooling.verify(21.0, 21.0, ok, LIMITS, 0, 15 * MIN).status == cooling.VERIFIED
    assert cooling.verify(21.0, 20.0, ok, LIMITS, 0, MIN).reason_code == cooling.READBACK_MISMATCH
    assert cooling.verify(21.0, 21.0, {"zone-a": 27.2}, LIMITS, 0, MIN).reason_code == cooling.INLET_OUT_OF_RANGE
    assert cooling.verify(21.0, 21.0, {"zone-a": 25.9}, LIMITS, 0, MIN).reason_code == cooling.ABOVE_AIM
    assert cooling.verify(21.0, 21.0, {"zone-a": 25.9}, LIMITS, 0, MIN, raised=False).status == cooling.VERIFIED
    assert cooling.verify(21.0, 21.0, {}, LIMITS, 0, 30 * MIN).reason_code == cooling.NO_VERDICT


def test_the_guard_decides_a_setpoint_action_by_the_policy_approve_mode_by_default():
    known = state(18.0, 21.0, 22.0, ts=0)
    proposal = cooling.propose(known, LIMITS, 0)
    action = cooling.setpoint_action("demo", "analog-value,1", 18.0, proposal, LIMITS, 0)
    decision = guard.decide(action, guard.PlantState(cooling=known), POLICY, 0)
    assert (decision.verdict, decision.reason_codes) == (guard.NEEDS_APPROVAL, (guard.AWAITS_OPERATOR,))
    assert guard.decide(action, guard.PlantState(), POLICY, 0).reason_codes == (guard.NO_COOLING_STATE,)
    stale = guard.decide(action, guard.PlantState(cooling=known), POLICY, 10 * MIN)
    assert stale.reason_codes == (guard.STALE_COOLING_STATE,)
    hot = guard.decide(action, guard.PlantState(cooling=state(18.0, 26.5)), POLICY, 0)
    assert hot.reason_codes == (guard.INLET_LIMIT,)
    no_section = guard.decide(action, guard.PlantState(cooling=known), POLICY.__class__(
        **{**POLICY.__dict__, "cooling": None}), 0)
    assert no_section.reason_codes == (guard.NO_COOLING_POLICY,)


def test_every_decision_code_is_in_the_vocabularies():
    assert {guard.NO_COOLING_POLICY, guard.INLET_LIMIT, guard.OVER_HOURLY_RAMP} <= guard.REASON_CODES
    assert {cooling.RAISE, cooling.LOWER, cooling.ABOVE_AIM} <= cooling.REASON_CODES


SITE = parse_site({"site": {"id": "s"}, "pdus": [{"id": "p1", "share": 0.6}, {"id": "p2", "share": 0.4}],
                   "topology": {"cooling": [{"id": "ch-1", "type": "chiller"}, {"id": "z1", "type": "zone"},
                                            {"id": "z2", "type": "zone"}],
                                "racks": [{"id": "r1", "pdu": "p1", "zone": "z1"}, {"id": "r2", "pdu": "p2", "zone": "z2"}]}},
                  "sites/s")
FLAT = [(0, 20_000.0), (3_600_000, 20_000.0)]


def test_the_twin_trades_chiller_power_for_inlet_temperature_as_the_setpoint_rises():
    cold = SiteTwin(SITE, FLAT, it_scale=1.0, it_offset_kw=0.0, temp_swing_c=0.0, zone_tau_s=600)
    warm = SiteTwin(SITE, FLAT, it_scale=1.0, it_offset_kw=0.0, temp_swing_c=0.0, zone_tau_s=600, supply_setpoint_c=22)
    a, b = cold.measure(0), warm.measure(0)
    chiller_a, chiller_b = a.cooling_kw - cold.cooling_base_kw, b.cooling_kw - warm.cooling_base_kw
    assert chiller_b == pytest.approx(chiller_a / 1.12)  # 3 % of COP per degC, 4 degC
    assert b.zone_c["z1"] == pytest.approx(a.zone_c["z1"] + 4)
    assert a.zone_c["z1"] > a.zone_c["z2"]  # the zone carrying more load runs warmer
    cold.supply_setpoint_c = 22  # a write to the plant: the inlets follow with the zones' time constant
    after = cold.measure(600_000)
    assert after.zone_c["z1"] == pytest.approx(a.zone_c["z1"] + 4 * (1 - 2.718281828 ** -1), rel=1e-3)
    assert after.cooling_kw == pytest.approx(b.cooling_kw)
