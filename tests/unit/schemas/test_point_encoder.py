"""PointEncoder (schemas/point_encoder.py): the cached encodings are the codec's bytes."""

import math

import pytest

from opsloop.schemas.codec import Codec
from opsloop.schemas.point_encoder import PointEncoder, varint

pytestmark = pytest.mark.unit
CODEC = Codec.default()


def point(**over):
    return {"ts_ms": 1_760_000_000_000, "site": "demo", "device": "gpu-1", "device_type": "gpu",
            "metric": "gpu_power_kw", "value": 0.6, "unit": "kW", "source": "remote-write:prom", **over}


@pytest.mark.parametrize("changes", [
    [{}, {"value": 0.7}, {"ts_ms": 1_760_000_015_000}, {"value": -1e300, "ts_ms": 0}],
    [{"device": "pdu-ä1", "unit": "°C"}, {"device": "pdu-ä1", "unit": "°C", "value": 3}],
    [{"ts_ms": -5}, {"ts_ms": -5, "value": math.inf}, {"ts_ms": 2**62}],
    [{"source": "x" * 300}, {"source": "x" * 300, "value": 1.25}],
])
def test_every_encoding_is_the_codecs_and_decodes_back(changes):
    encoder = PointEncoder(CODEC)
    for change in changes * 2:  # the second time from the cache
        p = point(**change)
        data = encoder.encode(p)
        assert data == CODEC.encode("TelemetryPoint", p)
        assert CODEC.decode_as("TelemetryPoint", data) == {**p, "value": float(p["value"])}


def test_a_bad_record_is_refused_by_the_codec_not_encoded():
    with pytest.raises((ValueError, TypeError)):
        PointEncoder(CODEC).encode(point(device=None))


def test_varint_is_avros_zigzag_long():
    assert [varint(n) for n in (0, -1, 1, -64, 64)] == [b"\x00", b"\x01", b"\x02", b"\x7f", b"\x80\x01"]


def test_the_series_cache_is_bounded():
    encoder = PointEncoder(CODEC, max_series=3)
    for i in range(10):
        encoder.encode(point(device=f"gpu-{i}"))
    assert len(encoder._series) <= 3
