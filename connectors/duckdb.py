"""The DuckDB file: one table per catalog topic, the stored offsets, the views; queries and text tables.

Columns come from the record's Avro schema (arrays, maps and nested records as JSON text),
followed by the Kafka coordinates ``_partition``, ``_offset`` and ``_kafka_ts_ms``. A batch of
rows and the next offset of each partition (table ``_kafka_offsets``) are stored in one
transaction (``store_batch``). The views agent (streams/views.py) is the only writer.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
from fastavro.schema import expand_schema

from opsloop.config.assets import VIEWS_SQL
from opsloop.config.catalog import TopicSpec, load_catalog
from opsloop.schemas.codec import Codec

PRIMITIVES = {"string": pa.string(), "long": pa.int64(), "int": pa.int32(), "double": pa.float64(),
              "float": pa.float32(), "boolean": pa.bool_(), "bytes": pa.binary()}
SQL_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float64(): "DOUBLE",
             pa.float32(): "FLOAT", pa.bool_(): "BOOLEAN", pa.binary(): "BLOB"}
KAFKA_COLUMNS = [pa.field("_partition", pa.int32(), False), pa.field("_offset", pa.int64(), False),
                 pa.field("_kafka_ts_ms", pa.int64())]
JSON_TEXT = {b"avro": b"json"}  # field metadata: the value is stored as JSON text
OFFSETS_DDL = ("CREATE TABLE IF NOT EXISTS _kafka_offsets (topic VARCHAR, partition INTEGER, "
               "next_offset BIGINT, PRIMARY KEY (topic, partition))")
MAX_CELL = 60


def table_name(topic: str) -> str:
    """DuckDB table of a catalog topic: ``telemetry.site`` -> ``telemetry_site``."""
    return topic.replace(".", "_").replace("-", "_")


def _column_type(avro) -> tuple[pa.DataType, bool, bool]:
    """(Arrow type, nullable, stored as JSON text) of one expanded Avro field type."""
    if isinstance(avro, list):
        rest = [branch for branch in avro if branch != "null"]
        if len(rest) == 1:
            kind, _, as_json = _column_type(rest[0])
            return kind, len(avro) > 1, as_json
        return pa.string(), "null" in avro, True  # a wider union keeps its shape as JSON
    if isinstance(avro, dict):
        if "logicalType" in avro:  # fastavro would hand us datetimes, not the base type
            raise ValueError(f"logical type {avro['logicalType']} has no column mapping yet")
        kind = avro["type"]
        if kind in ("record", "array", "map"):
            return pa.string(), False, True
        return (pa.string() if kind == "enum" else pa.binary() if kind == "fixed" else PRIMITIVES[kind]), False, False
    return PRIMITIVES[avro], False, False


def arrow_schema(record: str, codec: Codec | None = None) -> pa.Schema:
    """Arrow schema of a record's table: one column per Avro field, then the Kafka coordinates."""
    avro = expand_schema((codec or Codec.default()).schema(record).parsed)  # named references inlined
    fields = []
    for field in avro["fields"]:
        kind, nullable, as_json = _column_type(field["type"])
        fields.append(pa.field(field["name"], kind, nullable, metadata=JSON_TEXT if as_json else None))
    return pa.schema(fields + KAFKA_COLUMNS)


def _create_table(con, table: str, schema: pa.Schema) -> None:
    cols = ", ".join(f'"{f.name}" {SQL_TYPES[f.type]}{"" if f.nullable else " NOT NULL"}' for f in schema)
    con.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({cols})')
    have = {row[0] for row in con.execute("SELECT column_name FROM information_schema.columns "
                                          "WHERE table_schema = 'main' AND table_name = ?", [table]).fetchall()}
    for f in schema:  # a field added to the schema later (with a default): old rows get NULL
        if f.name not in have:
            con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{f.name}" {SQL_TYPES[f.type]}')


def open_db(path, read_only: bool = False, specs: dict[str, TopicSpec] | None = None,
            codec: Codec | None = None) -> duckdb.DuckDBPyConnection:
    """Connect to the DuckDB file; a writer also creates every table, ``_kafka_offsets`` and the views."""
    if read_only:
        return duckdb.connect(str(path), read_only=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    for spec in (specs or load_catalog()).values():  # all topics: the views join across them
        _create_table(con, table_name(spec.name), arrow_schema(spec.record, codec))
    con.execute(OFFSETS_DDL)
    con.execute(VIEWS_SQL.read_text(encoding="utf-8"))
    return con


def stored_offsets(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, int], int]:
    """(topic, partition) → the next offset to read, as the last stored batch left it."""
    return {(topic, part): offset for topic, part, offset in
            con.execute("SELECT topic, partition, next_offset FROM _kafka_offsets").fetchall()}


def store_batch(con: duckdb.DuckDBPyConnection, tables: dict[str, pa.Table], next_offsets: dict[tuple[str, int], int]
                ) -> None:
    """Insert Arrow tables (table name → rows) and the next offset of each partition in one transaction."""
    offsets = pa.table({"topic": pa.array([t for t, _ in next_offsets], pa.string()),
                        "partition": pa.array([p for _, p in next_offsets], pa.int32()),
                        "next_offset": pa.array(list(next_offsets.values()), pa.int64())})
    con.begin()
    try:
        for table, rows in tables.items():
            con.register(f"_arrow_{table}", rows)
            con.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM "_arrow_{table}"')
            con.unregister(f"_arrow_{table}")
        con.register("_arrow_offsets", offsets)
        con.execute("INSERT OR REPLACE INTO _kafka_offsets SELECT * FROM _arrow_offsets")
        con.unregister("_arrow_offsets")
        con.commit()
    except BaseException:
        con.rollback()
        raise


def query(path, sql: str) -> tuple[list[str], list[tuple]]:
    """Run one query on the DuckDB file, read-only; returns (column names, rows)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"no DuckDB file at {path}: the views agent writes it "
                                "(opsloop worker --agents views); set OPSLOOP_DUCKDB_PATH to read another")
    con = open_db(path, read_only=True)
    try:
        cur = con.execute(sql)
        return ([d[0] for d in cur.description], cur.fetchall()) if cur.description else ([], [])
    finally:
        con.close()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    text = str(value).replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…"


def format_table(columns: list[str], rows: list[tuple], max_rows: int = 50) -> str:
    """A fixed-width text table: numbers right-aligned, NULL empty, long cells cut."""
    shown = rows[:max_rows]
    cells = [[_cell(v) for v in row] for row in shown]
    numeric = [all(isinstance(row[i], (int, float, Decimal)) and not isinstance(row[i], bool)
                   for row in shown if row[i] is not None) for i in range(len(columns))]
    widths = [max([len(col)] + [len(row[i]) for row in cells]) for i, col in enumerate(columns)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    lines = [line(columns), "  ".join("-" * w for w in widths)] + [line(row) for row in cells]
    count = f"{len(rows)} row{'' if len(rows) == 1 else 's'}"
    lines.append(f"({count}, first {max_rows} shown)" if len(rows) > max_rows else f"({count})")
    return "\n".join(lines)
