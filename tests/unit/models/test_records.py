"""The record builders: each record they build is one its Avro schema accepts."""

import pytest

from opsloop.models.records import action_alarm, action_result, alarm, dead_letter
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.unit
ACTION = {"action_id": "a-1", "kind": "pcs_discharge", "target": "ess-1", "site": "demo", "setpoint_kw": 500.0,
          "reason": "peak", "expected_effect": "grid -500 kW", "created_ms": 1, "expires_ms": 2, "proposer": "peaks"}


def roundtrip(record_name: str, record: dict) -> dict:
    codec = Codec.default()
    return codec.decode_as(record_name, codec.encode(record_name, record))


def test_dead_letter_encodes_and_keeps_the_message_whole():
    record = dead_letter("t.alarms.raw", 3, 42, b"ups-1", b"\x00junk", "decode", "not avro", "dedup", 1000)
    assert roundtrip("DeadLetter", record) == record
    bare = dead_letter("x", 0, 0, None, None, "invalid", "NaN", "anomaly")
    assert roundtrip("DeadLetter", bare)["message_ts_ms"] is None


def test_dead_letter_of_a_large_message_is_cut_to_the_cap_with_sizes_and_hashes():
    import hashlib

    key, value = b"k" * 5000, bytes(range(256)) * 4096  # a 5 kB key and a 1 MiB value
    record = dead_letter("t.telemetry.raw", 0, 7, key, value, "decode", "x" * 10_000, "rollup", max_bytes=65_536)
    assert roundtrip("DeadLetter", record) == record
    assert record["truncated"] and len(record["key"]) == 1024 and len(record["key"]) + len(record["value"]) == 65_536
    assert record["value"] == value[:len(record["value"])] and record["key"] == key[:1024]
    assert (record["key_size"], record["value_size"]) == (5000, len(value))
    assert record["value_sha256"] == hashlib.sha256(value).hexdigest()
    assert record["key_sha256"] == hashlib.sha256(key).hexdigest()
    assert len(record["error"]) == 2000  # a reason is text for people
    whole = dead_letter("x", 0, 0, b"k", b"v", "unknown", "no such site", "dedup")
    assert not whole["truncated"] and (whole["key"], whole["value"], whole["value_size"]) == (b"k", b"v", 1)
    nothing = dead_letter("x", 0, 0, key, value, "undeliverable", "too large", "rollup", max_bytes=0)
    assert nothing["truncated"] and (nothing["key"], nothing["value"]) == (b"", b"")
    assert nothing["value_sha256"] == record["value_sha256"]


def test_alarm_encodes_with_defaults_and_attributes():
    raised = alarm(5, "demo", "ups-1", "ups", "opsloop.test", "U1", "on battery")
    assert roundtrip("Alarm", raised) == raised
    assert (raised["severity"], raised["state"], raised["attributes"]) == ("info", "raise", {})
    cleared = alarm(6, "demo", "ups-1", "ups", "opsloop.test", "U1", "back", severity="warning", state="clear",
                    attributes={"metric": "kw"})
    assert roundtrip("Alarm", cleared) == cleared


def test_action_alarm_names_the_action():
    record = action_alarm(ACTION, "pcs", "opsloop.guard", "ACTION_VERIFY_FAILED", "not verified", 9)
    assert roundtrip("Alarm", record) == record
    assert (record["device"], record["severity"], record["attributes"]) == (
        "ess-1", "major", {"action_id": "a-1", "kind": "pcs_discharge"})


@pytest.mark.parametrize("status, delta", [("executed", None), ("verified", -500.0), ("rejected", None)])
def test_action_result_encodes(status, delta):
    record = action_result(ACTION, status, "PCS holds -500 kW", "wrote", "pcs-sink", 7, delta)
    assert roundtrip("ActionResult", record) == record
    assert record["observed_delta_kw"] == delta


def test_unknown_status_is_refused_by_the_schema():
    with pytest.raises(ValueError):
        Codec.default().encode("ActionResult", action_result(ACTION, "maybe", "", "", "x", 1))
