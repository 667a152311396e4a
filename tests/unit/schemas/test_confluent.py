import io

import fastavro
import pytest

from opsloop.schemas import confluent
from opsloop.schemas.codec import Codec, DecodeError

pytestmark = pytest.mark.unit


def test_frame_is_magic_zero_then_big_endian_id_then_the_avro_body():
    schema = Codec.default().schema("TelemetryPoint").parsed
    point = {"ts_ms": 1, "site": "demo", "device": "pdu-a1", "device_type": "pdu", "metric": "it_kw",
             "value": 4.5, "unit": "kW", "source": "test"}
    data = confluent.encode(0x01020304, schema, point)
    assert data[:5] == b"\x00\x01\x02\x03\x04"
    assert confluent.schema_id(data) == 0x01020304
    assert fastavro.schemaless_reader(io.BytesIO(data[5:]), schema, None) == point


def test_single_object_messages_are_not_taken_for_the_confluent_format():
    single = Codec.default().encode("TelemetryPoint", {"ts_ms": 1, "site": "s", "device": "d", "device_type": "pdu",
                                                       "metric": "it_kw", "value": 1.0, "unit": "kW", "source": "t"})
    with pytest.raises(DecodeError, match="magic byte"):
        confluent.schema_id(single)
    with pytest.raises(DecodeError):
        confluent.schema_id(b"\x00\x01")


def test_subject_follows_the_topic_name_strategy():
    assert confluent.value_subject("prod.telemetry.raw") == "prod.telemetry.raw-value"
