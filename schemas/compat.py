"""Backward-compatibility check of schemas/ against their released versions.

A topic's consumers upgrade after its producers may have written with an older
release, so every current schema must be able to read data written with every
released version of itself (Avro's "backward" compatibility). The check uses
the reference ``avro`` package's reader/writer compatibility rules.

Run ``python -m opsloop.schemas.compat`` to check the installed schemas.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from opsloop.schemas.codec import SCHEMA_DIR, load_schema, record_names, released_versions


def parse(schema: dict) -> avro.schema.Schema:
    """Parse with the reference implementation (stricter than fastavro about names and defaults)."""
    return avro.schema.parse(json.dumps(schema))


def incompatibilities(reader: dict, writer: dict) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader``; empty when it can."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(parse(reader), parse(writer))
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    where = ", ".join(sorted(result.locations))
    return [f"at {where}: {message}" for message in sorted(result.messages)]


def check_all(schema_dir: Path = SCHEMA_DIR) -> dict[str, list[str]]:
    """Problems per ``Record vN`` pair; a record without any released version is a problem too."""
    problems: dict[str, list[str]] = {}
    for record in record_names(schema_dir):
        current = load_schema(schema_dir / f"{record}.avsc")
        released = released_versions(record, schema_dir)
        if not released:
            problems[record] = ["no released version under released/; copy the schema there as v1 when releasing"]
        for path in released:
            found = incompatibilities(current, load_schema(path))
            if found:
                problems[f"{record} {path.stem}"] = found
    return problems


def main() -> int:
    problems = check_all()
    for where, found in problems.items():
        for problem in found:
            print(f"{where}: {problem}")
    print("schemas: backward compatible" if not problems else f"schemas: {len(problems)} incompatible")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
