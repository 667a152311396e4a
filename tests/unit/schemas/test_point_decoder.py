"""PointDecoder (schemas/point_decoder.py): what the codec decodes, field for field, and what it refuses, refused."""

import json
import math
import shutil
import struct

import pytest
from hypothesis import given, settings, strategies as st

from opsloop.schemas.codec import SCHEMA_DIR, Codec, DecodeError
from opsloop.schemas.point_decoder import PointDecoder

pytestmark = pytest.mark.unit
CODEC = Codec.default()


def point(**over):
    return {"ts_ms": 1_760_000_000_000, "site": "demo", "device": "gpu-1", "device_type": "gpu",
            "metric": "gpu_power_kw", "value": 0.6, "unit": "kW", "source": "remote-write:prom", **over}


def same(a: dict, b: dict) -> bool:
    """Equal, NaN equal to NaN (bit for bit: the value's double is compared)."""
    pack = struct.Struct("<d").pack
    return a.keys() == b.keys() and all(pack(a[k]) == pack(b[k]) if k == "value" else a[k] == b[k] for k in a)


def outcome(decode, data):
    try:
        return "ok", decode(data)
    except DecodeError as exc:
        return "refused", exc.reason


text = st.text(max_size=80)  # past 63 bytes a string's length takes two varint bytes: the codec's path


@settings(max_examples=300, deadline=None)
@given(ts=st.integers(-2**63, 2**63 - 1), value=st.floats(allow_nan=True, allow_infinity=True),
       site=text, device=text, unit=text, source=text)
def test_every_point_decodes_as_the_codec_decodes_it(ts, value, site, device, unit, source):
    decoder = PointDecoder(CODEC)
    data = CODEC.encode("TelemetryPoint", point(ts_ms=ts, value=value, site=site, device=device, unit=unit,
                                                source=source))
    expected = CODEC.decode_as("TelemetryPoint", data)
    for _ in range(2):  # the first time checked against the codec, the second from the caches
        assert same(decoder.decode(data), expected)


def test_a_repeated_series_takes_the_fast_path():
    decoder = PointDecoder(CODEC)
    for i in range(100):
        p = point(ts_ms=1_760_000_000_000 + 1000 * i, value=float(i))
        assert decoder.decode(CODEC.encode("TelemetryPoint", p)) == p
    assert decoder.fast == 99  # all but the first, which the codec decoded
    assert len(decoder._stamps) == 100  # each time's varint, kept for the other points of its poll


def test_times_of_every_varint_length_decode_from_the_stamp_cache_or_not():
    decoder = PointDecoder(CODEC)
    for ts in [0, 1, -1, 2**34 - 1, 2**34, 1_760_000_000_000, 2**41 - 1, 2**41, -2**41, 2**62, -2**63, 2**63 - 1]:
        data = CODEC.encode("TelemetryPoint", point(ts_ms=ts))
        assert [decoder.decode(data)["ts_ms"] for _ in range(2)] == [ts, ts]
    assert set(decoder._stamps.values()) == {2**34, 1_760_000_000_000, 2**41 - 1, -2**41}  # six-byte varints only


def test_a_damaged_record_is_refused_as_the_codec_refuses_it():
    decoder = PointDecoder(CODEC)
    data = CODEC.encode("TelemetryPoint", point())
    decoder.decode(data)  # the series is cached: damage must not slip through the fast path
    damaged = [data[:n] for n in range(len(data))] + [data + b"\x00", data + data, None, b""]
    damaged += [data[:i] + bytes([b]) + data[i + 1:] for i in range(len(data)) for b in (0x00, 0x01, 0x7F, 0x80, 0xFF)]
    for bad in damaged:
        mine, codecs = outcome(decoder.decode, bad), outcome(lambda d: CODEC.decode_as("TelemetryPoint", d), bad)
        assert mine[0] == codecs[0], bad
        assert same(mine[1], codecs[1]) if mine[0] == "ok" else mine[1] == codecs[1], bad


def test_another_record_type_is_refused_as_the_codec_refuses_it():
    # another writer schema's header, then a TelemetryPoint's body
    framed = b"\xc3\x01" + CODEC.schema("SourceHealth").fingerprint + CODEC.encode("TelemetryPoint", point())[10:]
    with pytest.raises(DecodeError) as mine:
        PointDecoder(CODEC).decode(framed)
    with pytest.raises(DecodeError) as codecs:
        CODEC.decode_as("TelemetryPoint", framed)
    assert mine.value.reason == codecs.value.reason


def test_it_refuses_to_start_when_the_schema_changes(tmp_path):
    schema = json.loads((SCHEMA_DIR / "TelemetryPoint.avsc").read_text())
    schema["fields"][1], schema["fields"][2] = schema["fields"][2], schema["fields"][1]  # site and device swapped
    (tmp_path / "TelemetryPoint.avsc").write_text(json.dumps(schema))
    with pytest.raises(ValueError, match="fields changed"):
        PointDecoder(Codec(tmp_path))
    shutil.copy(SCHEMA_DIR / "TelemetryPoint.avsc", tmp_path / "TelemetryPoint.avsc")
    assert PointDecoder(Codec(tmp_path)).decode(Codec(tmp_path).encode("TelemetryPoint", point())) == point()


def test_the_series_caches_are_bounded():
    decoder = PointDecoder(CODEC, max_series=3)
    for i in range(10):
        decoder.decode(CODEC.encode("TelemetryPoint", point(device=f"gpu-{i}", source=f"s-{i}")))
    assert len(decoder._heads) <= 3 and len(decoder._tails) <= 3


def test_nan_and_infinities_come_through_for_the_rollup_to_refuse():
    decoder = PointDecoder(CODEC)
    for value in (math.nan, math.inf, -math.inf, 1e308):
        data = CODEC.encode("TelemetryPoint", point(value=value))
        assert same(decoder.decode(data), CODEC.decode_as("TelemetryPoint", data))
        assert same(decoder.decode(data), point(value=value))
