"""Confluent's wire format, the alternative to single-object encoding for deployments with a schema registry:
a zero magic byte, the registry's 4-byte big-endian schema id, then the Avro body. Subjects follow the
TopicNameStrategy (``<topic>-value``). Pure: the registry itself is reached by connectors/schema_registry.py."""

from __future__ import annotations

import io
import struct

import fastavro

from opsloop.schemas.codec import MAX_RECORD_BYTES, DecodeError, RecordTooLarge

MAGIC = 0
HEADER = struct.Struct(">bI")  # magic byte, schema id


def value_subject(topic: str) -> str:
    """The subject a topic's value schemas live under (TopicNameStrategy)."""
    return f"{topic}-value"


def encode(schema_id: int, parsed_schema, value: dict) -> bytes:
    out = io.BytesIO()
    out.write(HEADER.pack(MAGIC, schema_id))
    fastavro.schemaless_writer(out, parsed_schema, value)
    if out.tell() > MAX_RECORD_BYTES:
        raise RecordTooLarge(f"record of {out.tell():,} bytes exceeds the {MAX_RECORD_BYTES:,}-byte limit; refused")
    return out.getvalue()


def schema_id(data: bytes | None) -> int:
    """The writer schema's registry id of a framed message."""
    if data is None or len(data) < HEADER.size:
        raise DecodeError("message shorter than the 5-byte Confluent header")
    magic, found = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError(f"not the Confluent wire format: magic byte {magic}, expected 0")
    return found
