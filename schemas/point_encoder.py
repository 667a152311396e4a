"""TelemetryPoints encoded at the rate a live source produces them.

A source sends the same few thousand series again and again: of a TelemetryPoint only ``ts_ms``
and ``value`` change from one poll to the next. ``PointEncoder`` encodes the constant strings of a
series once (``site``, ``device``, ``device_type``, ``metric``, then ``unit``, ``source``) and
joins them with the changing two, which is several times cheaper than a generic Avro writer per
record. The bytes are exactly the codec's single-object encoding: the encoder reads the field
order from the current schema and refuses to build if it is not the one written here, and it
checks its first encoding of every series against fastavro's.

>>> from opsloop.schemas.codec import Codec
>>> codec = Codec.default()
>>> encoder = PointEncoder(codec)
>>> point = {"ts_ms": 1_760_000_000_000, "site": "demo", "device": "gpu-1", "device_type": "gpu",
...          "metric": "gpu_power_kw", "value": 0.6, "unit": "kW", "source": "remote-write:prom"}
>>> encoder.encode(point) == codec.encode("TelemetryPoint", point)
True
"""

from __future__ import annotations

import struct

from opsloop.schemas.codec import MARKER, Codec

FIELDS = (("ts_ms", "long"), ("site", "string"), ("device", "string"), ("device_type", "string"),
          ("metric", "string"), ("value", "double"), ("unit", "string"), ("source", "string"))
_DOUBLE = struct.Struct("<d").pack


def varint(n: int) -> bytes:
    """Avro's long: zig-zag, then base-128 varint."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return varint(len(data)) + data


class PointEncoder:
    """Single-object Avro encodings of TelemetryPoints, the constant parts cached per series.

    ``max_series`` bounds the cache (series churn clears it rather than growing memory)."""

    def __init__(self, codec: Codec, max_series: int = 200_000):
        writer = codec.schema("TelemetryPoint")
        fields = tuple((f["name"], f["type"]) for f in writer.parsed["fields"])
        if fields != FIELDS:
            raise ValueError(f"TelemetryPoint's fields changed ({fields}); update PointEncoder.FIELDS and the "
                             f"order it writes them in")
        self.codec = codec
        self.header = MARKER + writer.fingerprint
        self.max_series = max_series
        self._series: dict[tuple, tuple[bytes, bytes]] = {}
        self._stamps: dict[int, bytes] = {}  # the header and ts_ms of a poll, shared by its points

    def encode(self, point: dict) -> bytes:
        series = (point["site"], point["device"], point["device_type"], point["metric"], point["unit"],
                  point["source"])
        parts = self._series.get(series)
        if parts is None:
            return self._first(series, point)
        ts = point["ts_ms"]
        stamp = self._stamps.get(ts)
        if stamp is None:
            if len(self._stamps) > 4096:
                self._stamps.clear()
            stamp = self._stamps[ts] = self.header + varint(ts)
        return b"".join((stamp, parts[0], _DOUBLE(point["value"]), parts[1]))

    def _first(self, series: tuple, point: dict) -> bytes:
        """The generic writer's encoding (it validates the record), and the series' parts kept when
        joining them gives the same bytes."""
        encoded = self.codec.encode("TelemetryPoint", point)
        site, device, device_type, metric, unit, source = series
        parts = (b"".join(map(_string, (site, device, device_type, metric))), _string(unit) + _string(source))
        joined = b"".join((self.header, varint(point["ts_ms"]), parts[0], _DOUBLE(float(point["value"])), parts[1]))
        if joined != encoded:
            raise AssertionError(f"PointEncoder disagrees with the codec for {series}")  # a schema change: fix here
        if len(self._series) >= self.max_series:
            self._series.clear()
        self._series[series] = parts
        return encoded
