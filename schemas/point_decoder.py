"""TelemetryPoints decoded at the rate the rollup reads them.

The mirror of ``PointEncoder``: a source sends the same series again and again, so of a
TelemetryPoint's bytes only ``ts_ms`` and ``value`` change from one poll to the next. ``PointDecoder``
reads the framing and the two changing fields itself and looks the constant strings up by their bytes
(``site``, ``device``, ``device_type``, ``metric``; then ``unit``, ``source``), decoded once per
series. It gives exactly what ``Codec.decode_as("TelemetryPoint", ...)`` gives:

* it refuses to build unless the current schema's fields are the ones it reads, in that order;
* the first record of every series is decoded by the codec too and must agree field for field;
* anything it does not recognise as a well-formed current-version TelemetryPoint (another writer
  schema, a multi-byte string length, bad UTF-8, a truncated body, trailing bytes) goes to the codec,
  which decodes it or raises the codec's ``DecodeError``.

>>> from opsloop.schemas.codec import Codec
>>> codec = Codec.default()
>>> point = {"ts_ms": 1_760_000_000_000, "site": "demo", "device": "gpu-1", "device_type": "gpu",
...          "metric": "gpu_power_kw", "value": 0.6, "unit": "kW", "source": "remote-write:prom"}
>>> data = codec.encode("TelemetryPoint", point)
>>> decoder = PointDecoder(codec)
>>> decoder.decode(data) == point == decoder.decode(data)
True
"""

from __future__ import annotations

import math
import struct

from opsloop.schemas.codec import MARKER, MAX_RECORD_BYTES, Codec
from opsloop.schemas.point_encoder import FIELDS

_DOUBLE = struct.Struct("<d").unpack_from
HEADER = len(MARKER) + 8
STAMP = 6  # bytes of ts_ms's varint from mid-1970 to 2039: the ones cached


class _Unusual(Exception):
    """Not a record the fast path reads: the codec decides."""


def _strings(data: bytes, pos: int, count: int) -> tuple[int, list[str]]:
    """``count`` Avro strings from ``pos`` whose lengths fit one varint byte (under 64 bytes); (end, strings)."""
    out = []
    for _ in range(count):
        z = data[pos]
        if z & 0x81:  # a length of 64 bytes or more, or negative: rare, so left to the codec
            raise _Unusual
        end = pos + 1 + (z >> 1)
        if end > len(data):
            raise _Unusual
        out.append(data[pos + 1:end].decode())  # strict UTF-8, as fastavro
        pos = end
    return pos, out


class PointDecoder:
    """Decodes TelemetryPoints of the current schema, constant strings cached per series.

    ``max_series`` bounds each cache (series churn clears it rather than growing memory)."""

    def __init__(self, codec: Codec, max_series: int = 200_000):
        writer = codec.schema("TelemetryPoint")
        fields = tuple((f["name"], f["type"]) for f in writer.parsed["fields"])
        if fields != FIELDS:
            raise ValueError(f"TelemetryPoint's fields changed ({fields}); update PointDecoder to read them")
        self.codec = codec
        self.header = MARKER + writer.fingerprint
        self.max_series = max_series
        self._heads: dict[bytes, tuple[str, str, str, str]] = {}  # bytes of site..metric → the strings
        self._tails: dict[bytes, tuple[str, str]] = {}  # bytes of unit, source (to the end) → the strings
        self._stamps: dict[bytes, int] = {}  # a whole varint of STAMP bytes → ts_ms
        self.fast = 0  # records decoded here, not by the codec (for tests and the bench)

    def decode(self, data: bytes | None) -> dict:
        """The TelemetryPoint in ``data``; raises ``DecodeError`` as ``Codec.decode_as`` does."""
        if data is None or len(data) > MAX_RECORD_BYTES or data[:HEADER] != self.header:
            return self.codec.decode_as("TelemetryPoint", data)
        try:
            # ts_ms: zig-zag varint, the points of one poll share it
            ts = self._stamps.get(data[HEADER:HEADER + STAMP])
            if ts is not None:
                pos = HEADER + STAMP
            else:
                pos, ts = self._stamp(data)
            # site, device, device_type, metric: their bytes run to the double, found by the four lengths
            start, end = pos, pos
            for _ in range(4):
                z = data[end]
                if z & 0x81:
                    raise _Unusual
                end += 1 + (z >> 1)
            head = self._heads.get(data[start:end])
            tail = self._tails.get(data[end + 8:])
            if head is None or tail is None or end + 8 > len(data):
                return self._first(data)
            value = _DOUBLE(data, end)[0]
        except (IndexError, _Unusual):
            return self.codec.decode_as("TelemetryPoint", data)
        self.fast += 1
        return {"ts_ms": ts, "site": head[0], "device": head[1], "device_type": head[2], "metric": head[3],
                "value": value, "unit": tail[0], "source": tail[1]}

    def _stamp(self, data: bytes) -> tuple[int, int]:
        """(end, ts_ms) of the varint after the header; one of ``STAMP`` bytes is kept for the next points."""
        pos, shift, z = HEADER, 0, 0
        while True:
            b = data[pos]
            z |= (b & 0x7F) << shift
            pos += 1
            if b < 0x80:
                break
            shift += 7
            if shift > 56:  # past 9 bytes: left to the codec
                raise _Unusual
        ts = (z >> 1) ^ -(z & 1)
        if pos == HEADER + STAMP:  # the key is a whole varint: the same bytes are the same time
            if len(self._stamps) >= 4096:
                self._stamps.clear()
            self._stamps[data[HEADER:pos]] = ts
        return pos, ts

    def _first(self, data: bytes) -> dict:
        """A series (or unit and source) not seen yet: the codec decodes it, and its parts are kept when the
        fast path reads the same record."""
        point = self.codec.decode_as("TelemetryPoint", data)  # raises DecodeError on a bad record
        try:
            pos = HEADER
            while data[pos] & 0x80:
                pos += 1
            head_at = pos + 1
            end, head = _strings(data, head_at, 4)
            tail_end, tail = _strings(data, end + 8, 2)
        except (IndexError, UnicodeDecodeError, _Unusual):
            return point  # the codec read it; the fast path will not
        if tail_end != len(data):
            return point
        mine = dict(zip(("site", "device", "device_type", "metric"), head)) | dict(zip(("unit", "source"), tail))
        if any(point[k] != v for k, v in mine.items()) or not _same(point["value"], _DOUBLE(data, end)[0]):
            raise AssertionError(f"PointDecoder disagrees with the codec on {point}")  # a schema change: fix here
        for cache, key, parts in ((self._heads, data[head_at:end], tuple(head)),
                                  (self._tails, data[end + 8:], tuple(tail))):
            if len(cache) >= self.max_series:
                cache.clear()
            cache[key] = parts
        return point


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))
