"""The one Avro codec every agent and connector uses.

Messages use the Avro specification's single-object encoding: the marker
``C3 01``, the writer schema's 8-byte CRC-64-AVRO fingerprint (little endian),
then the binary body. Any consumer holding ``schemas/`` can decode a message
without a registry, and messages written with a released older version of a
schema are resolved to the current one.

fastavro does the per-message work; this module only frames and looks up.

>>> codec = Codec.default()
>>> point = {"ts_ms": 959990400000, "site": "demo", "device": "grid-meter-1",
...          "device_type": "grid_meter", "metric": "grid_kw", "value": 28014.0,
...          "unit": "kW", "source": "replay"}
>>> data = codec.encode("TelemetryPoint", point)
>>> data[:2]
b'\\xc3\\x01'
>>> codec.decode_as("TelemetryPoint", data) == point
True
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

MARKER = b"\xc3\x01"
HEADER_LEN = len(MARKER) + 8
CONFLUENT_MAGIC, CONFLUENT_HEADER_LEN = b"\x00", 5  # Confluent wire format: magic byte, 4-byte registry id
# The largest record encoded or decoded: the producers' default message.max.bytes (1,000,000) with room for the
# key and headers; a bigger one is refused here with a clear error, not by the broker after a retry loop.
MAX_RECORD_BYTES = 1_000_000
SCHEMA_DIR = Path(__file__).resolve().parent
NAMESPACE = "io.opsloop"


class RecordTooLarge(ValueError):
    """A record whose encoding exceeds ``MAX_RECORD_BYTES``."""


class DecodeError(ValueError):
    """A message that cannot be decoded; ``reason`` says why in plain words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class WriterSchema:
    """A schema messages may have been written with."""

    record: str  # short record name, e.g. "TelemetryPoint"
    version: str  # "current" or the released version, e.g. "v1"
    parsed: Any
    fingerprint: bytes


def schema_fingerprint(schema: dict) -> bytes:
    """CRC-64-AVRO fingerprint of the schema's parsing canonical form, as framed on the wire."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def load_schema(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def record_names(schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Short names of the current record types (one ``.avsc`` per record)."""
    return sorted(p.stem for p in schema_dir.glob("*.avsc"))


def released_versions(record: str, schema_dir: Path = SCHEMA_DIR) -> list[Path]:
    """Released versions of a record's schema, oldest first (``released/<Record>/vN.avsc``)."""
    paths = (schema_dir / "released" / record).glob("v*.avsc")
    return sorted(paths, key=lambda p: int(p.stem[1:]))


