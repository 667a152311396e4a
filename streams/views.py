"""The views agent: every catalog topic into its DuckDB table (connectors/duckdb.py), each message once.

It runs on the processors' loop (streams/processor.py) and owns its offsets: each consumed
batch is decoded and stored with the next offset of each partition in one DuckDB transaction
(``end_batch``), and an assignment resumes from the stored offsets (``stored_offsets``), so a
restart neither loses nor duplicates rows; its Kafka commits are copies for lag dashboards.
When the file cannot be written (a full or read-only disk, a lost mount), the agent pauses its
partitions and logs one clear error (again once a minute while it lasts), keeps the batch and
retries it every ``retry_s``; on success it resumes. The batch and its offsets are one
transaction, so nothing is lost or stored twice across the pause, a restart or a rebalance.
Undecodable messages go to ``deadletter``, delivered before their offsets are stored; an
undecodable message on ``deadletter`` itself (a dead letter about it would loop) is stored
directly as a row of ``deadletter``, raw (bounded) with the reason, so ``v_deadletter`` shows it. The
process running it is the file's only writer (DuckDB admits one).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any, Callable, Iterable

import time

import duckdb
import pyarrow as pa
from confluent_kafka import KafkaError, KafkaException

from opsloop.config.catalog import cached_catalog
from opsloop.config.settings import Settings
from opsloop.connectors.duckdb import JSON_TEXT, arrow_schema, open_db, store_batch, stored_offsets, table_name
from opsloop.connectors.kafka import DEADLETTER, Throttled
from opsloop.models.records import dead_letter
from opsloop.schemas.codec import Codec, DecodeError
from opsloop.streams.processor import BatchProcessor

log = logging.getLogger("opsloop.views")
AGENT = "views"

DeadLetterFn = Callable[[Any, str, str], None]  # (message, kind, error), like BatchProcessor.dead_letter


class ViewsSink(BatchProcessor):
    """Writes catalog topics into DuckDB through Arrow batches, rows and offsets in one transaction."""

    name = AGENT
    commit_stat = None
    wake_on_first = True  # a verdict waits for no batch to fill: an operator's approval shows on the NOC sooner

    def __init__(self, settings: Settings, topics: list[str] | None = None, codec: Codec | None = None,
                 dead_letters: DeadLetterFn | None = None):
        catalog = cached_catalog(settings.topics_file)
        self.sources = tuple(topics or catalog)
        super().__init__(settings, codec)
        self.specs = {name: catalog[name] for name in self.sources}
        self.schemas = {name: arrow_schema(spec.record, self.codec) for name, spec in self.specs.items()}
        self.json_columns = {name: [f.name for f in schema if f.metadata == JSON_TEXT]
                             for name, schema in self.schemas.items()}
        self.con = open_db(settings.duckdb_file, specs=catalog, codec=self.codec)
        self.next_offsets = stored_offsets(self.con)
        self.dead_letters = dead_letters  # None: the loop's dead letters
        self.batch: list = []
        self.stats = {"rows": {}, "dead_letters": 0, "deadletter_rejects": 0, "replayed": 0, "batches": 0}
        self.held: list = []  # a batch the file refused: kept, and retried while the partitions are paused
        self.paused_at: float | None = None
        self._retry_at = 0.0
        self._unwritable = Throttled(log)
        self.version = 0  # batches stored by this sink so far

    # -- the loop's hooks ---------------------------------------------------------------

    def handle(self, msg) -> None:
        self.batch.append(msg)

    retry_s = 2.0  # how often a refused batch is tried again

    def end_batch(self, messages: int, idle: bool) -> bool:
        if self.held:
            self.held += self.batch  # fetched before the pause took hold
            self.batch = []
            if time.monotonic() < self._retry_at:
                return False
        if not self.batch and not self.held:
            return False
        batch, self.batch, self.held = self.held + self.batch, [], []
        try:
            self.write_batch(batch)
        except (duckdb.Error, OSError) as exc:
            self._pause(batch, exc)
            return False
        if self.paused_at is not None:
            log.warning("views: writing to %s again after %.0f s; nothing lost", self.settings.duckdb_file,
                        time.monotonic() - self.paused_at)
            self.paused_at = None
            if self.cons is not None:
                self.cons.resume(self.cons.assignment())
        self.stats["batches"] += 1
        return True

    def _pause(self, batch: list, exc: BaseException) -> None:
        self.held = batch
        self._retry_at = time.monotonic() + self.retry_s
        if self.paused_at is None:
            self.paused_at = time.monotonic()
            if self.cons is not None:
                self.cons.pause(self.cons.assignment())
        self._unwritable.log("unwritable", logging.ERROR, "views: cannot write %s (%s: %s); consuming is paused and "
                             "the batch is retried every %.0f s (logged once a minute)", self.settings.duckdb_file,
                             type(exc).__name__, exc, self.retry_s)

    def on_revoke(self, cons, partitions) -> None:
        self.held = []  # the next owner reads them again from the offsets stored in the file
        self.paused_at = None  # a new assignment starts unpaused; the next batch finds out if the file still fails

    def settled(self) -> bool:
        return not self.held  # an idle exit must not leave a refused batch behind

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        return self.next_offsets

    def consumer_error(self, err: KafkaError) -> None:
        if err.fatal():
            raise KafkaException(err)
        log.warning("consumer: %s", err)  # e.g. a topic not created yet: the views wait for it

    def close(self) -> None:
        self.con.close()  # release the file: DuckDB allows one writing process

    # -- storing ------------------------------------------------------------------------

    def _reject(self, msg, name: str, error: str) -> dict | None:
        """Dead-letter an undecodable message; one read from ``deadletter`` itself becomes its own row."""
        if name == DEADLETTER:  # a dead letter about a dead letter would loop: store it raw, with why
            self.stats["deadletter_rejects"] += 1
            log.warning("undecodable %s[%d]@%d stored raw in deadletter: %s", msg.topic(), msg.partition(),
                        msg.offset(), error)
            ts_type, ts = msg.timestamp()
            return dead_letter(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), "decode", error,
                               AGENT, ts if ts_type else None, self.settings.deadletter_max_bytes)
        (self.dead_letters or self.dead_letter)(msg, "decode", error)
        self.stats["dead_letters"] += 1
        return None

    def write_batch(self, messages: Iterable) -> int:
        """Decode and store one batch with its offsets in one transaction; returns rows written."""
        rows: dict[str, list[dict]] = defaultdict(list)
        ends: dict[tuple[str, int], int] = {}
        rejected = 0
        for msg in messages:
            if msg.error() is not None:
                continue  # partition ends and other events are the loop's business
            key, offset = (msg.topic(), msg.partition()), msg.offset()
            if offset < ends.get(key, self.next_offsets.get(key, 0)):
                self.stats["replayed"] += 1  # already stored: a replay must not duplicate rows
                continue
            ends[key] = offset + 1
            name = self.catalog_name(msg.topic())
            try:
                record, value = self.codec.decode(msg.value())
                if record != self.specs[name].record:
                    raise DecodeError(f"expected a {self.specs[name].record} on {name}, got a {record}")
            except DecodeError as exc:
                value = self._reject(msg, name, exc.reason)
                if value is None:
                    rejected += 1
                    continue
            for col in self.json_columns[name]:
                value[col] = json.dumps(value[col], separators=(",", ":"),
                                        default=lambda v: v.hex() if isinstance(v, bytes) else str(v))
            ts_type, ts = msg.timestamp()
            value.update(_partition=msg.partition(), _offset=offset, _kafka_ts_ms=ts if ts_type else None)
            rows[name].append(value)
        if not ends:
            return 0
        if rejected and self.dead_letters is None:
            self.flush()  # dead letters are safe in Kafka before their offsets move on
        store_batch(self.con, {table_name(name): pa.Table.from_pylist(batch, schema=self.schemas[name])
                               for name, batch in rows.items()}, ends)
        self.next_offsets.update(ends)
        self.version += 1  # readers in this process (the NOC's event streams) look again
        for name, batch in rows.items():
            table = table_name(name)
            self.stats["rows"][table] = self.stats["rows"].get(table, 0) + len(batch)
        return sum(len(batch) for batch in rows.values())
