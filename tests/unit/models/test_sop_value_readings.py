"""Members that only report a value after the root alarm."""

from __future__ import annotations

import pytest

from opsloop.config.assets import sop_texts
from opsloop.models.narrate import Narration
from opsloop.models.sops import parse_corpus
from opsloop.models.value_readings import reports_only_a_value

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def narration():
    return Narration(parse_corpus(sop_texts()))


def test_a_polled_value_with_no_condition_only_reports_a_value():
    assert reports_only_a_value({"code": "U_LL_AVG", "text": "15.07 kV 50.00 Hz"})
    assert reports_only_a_value({"code": "INLET_T", "text": "Inlet 23.0 C"})
    assert reports_only_a_value({"code": "upsEstimatedMinutesRemaining", "text": "21"})
    assert not reports_only_a_value({"code": "INLET_T_HI", "text": "Inlet 36.4 C"})  # the code states a condition
    assert not reports_only_a_value({"code": "OUTLET_I", "text": "Outlet 7 19.6 A > 16 A"})  # a limit crossed
    assert not reports_only_a_value({"code": "CW_SUPPLY_T", "text": "Condenser water 36.2 C (setpoint 29 C)"})
    assert not reports_only_a_value({"code": "UPS_STATE", "text": "On battery"})  # a state, no value
    assert not reports_only_a_value({"code": "PUMP", "text": "Pump 2 drive fault 2310"})
    assert not reports_only_a_value({"code": "STATUS", "text": ""})


def test_a_name_with_digits_is_neither_a_label_word_nor_a_value():
    # The rack's name "y02h07" does not make the label too long to be a reading ...
    assert reports_only_a_value({"code": "INLET_T", "text": "Rack y02h07 inlet 22.4 C"})
    # ... nor is a name with a digit a value: a trap's name reports no reading.
    assert not reports_only_a_value({"code": "coldStart", "text": "SNMPv2-MIB::coldStart"})
    assert not reports_only_a_value({"code": "PSU", "text": "PS1 PS2 redundancy"})
    # A named port that changed state reports a change, not a value.
    assert not reports_only_a_value({"code": "MLX5-PORT-STATE", "text": "mlx5_3 port 1 state change"})


def test_a_value_polled_after_the_root_is_not_its_cause(narration):
    def incident(meter_text: str, after_s: int) -> dict:
        members = [{"fingerprint": "r", "device": "ups-c2", "device_type": "ups", "code": "upsAlarmOnBattery",
                    "count": 1, "first_seen_ms": 1_000_000, "text": "UPS C2 on battery; load 38 %", "log_line": ""},
                   {"fingerprint": "m", "device": "meter-1", "device_type": "meter", "code": "U_LL_AVG", "count": 1,
                    "first_seen_ms": 1_000_000 + after_s * 1000, "text": meter_text, "log_line": ""}]
        return {"incident_id": "x", "site": "s", "state": "open", "opened_ms": 1_000_000, "updated_ms": 1_000_000,
                "resolved_ms": None, "root_device": "ups-c2", "root_device_type": "ups",
                "root_code": "upsAlarmOnBattery", "severity": "major", "member_count": 2, "members": members,
                "summary": ""}

    def cause(meter_text: str, after_s: int) -> str:
        query = narration.query.run(incident=incident(meter_text, after_s))
        return narration.retriever.upstream_cause(query["root_alarm"], query["member_alarms"])

    assert cause("15.07 kV 50.00 Hz", 20) == ""  # the state of the supply after the root, not a fault
    assert cause("15.07 kV 50.00 Hz", -20) == "SOP-PWR-013"  # seen before the root: still read as before