class Codec:
    """Encodes and decodes opsloop records with single-object Avro framing."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR):
        self.schema_dir = Path(schema_dir)
        self._current: dict[str, WriterSchema] = {}
        self._writers: dict[bytes, WriterSchema] = {}
        # Confluent wire format (``schemas/confluent.py``): a registry id -> the writer schema it names.
        # ``registry_schema`` (set by connectors/schema_registry.py) returns the schema an id names.
        self._registry_ids: dict[int, WriterSchema] = {}
        self.registry_schema: Callable[[int], dict] | None = None
        for record in record_names(self.schema_dir):
            current = self._add(record, "current", self.schema_dir / f"{record}.avsc")
            self._current[record] = current
            for path in released_versions(record, self.schema_dir):
                self._add(record, path.stem, path)

    _default: "Codec | None" = None

    @classmethod
    def default(cls) -> "Codec":
        """The codec over the installed ``schemas/``, built once per process."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    def _add(self, record: str, version: str, path: Path) -> WriterSchema:
        schema = load_schema(path)
        parsed = fastavro.parse_schema(schema, _write_hint=False)
        fp = schema_fingerprint(schema)
        known = self._writers.get(fp)
        if known is not None and known.record != record:
            raise ValueError(f"{path}: same fingerprint as {known.record} {known.version}")
        writer = known or WriterSchema(record, version, parsed, fp)
        self._writers.setdefault(fp, writer)
        return writer

    @property
    def records(self) -> list[str]:
        return sorted(self._current)

    def schema(self, record: str) -> WriterSchema:
        try:
            return self._current[record]
        except KeyError:
            raise KeyError(f"no schema named {record!r}; known: {', '.join(self.records)}") from None

    def encode(self, record: str, value: dict) -> bytes:
        """Encode with the current schema of ``record``; raises ValueError on a bad value, ``RecordTooLarge``
        beyond ``MAX_RECORD_BYTES``."""
        writer = self.schema(record)
        out = io.BytesIO()
        out.write(MARKER)
        out.write(writer.fingerprint)
        fastavro.schemaless_writer(out, writer.parsed, value)
        if out.tell() > MAX_RECORD_BYTES:
            raise RecordTooLarge(f"{record} record of {out.tell():,} bytes exceeds the {MAX_RECORD_BYTES:,}-byte "
                                 "limit; refused")
        return out.getvalue()

    def decode(self, data: bytes | None) -> tuple[str, dict]:
        """Decode any opsloop message; returns (record name, value in the current schema)."""
        if data is None:
            raise DecodeError("empty message (null value)")
        if len(data) > MAX_RECORD_BYTES:
            raise DecodeError(f"message of {len(data):,} bytes exceeds the {MAX_RECORD_BYTES:,}-byte record limit")
        if data[:1] == CONFLUENT_MAGIC and self.registry_schema is not None:
            return self._decode_with(self._registry_writer(data), data, CONFLUENT_HEADER_LEN)
        if len(data) < HEADER_LEN:
            raise DecodeError(f"message of {len(data)} bytes is shorter than the {HEADER_LEN}-byte header")
        if data[:2] != MARKER:
            raise DecodeError(f"not Avro single-object encoding: starts with {bytes(data[:2]).hex()}, expected c301")
        writer = self._writers.get(bytes(data[2:HEADER_LEN]))
        if writer is None:
            raise DecodeError(f"unknown writer schema fingerprint {bytes(data[2:HEADER_LEN]).hex()}")
        return self._decode_with(writer, data, HEADER_LEN)

    def _registry_writer(self, data: bytes) -> WriterSchema:
        """The writer schema a Confluent-framed message names: one of ours, matched by fingerprint."""
        if len(data) < CONFLUENT_HEADER_LEN:
            raise DecodeError(f"message of {len(data)} bytes is shorter than the 5-byte Confluent header")
        schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_LEN], "big")
        writer = self._registry_ids.get(schema_id)
        if writer is None:
            try:
                schema = self.registry_schema(schema_id)
            except Exception as exc:  # the registry is down or does not know the id: the message stays undecoded
                raise DecodeError(f"schema id {schema_id} not resolved by the registry: {exc}") from exc
            writer = self._writers.get(schema_fingerprint(schema))
            if writer is None:
                raise DecodeError(f"schema id {schema_id} names a schema opsloop does not know "
                                  f"({str(schema.get('name', '?'))[:60]})")
            self._registry_ids[schema_id] = writer
        return writer

    def _decode_with(self, writer: WriterSchema, data: bytes, header_len: int) -> tuple[str, dict]:
        current = self._current[writer.record]
        body = io.BytesIO(data)
        body.seek(header_len)
        reader = None if writer is current else current.parsed
        try:
            value = fastavro.schemaless_reader(body, writer.parsed, reader)
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
            raise DecodeError(f"corrupt {writer.record} body: {type(exc).__name__}: {exc}") from exc
        if body.tell() != len(data):
            raise DecodeError(f"{len(data) - body.tell()} trailing bytes after a {writer.record} record")
        return writer.record, value

    def decode_as(self, record: str, data: bytes | None) -> dict:
        """Decode a message that must be a ``record``; anything else is a DecodeError."""
        name, value = self.decode(data)
        if name != record:
            raise DecodeError(f"expected a {record}, got a {name}")
        return value
