"""DuckDB sink: every catalog topic into a table of its own; the only writer of the DuckDB file.

Columns come from the record's Avro schema (arrays, maps and nested records as JSON text),
followed by the Kafka coordinates ``_partition``, ``_offset`` and ``_kafka_ts_ms``. The rows of
a batch and the next offset of each partition (table ``_kafka_offsets``) commit in one DuckDB
transaction, and the consumer resumes from those offsets, so each message lands exactly once.
Kafka offset commits are informative only (lag dashboards).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable

import duckdb
import pyarrow as pa
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from fastavro.schema import expand_schema

from opsloop.connectors.kafka import DEADLETTER, DeadLetters, DeliveryErrors, consumer, producer, wait_delivered
from opsloop.config.catalog import TopicSpec, load_catalog
from opsloop.config.settings import Settings
from opsloop.schemas.codec import Codec, DecodeError

log = logging.getLogger(__name__)
AGENT = "views"
from opsloop.config.assets import VIEWS_SQL
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

DeadLetterFn = Callable[[Any, str, str], None]  # (message, kind, error), like DeadLetters.send


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


class DuckDBSink:
    """Writes catalog topics into DuckDB through Arrow batches, rows and offsets in one transaction."""

    def __init__(self, settings: Settings, topics: list[str] | None = None, codec: Codec | None = None,
                 dead_letters: DeadLetterFn | None = None):
        self.settings = settings
        self.codec = codec or Codec.default()
        catalog = load_catalog(settings.topics_file)
        self.specs = {name: catalog[name] for name in (topics or catalog)}
        self.schemas = {name: arrow_schema(spec.record, self.codec) for name, spec in self.specs.items()}
        self.json_columns = {name: [f.name for f in schema if f.metadata == JSON_TEXT]
                             for name, schema in self.schemas.items()}
        self.con = open_db(settings.duckdb_file, specs=catalog, codec=self.codec)
        self.next_offsets: dict[tuple[str, int], int] = {
            (topic, part): offset for topic, part, offset in
            self.con.execute("SELECT topic, partition, next_offset FROM _kafka_offsets").fetchall()}
        self.dead_letters = dead_letters
        self._flush_dead_letters: Callable[[], None] | None = None
        self.stats = {"rows": defaultdict(int), "dead_letters": 0, "deadletter_rejects": 0,
                      "replayed": 0, "batches": 0}

    def close(self) -> None:
        self.con.close()

    def _catalog_name(self, topic: str) -> str:
        prefix = self.settings.topic_prefix
        return topic[len(prefix):] if prefix and topic.startswith(prefix) else topic

    def _reject(self, msg, name: str, error: str) -> None:
        if name == DEADLETTER:  # a dead letter about a dead letter would loop
            self.stats["deadletter_rejects"] += 1
            log.warning("left out undecodable %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), error)
            return
        if self.dead_letters is None:
            prod, errors = producer(self.settings), DeliveryErrors()
            letters = DeadLetters(self.settings, prod, AGENT, self.codec)
            self.dead_letters = lambda m, kind, err: letters.send(m, kind, err, on_delivery=errors)
            self._flush_dead_letters = lambda: (wait_delivered(prod), errors.raise_if_any())
        self.dead_letters(msg, "decode", error)
        self.stats["dead_letters"] += 1

    def write_batch(self, messages: Iterable) -> int:
        """Decode and store one batch with its offsets in one transaction; returns rows written."""
        rows: dict[str, list[dict]] = defaultdict(list)
        ends: dict[tuple[str, int], int] = {}
        for msg in messages:
            if msg.error() is not None:
                continue  # partition EOF and other events are run()'s business
            key, offset = (msg.topic(), msg.partition()), msg.offset()
            if offset < ends.get(key, self.next_offsets.get(key, 0)):
                self.stats["replayed"] += 1  # already stored: a replay must not duplicate rows
                continue
            ends[key] = offset + 1
            name = self._catalog_name(msg.topic())
            try:
                record, value = self.codec.decode(msg.value())
                if record != self.specs[name].record:
                    raise DecodeError(f"expected a {self.specs[name].record} on {name}, got a {record}")
            except DecodeError as exc:
                self._reject(msg, name, exc.reason)
                continue
            for col in self.json_columns[name]:
                value[col] = json.dumps(value[col], separators=(",", ":"),
                                        default=lambda v: v.hex() if isinstance(v, bytes) else str(v))
            ts_type, ts = msg.timestamp()
            value.update(_partition=msg.partition(), _offset=offset, _kafka_ts_ms=ts if ts_type else None)
            rows[name].append(value)
        if not ends:
            return 0
        if self._flush_dead_letters:  # dead letters are safe in Kafka before their offsets move on
            self._flush_dead_letters()
        offsets = pa.table({"topic": pa.array([t for t, _ in ends], pa.string()),
                            "partition": pa.array([p for _, p in ends], pa.int32()),
                            "next_offset": pa.array(list(ends.values()), pa.int64())})
        self.con.begin()
        try:
            for name, batch in rows.items():
                table = table_name(name)
                self.con.register(f"_arrow_{table}", pa.Table.from_pylist(batch, schema=self.schemas[name]))
                self.con.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM "_arrow_{table}"')
                self.con.unregister(f"_arrow_{table}")
            self.con.register("_arrow_offsets", offsets)
            self.con.execute("INSERT OR REPLACE INTO _kafka_offsets SELECT * FROM _arrow_offsets")
            self.con.unregister("_arrow_offsets")
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise
        self.next_offsets.update(ends)
        for name, batch in rows.items():
            self.stats["rows"][table_name(name)] += len(batch)
        return sum(len(batch) for batch in rows.values())

    def run(self, stop: threading.Event, exit_when_idle: bool = False) -> dict:
        """Consume every topic until ``stop`` is set, or until caught up and idle; returns the stats."""
        cons = consumer(self.settings, self.settings.group(AGENT))
        at_eof: dict[tuple[str, int], bool] = {}

        def on_assign(c, partitions):
            for tp in partitions:
                stored = self.next_offsets.get((tp.topic, tp.partition))
                if stored is not None:
                    tp.offset = stored  # DuckDB, not the group's commit, says what is stored
                at_eof[(tp.topic, tp.partition)] = False
            c.assign(partitions)

        def on_revoke(c, partitions):
            for tp in partitions:
                at_eof.pop((tp.topic, tp.partition), None)

        cons.subscribe([self.settings.topic(name) for name in self.specs],
                       on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
        last_data = time.monotonic()
        try:
            while not stop.is_set():
                batch = []
                for msg in cons.consume(self.settings.batch_size, timeout=0.5):
                    err = msg.error()
                    if err is None:
                        batch.append(msg)
                        at_eof[(msg.topic(), msg.partition())] = False
                    elif err.code() == KafkaError._PARTITION_EOF:
                        at_eof[(msg.topic(), msg.partition())] = True
                    elif err.fatal():
                        raise KafkaException(err)
                    else:
                        log.warning("consumer: %s", err)
                if batch:
                    self.write_batch(batch)
                    self.stats["batches"] += 1
                    last_data = time.monotonic()
                    done = {(m.topic(), m.partition()) for m in batch}
                    cons.commit(offsets=[TopicPartition(t, p, self.next_offsets[(t, p)]) for t, p in done],
                                asynchronous=True)
                elif (exit_when_idle and at_eof and all(at_eof.values())
                      and time.monotonic() - last_data >= self.settings.idle_close_s):
                    break
        finally:
            cons.close()
            self.close()  # release the file: DuckDB allows one writing process
            if self._flush_dead_letters:
                self._flush_dead_letters()
                self.dead_letters = self._flush_dead_letters = None  # drop the producer with the run
        return {**self.stats, "rows": dict(self.stats["rows"])}


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
