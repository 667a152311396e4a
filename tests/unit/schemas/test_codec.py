"""The single-object Avro codec (schemas/codec.py)."""

import json
import shutil

import pytest
from fastavro.utils import generate_many

from opsloop.schemas.codec import HEADER_LEN, MARKER, Codec, DecodeError, load_schema, schema_fingerprint

pytestmark = pytest.mark.unit
CODEC = Codec.default()


@pytest.mark.parametrize("record", CODEC.records)
def test_every_record_type_round_trips(record):
    schema = load_schema(CODEC.schema_dir / f"{record}.avsc")
    for value in generate_many(schema, 5):
        data = CODEC.encode(record, value)
        assert data[:2] == MARKER and data[2:HEADER_LEN] == schema_fingerprint(schema)
        assert CODEC.decode(data) == (record, value)


def test_fingerprint_is_the_avro_spec_crc64_little_endian():
    # The Avro spec's test vector: the fingerprint of "null" is 7195948357588979594 as a signed long.
    assert int.from_bytes(schema_fingerprint("null"), "little", signed=True) == 7195948357588979594


POINT = {"ts_ms": 1, "site": "s", "device": "d", "device_type": "pdu", "metric": "it_kw",
         "value": 1.5, "unit": "kW", "source": "test"}


@pytest.mark.parametrize("data, reason", [
    (None, "null value"),
    (b"\xc3\x01abc", "shorter than"),
    (b"\x00\x00\x00\x00\x01" + b"x" * 20, "not Avro single-object"),
    (MARKER + b"\xff" * 8 + b"body", "unknown writer schema"),
])
def test_framing_errors_say_why(data, reason):
    with pytest.raises(DecodeError, match=reason):
        CODEC.decode(data)


def test_truncated_and_padded_bodies_are_errors():
    data = CODEC.encode("TelemetryPoint", POINT)
    with pytest.raises(DecodeError, match="corrupt TelemetryPoint"):
        CODEC.decode(data[:-3])
    with pytest.raises(DecodeError, match="trailing bytes"):
        CODEC.decode(data + b"\x00")


def test_decode_as_refuses_another_record_type():
    data = CODEC.encode("TelemetryPoint", POINT)
    with pytest.raises(DecodeError, match="expected a SiteSnapshot, got a TelemetryPoint"):
        CODEC.decode_as("SiteSnapshot", data)


def test_encode_refuses_a_value_that_does_not_fit():
    with pytest.raises((ValueError, TypeError)):
        CODEC.encode("TelemetryPoint", {**POINT, "value": "high"})


def test_data_written_with_a_released_version_is_read_as_the_current_one(tmp_path):
    """A producer still on v1 while the schema gained an optional field: consumers get the default."""
    shutil.copytree(CODEC.schema_dir, tmp_path / "schemas", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    current = load_schema(tmp_path / "schemas" / "TelemetryPoint.avsc")
    current["fields"].append({"name": "quality", "type": ["null", "string"], "default": None, "doc": "test"})
    (tmp_path / "schemas" / "TelemetryPoint.avsc").write_text(json.dumps(current))
    old_codec, new_codec = CODEC, Codec(tmp_path / "schemas")
    old_bytes = old_codec.encode("TelemetryPoint", POINT)
    assert new_codec.decode_as("TelemetryPoint", old_bytes) == {**POINT, "quality": None}
    assert new_codec.encode("TelemetryPoint", {**POINT, "quality": "good"}) != old_bytes


def test_confluent_framed_records_decode_through_the_registry_ids_the_resolver_names():
    import io
    import json as _json

    import fastavro

    from opsloop.models.records import telemetry_point
    from opsloop.schemas.codec import SCHEMA_DIR, Codec, DecodeError, load_schema

    codec = Codec()
    point = telemetry_point(1_700_000_000_000, "demo", "pdu-a1", "pdu", "it_kw", 40.0, "kW", "test")
    body = io.BytesIO()
    fastavro.schemaless_writer(body, codec.schema("TelemetryPoint").parsed, point)
    framed = b"\x00" + (7).to_bytes(4, "big") + body.getvalue()
    with pytest.raises(DecodeError, match="single-object"):  # no registry configured: refused as before
        codec.decode(framed)
    asked = []
    schema = load_schema(SCHEMA_DIR / "TelemetryPoint.avsc")
    codec.registry_schema = lambda schema_id: asked.append(schema_id) or _json.loads(_json.dumps(schema))
    assert codec.decode(framed) == ("TelemetryPoint", point)
    assert codec.decode(framed)[1] == point and asked == [7]  # each id is resolved once
    codec.registry_schema = lambda schema_id: {"type": "record", "name": "Other", "fields": []}
    with pytest.raises(DecodeError, match="opsloop does not know"):
        codec.decode(b"\x00" + (8).to_bytes(4, "big") + body.getvalue())
    with pytest.raises(DecodeError, match="5-byte Confluent header"):
        codec.decode(b"\x00\x00")
