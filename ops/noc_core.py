"""What the NOC's web application stands on, without the server: where the views are read (``FileViews``,
``LiveViews``), the outbox that publishes the NOC's records, and the feedback and audit records."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import duckdb
from confluent_kafka import Producer

from opsloop.connectors.duckdb import open_db
from opsloop.connectors.kafka import producer, send_record, wait_delivered
from opsloop.config.settings import Settings
from opsloop.ops.noc_auth import NAME_RE
from opsloop.schemas.codec import Codec
from opsloop.streams.views import ViewsSink

log = logging.getLogger("opsloop.ops.noc")


class ViewsUnavailable(Exception):
    """The DuckDB file is missing, locked or not (yet) holding the views; the page says so."""


def _connect(path: Path) -> duckdb.DuckDBPyConnection:
    if not path.exists():
        raise ViewsUnavailable(f"No DuckDB file at {path} yet: the views agent writes it "
                               "(opsloop worker --agents views); set OPSLOOP_DUCKDB_PATH to read another.")
    try:
        return open_db(path, read_only=True)
    except duckdb.Error as exc:
        hint = (" DuckDB allows one writing process and no readers beside it: this page reads the file "
                "while no views worker holds it (retrying every refresh).") if "lock" in str(exc).lower() else ""
        raise ViewsUnavailable(f"Cannot open {path} read-only: {exc}.{hint}") from exc


class FileViews:
    """The views in a DuckDB file that no other process is writing: a read-only connection per request."""

    def __init__(self, path: Path):
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def connect(self) -> duckdb.DuckDBPyConnection:
        return _connect(self.path)

    def version(self) -> int | None:
        return None  # no writer to ask: readers look again on their own schedule


class LiveViews:
    """The views that the views agent in this process writes: a cursor on its connection per request
    (DuckDB lets a cursor read in another thread while the sink commits its batches)."""

    def __init__(self, sink: ViewsSink):
        self.sink = sink

    def __str__(self) -> str:
        return f"{self.sink.settings.duckdb_file}, written by this process"

    def connect(self) -> duckdb.DuckDBPyConnection:
        try:
            return self.sink.con.cursor()
        except duckdb.Error as exc:  # the sink stopped and closed its connection
            raise ViewsUnavailable(f"The views agent in this process has stopped: {exc}") from exc

    def version(self) -> int | None:
        """How many batches the sink has stored: a reader that saw one number looks again when it grows."""
        return self.sink.version


Views = FileViews | LiveViews


def action_verdict(views: Views, action_id: str) -> tuple[str | None, str | None] | None:
    """(latest verdict, result) of one action, or None when the views do not know it."""
    con = views.connect()
    try:
        row = con.execute("SELECT verdict, result FROM v_actions WHERE action_id = ?", [action_id]).fetchone()
    except duckdb.Error as exc:
        raise ViewsUnavailable(f"Cannot read the views in {views}: {exc}") from exc
    finally:
        con.close()
    return tuple(row) if row else None


class Outbox:
    """Publishes the NOC's records (Feedback, AuditEvent) through one idempotent producer, made on the first
    record (the page itself needs no broker) and shared by the request threads."""

    def __init__(self, settings: Settings, codec: Codec | None = None, **producer_config):
        self.settings = settings
        self.codec = codec or Codec.default()
        self.producer_config = producer_config
        self._prod: Producer | None = None
        self._lock = threading.Lock()

    def _producer(self) -> Producer:
        with self._lock:
            if self._prod is None:
                self._prod = producer(self.settings, **self.producer_config)
            return self._prod

    def send(self, records: list[tuple[str, dict]], wait: bool = True, timeout_s: float = 10.0) -> None:
        """(topic, record) pairs; ``wait``: until the broker has acked them all (the operator sees an error, not
        a silent loss), else in the background with failures logged."""
        prod = self._producer()
        for topic, record in records:
            send_record(prod, self.settings, topic, record, self.codec, None if wait else _log_failure)
        if wait:
            wait_delivered(prod, timeout_s=timeout_s)
        else:
            prod.poll(0)

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            prod, self._prod = self._prod, None
        if prod is not None:
            prod.flush(timeout_s)


def _log_failure(err, msg) -> None:
    if err is not None:
        log.error("audit record to %s not delivered: %s", msg.topic(), err)


def feedback_record(action_id: str, kind: str, operator: str, ts_ms: int) -> dict:
    return {"target_id": action_id, "kind": kind, "operator": operator, "ts_ms": ts_ms, "comment": "from the NOC"}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _clean(value: str | None, limit: int) -> str | None:
    """Request-supplied text made safe for a log line and a table cell: no control characters, bounded."""
    return None if value is None else _CONTROL.sub("?", value[:limit])


def audit_record(event: str, actor: str, client: str, *, role: str | None = None, target: str | None = None,
                 detail: str | None = None, source: str = "noc", ts_ms: int | None = None) -> dict:
    """One AuditEvent (schemas/AuditEvent.avsc), its text cleaned and bounded; never a secret in it."""
    return {"ts_ms": int(time.time() * 1000) if ts_ms is None else ts_ms, "event": event,
            "actor": _clean(actor, 128), "role": role, "target": _clean(target, 256), "client": _clean(client, 256),
            "source": source, "detail": _clean(detail, 500)}


def tried_name(name: str) -> str:
    """The name a failed login tried, when it can be a user name; anything else may be a password typed in the
    wrong field and is not kept."""
    return name if NAME_RE.match(name) else "(not a user name)"
