"""The DuckDB file: one table per catalog topic, the stored offsets, the views; queries and text tables.

Columns come from the record's Avro schema (arrays, maps and nested records as JSON text),
followed by the Kafka coordinates ``_partition``, ``_offset`` and ``_kafka_ts_ms``. A batch of
rows and the next offset of each partition (table ``_kafka_offsets``) are stored in one
transaction (``store_batch``). The views agent (streams/views.py) is the only writer.

Beside the topic tables the writer keeps a few derived tables (``DERIVED``: per-minute site power, each
action's latest proposal, verdict and result, each incident's, narration's, alarm's and agent instance's
latest state) that config/views.sql declares and its views read. Each
batch updates them for the keys it touches, in the batch's transaction, so a page's query reads prepared
rows instead of recomputing every record's window function; a writer that finds one missing (a file from
an older version) creates it and fills it from the topic tables.
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

# Per-minute site power for the minutes the batch ({delta}) touches, recomputed from every window of those
# minutes (the latest emission of each window wins); $1..$2: the batch's window_start_ms range, for zone maps.
_SITE_POWER = """
WITH keys AS (SELECT DISTINCT site, date_trunc('minute', event_ts(window_start_ms)) AS minute FROM {delta}
              WHERE event_ts(window_start_ms) IS NOT NULL),
windows AS (SELECT t.site, t.window_start_ms, t.grid_kw, t.it_kw, t.facility_kw, t.pue, t.ess_soc_pct, t.ess_kw,
                   t.gpu_kw, date_trunc('minute', event_ts(t.window_start_ms)) AS minute
            FROM telemetry_site t WHERE t.window_start_ms BETWEEN $1 AND $2
            QUALIFY row_number() OVER (PARTITION BY t.site, t.window_start_ms ORDER BY t._partition DESC,
                                       t._offset DESC) = 1)
INSERT OR REPLACE INTO site_power_minute
SELECT site, minute, avg(grid_kw), avg(it_kw), avg(facility_kw),
       sum(facility_kw) FILTER (WHERE pue IS NOT NULL) / sum(it_kw) FILTER (WHERE pue IS NOT NULL),
       avg(ess_soc_pct), avg(ess_kw), avg(gpu_kw), count(*)
FROM windows JOIN keys USING (site, minute)
GROUP BY site, minute
"""


def _latest(table: str, key: str, columns: str, order: tuple[str, ...], key_expr: str | None = None) -> str:
    """Upsert into ``table`` the batch's latest row per ``key`` (``key_expr`` of the record) where it is later (by
    ``order``, descending, as the views' QUALIFY clauses order) than the stored one."""
    newer = " OR ".join("(" + " AND ".join([f"d.{o} = s.{o}" for o in order[:i]] + [f"d.{order[i]} > s.{order[i]}"])
                        + ")" for i in range(len(order)))
    return (f"INSERT OR REPLACE INTO {table} BY NAME SELECT d.* FROM (SELECT {key_expr or key} AS {key}, {columns}, "
            f"{', '.join(order)} FROM {{delta}} QUALIFY row_number() OVER (PARTITION BY {key_expr or key} ORDER BY "
            f"{', '.join(o + ' DESC' for o in order)}) = 1) d LEFT JOIN {table} s USING ({key}) "
            f"WHERE s.{key} IS NULL OR {newer}")


# topic table -> the derived tables it feeds: (table, SQL with {delta}, whether it takes the time range)
DERIVED: dict[str, list[tuple[str, str, bool]]] = {
    "telemetry_site": [("site_power_minute", _SITE_POWER, True)],
    "actions_proposed": [("action_proposal_latest", _latest(
        "action_proposal_latest", "action_id", "site, kind, target, setpoint_kw, shed_kw, job_ids, reason, "
        "reason_code, risk, expected_effect, expected_delta_kw, proposer, created_ms, expires_ms",
        ("_partition", "_offset")), False)],
    "actions_approved": [("action_verdict_latest", _latest(
        "action_verdict_latest", "action_id", "verdict, reasons, reason_codes, approved_by",
        ("decided_ms", "_partition", "_offset"), "json_extract_string(action, '$.action_id')"), False)],
    "actions_results": [("action_result_latest", _latest(
        "action_result_latest", "action_id", "status, detail, observed_delta_kw, executor, observed_effect",
        ("ts_ms", "_partition", "_offset")), False)],
    "incidents": [("incident_latest", _latest(
        "incident_latest", "incident_id", "site, state, opened_ms, resolved_ms, root_device, root_device_type, "
        "root_code, severity, member_count, summary, merged_into", ("updated_ms", "_partition", "_offset")), False)],
    "narratives": [("narrative_latest", _latest(
        "narrative_latest", "incident_id", "site, text, citations, grounded, model, latency_ms",
        ("ts_ms", "_partition", "_offset")), False)],
    "alarms_clean": [("alarm_latest", _latest(
        "alarm_latest", "fingerprint", ", ".join(f"json_extract_string(alarm, '$.{f}') AS {f}" for f in (
            "site", "device", "device_type", "code", "severity", "state", "text")) + ", duplicate_count, first_seen_ms, "
        "flapping, noise_score, noise, decision_reason, reason_code, noise_reason_code",
        ("last_seen_ms", "_partition", "_offset")), False)],
    "agents_health": [("agent_health_latest", _latest(
        "agent_health_latest", "instance", "agent, \"group\", partitions, lag, processed, dead_letters, last_input_ms, "
        "last_commit_ms, last_output_ms", ("ts_ms", "_partition", "_offset")), False)],
}


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
    had = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables "
                                         "WHERE table_schema = 'main'").fetchall()}
    con.execute(VIEWS_SQL.read_text(encoding="utf-8"))
    for source, derived in DERIVED.items():  # created just now (a new file or an older version's): fill them
        for table, sql, ranged in derived:
            if table not in had:
                _derive(con, source, sql, ranged, source)
    return con


def _derive(con, source: str, sql: str, ranged: bool, delta: str) -> None:
    """Bring one derived table up to date with the rows of ``delta`` (a batch, or the whole topic table)."""
    params = []
    if ranged:
        low, high = con.execute(f'SELECT min(window_start_ms), max(window_start_ms) FROM "{delta}"').fetchone()
        if low is None:
            return
        params = [low // 60_000 * 60_000, high // 60_000 * 60_000 + 59_999]
    con.execute(sql.format(delta=f'"{delta}"'), params)


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
            for _, sql, ranged in DERIVED.get(table, ()):
                _derive(con, table, sql, ranged, f"_arrow_{table}")
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
