"""The cooling lever end to end without a broker: the guard's verdict on a proposal (approve mode), an
operator's signed approval, the cooling sink writing the setpoint of a real BACnet/IP device (bacpypes3
on 127.0.0.1), reading it back and verifying it, or reverting it when a higher priority holds the object
or an inlet leaves the range."""

from __future__ import annotations

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.policy import load_policy
from opsloop.config.settings import Settings
from opsloop.config.site import load_site
from opsloop.connectors.bacnet import BacnetClient, SetpointDriver, free_udp_port
from opsloop.models import cooling
from opsloop.models.signing import sign_feedback
from opsloop.models.twin import SiteState
from opsloop.ops.twin_protocols import SETPOINT_OBJECT, BacnetPlant
from opsloop.schemas.codec import Codec
from opsloop.streams.cooling_sink import CoolingSink
from opsloop.streams.guard import GuardProcessor

pytestmark = pytest.mark.integration
CODEC = Codec.default()
POLICY = load_policy(Settings().policy)
SITE = load_site(DEMO_SITE)
T0 = 1_780_000_000_000


class Clock:
    def __init__(self):
        self.ms = T0

    def __call__(self) -> float:
        return self.ms / 1000


class Recorder:
    """Keeps what an agent emits (as valid records) instead of sending it."""

    def emit(self, topic, record):
        CODEC.encode(self.catalog[topic].record, record)
        self.sent.append((topic, record))

    def flush(self):
        pass


class Guard(Recorder, GuardProcessor):
    pass


class Sink(Recorder, CoolingSink):
    pass


class Msg:
    def __init__(self, value: bytes):
        self._v = value

    def value(self):
        return self._v


def show(plant, **zones):
    plant.show(SiteState(0, 20.0, 1.0, 1.0, 2.0, 0.0, 2.0, zone_c=zones))


@pytest.fixture
def rig(tmp_path):
    settings = Settings(data_dir=tmp_path, verdict_key="v1:" + "V" * 40, feedback_key="f1:" + "F" * 40)
    clock = Clock()
    plant = BacnetPlant(free_udp_port(), ["zone-a1", "zone-b1"], setpoint_c=18.0).start()
    show(plant, **{"zone-a1": 21.5, "zone-b1": 20.5})
    driver = SetpointDriver(BacnetClient(timeout_s=2.0), plant.address, SETPOINT_OBJECT, plant.inlet_objects)
    guard = Guard(settings, POLICY, SITE, clock=clock)
    sink = Sink(settings, POLICY, SITE, driver=driver, clock=clock)
    guard.sent, sink.sent = [], []
    yield guard, sink, plant, clock, settings
    sink.close()
    guard.close()
    plant.stop()


def approved_setpoint(guard, sink, clock, settings) -> dict:
    """Read the plant, propose, let the guard decide, approve as an operator; the signed approved verdict."""
    reading = sink.driver.read()
    known = cooling.CoolingState(reading.setpoint_c, reading.inlet_c, clock.ms)
    proposal = cooling.propose(known, POLICY.cooling, clock.ms)
    action = cooling.setpoint_action("demo", SETPOINT_OBJECT, reading.setpoint_c, proposal, POLICY.cooling, clock.ms,
                                     inlet_c=reading.inlet_c)
    guard.on_proposed(action)
    first = [r for t, r in guard.sent if t == "actions.approved"][-1]
    assert (first["verdict"], first["reason_codes"]) == ("needs_approval", ["needs_approval"])  # approve mode
    answer = sign_feedback({"target_id": action["action_id"], "kind": "approve_action", "operator": "alice",
                            "ts_ms": clock.ms + 1000, "comment": None}, settings.feedback_key)
    clock.ms += 2000
    guard.on_feedback(CODEC.decode_as("Feedback", CODEC.encode("Feedback", answer)))
    verdict = [r for t, r in guard.sent if t == "actions.approved"][-1]
    assert (verdict["verdict"], verdict["approved_by"]) == ("approved", "alice")
    return verdict


def results(sink) -> list[tuple[str, str]]:
    return [(r["status"], r["detail"]) for t, r in sink.sent if t == "actions.results"]


def test_an_approved_raise_is_written_read_back_and_verified_once_the_inlets_held(rig):
    guard, sink, plant, clock, settings = rig
    verdict = approved_setpoint(guard, sink, clock, settings)
    sink.handle(Msg(CODEC.encode("ApprovedAction", verdict)))
    assert plant.setpoint_c() == 19.0 and results(sink)[0][0] == "executed"
    clock.ms += 60_000
    show(plant, **{"zone-a1": 22.3, "zone-b1": 21.3})
    assert sink.housekeeping() is False  # still settling
    clock.ms += 900_000
    assert sink.housekeeping() is True
    assert [s for s, _ in results(sink)] == ["executed", "verified"] and sink.settled()
    assert plant.setpoint_c() == 19.0  # a verified setpoint stays


def test_an_inlet_past_the_aim_after_a_raise_reverts_it_with_an_alarm(rig):
    guard, sink, plant, clock, settings = rig
    sink.handle(Msg(CODEC.encode("ApprovedAction", approved_setpoint(guard, sink, clock, settings))))
    clock.ms += 300_000
    show(plant, **{"zone-a1": 25.9, "zone-b1": 21.0})  # load rose while the raise settled
    assert sink.housekeeping() is True
    assert results(sink)[-1][0] == "reverted" and results(sink)[-1][1].startswith(cooling.ABOVE_AIM)
    assert plant.setpoint_c() == 18.0
    assert [r["code"] for t, r in sink.sent if t == "alarms.raw"] == ["COOLING_SETPOINT_REVERTED"]


def test_a_bms_holding_a_higher_priority_makes_the_write_fail_and_the_old_value_is_written_back(rig):
    guard, sink, plant, clock, settings = rig
    verdict = approved_setpoint(guard, sink, clock, settings)
    bms = BacnetClient(timeout_s=2.0)
    try:
        bms.write_real(plant.address, SETPOINT_OBJECT, 17.5, priority=3)
        sink.handle(Msg(CODEC.encode("ApprovedAction", verdict)))
        status, detail = results(sink)[0]
        assert status == "failed" and detail.startswith(cooling.READBACK_MISMATCH)
        bms.write_real(plant.address, SETPOINT_OBJECT, None, priority=3)
        assert plant.setpoint_c() == 18.0  # our slot relinquished again, as it was: not holding the refused 19
    finally:
        bms.close()


def test_the_guard_counts_its_approved_changes_against_the_hourly_ramp(rig):
    guard, sink, plant, clock, settings = rig
    for _ in range(3):  # three approved 1 degC raises in the hour: the policy's 3 degC
        verdict = approved_setpoint(guard, sink, clock, settings)
        sink.handle(Msg(CODEC.encode("ApprovedAction", verdict)))
        clock.ms += 5 * 60_000
    reading = sink.driver.read()
    act = cooling.setpoint_action("demo", SETPOINT_OBJECT, reading.setpoint_c,
                                  cooling.Proposal(reading.setpoint_c + 0.5, cooling.RAISE, "r"), POLICY.cooling,
                                  clock.ms, inlet_c=reading.inlet_c)
    guard.on_proposed(act)
    assert [r for t, r in guard.sent if t == "actions.approved"][-1]["reason_codes"] == ["over_hourly_ramp"]
