"""`opsloop noc`: the NOC page over the DuckDB views, and approvals onto ``operator.feedback``.

Standard library HTTP server (one page and one form POST need no framework). Every request reads
the views afresh, so the page always shows what the views agent last committed; the only thing the
NOC writes is a ``Feedback`` record, keyed by the action id, for the guard.

DuckDB lets one process write a file and no other process open it meanwhile, so a running views
agent and a separate NOC cannot share one file. ``opsloop noc --with-views`` therefore runs the
views agent (streams/views.py) in the NOC's own process and reads through cursors on its
connection (``LiveViews``); without it the NOC opens the file read-only per request
(``FileViews``), for a file nothing is writing (e.g. the demo's, after it ends).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import duckdb
from confluent_kafka import Producer

from opsloop.connectors.duckdb import open_db
from opsloop.streams.views import ViewsSink
from opsloop.connectors.kafka import producer, send_record, wait_delivered
from opsloop.ops.noc_view import FEEDBACK_KINDS, FEEDBACK_PATH, Screen, render_page
from opsloop.config.settings import Settings
from opsloop.models.signing import sign_feedback
from opsloop.schemas.codec import Codec

log = logging.getLogger(__name__)
MAX_ROWS = 200  # per table: a screen, not an archive (`opsloop sql` reads everything)
QUERIES = {
    "power": "SELECT * FROM v_site_power QUALIFY row_number() OVER (PARTITION BY site ORDER BY minute DESC) = 1 "
             "ORDER BY site",
    "forecasts": "SELECT * FROM v_forecasts_latest ORDER BY site",
    "incidents": "SELECT i.*, n.text AS narrative, n.citations, n.grounded, n.model AS narrative_model "
                 "FROM v_incidents i LEFT JOIN v_narratives n USING (incident_id) "
                 "WHERE i.state <> 'resolved' AND i.merged_into IS NULL "
                 f"ORDER BY i.updated DESC, i.incident_id LIMIT {MAX_ROWS}",
    # the whole proposal too: the advisor's sentence needs its jobs, expected effect and proposer
    "actions": "SELECT a.*, p.job_ids, p.expected_effect, p.expected_delta_kw, p.proposer, p.created_ms, p.expires_ms "
               "FROM v_actions a JOIN actions_proposed p USING (action_id) "
               "QUALIFY row_number() OVER (PARTITION BY a.action_id ORDER BY p._partition DESC, p._offset DESC) = 1 "
               f"ORDER BY a.created DESC, a.action_id LIMIT {MAX_ROWS}",
}


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


def _dicts(cur) -> list[dict]:
    columns = [d[0] for d in cur.description]
    return [dict(zip(columns, row)) for row in cur.fetchall()]


class FileViews:
    """The views in a DuckDB file that no other process is writing: a read-only connection per request."""

    def __init__(self, path: Path):
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def connect(self) -> duckdb.DuckDBPyConnection:
        return _connect(self.path)


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


Views = FileViews | LiveViews


def read_screen(views: Views) -> Screen:
    """Every section of the page from one connection."""
    con = views.connect()
    try:
        rows = {name: _dicts(con.execute(sql)) for name, sql in QUERIES.items()}
        dead = con.execute("SELECT count(*) FROM v_deadletter").fetchone()[0]
    except duckdb.Error as exc:
        raise ViewsUnavailable(f"Cannot read the views in {views}: {exc}") from exc
    finally:
        con.close()
    return Screen(dead_letters=dead, **rows)


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


class FeedbackSender:
    """Publishes operator feedback; one idempotent producer, made on the first feedback (the page itself
    needs no broker) and shared by the request threads."""

    def __init__(self, settings: Settings, codec: Codec | None = None):
        self.settings = settings
        self.codec = codec or Codec.default()
        self._prod: Producer | None = None
        self._lock = threading.Lock()

    def send(self, action_id: str, kind: str, operator: str, ts_ms: int) -> None:
        record = {"target_id": action_id, "kind": kind, "operator": operator, "ts_ms": ts_ms,
                  "comment": "from the NOC"}
        record = sign_feedback(record, self.settings.feedback_key)  # the guard answers only the NOC's signed feedback
        with self._lock:
            if self._prod is None:
                self._prod = producer(self.settings)
        send_record(self._prod, self.settings, "operator.feedback", record, self.codec)
        wait_delivered(self._prod, timeout_s=10.0)  # the operator sees an error, not a silent loss

    def close(self) -> None:
        with self._lock:
            prod, self._prod = self._prod, None
        if prod is not None:
            prod.flush(5.0)


class NocServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, settings: Settings, operator: str, sender: FeedbackSender, views: Views):
        super().__init__(address, NocHandler)
        self.settings, self.operator, self.sender, self.views = settings, operator, sender, views

    def server_close(self) -> None:
        super().server_close()
        self.sender.close()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class NocHandler(BaseHTTPRequestHandler):
    server: NocServer

    def log_message(self, fmt, *args) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: HTTPStatus, body: str, headers: dict | None = None) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _page(self, status: HTTPStatus, notice: str | None = None, error: str | None = None) -> None:
        views = self.server.views
        screen = None
        if status == HTTPStatus.OK:
            try:
                screen = read_screen(views)
            except ViewsUnavailable as exc:
                status, error = HTTPStatus.SERVICE_UNAVAILABLE, str(exc)
        self._send(status, render_page(screen, operator=self.server.operator, source=str(views),
                                       notice=notice, error=error))

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/":
            self._send(HTTPStatus.NOT_FOUND, "<!doctype html><p>Not found. The NOC is at <a href=\"/\">/</a>.</p>")
            return
        self._page(HTTPStatus.OK, notice=parse_qs(url.query).get("notice", [None])[0])

    def do_POST(self) -> None:
        if urlsplit(self.path).path != FEEDBACK_PATH:
            self._send(HTTPStatus.NOT_FOUND, "<!doctype html><p>Not found.</p>")
            return
        origin = self.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != self.headers.get("Host"):
            # a form on another site must not approve actions through an operator's browser
            self._page(HTTPStatus.FORBIDDEN, error=f"Nothing sent: the form came from {origin}, not from this NOC.")
            return
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        action_id, kind = form.get("action_id", [""])[0], form.get("kind", [""])[0]
        if not action_id or kind not in FEEDBACK_KINDS:
            self._page(HTTPStatus.BAD_REQUEST, error=f"Bad feedback: action {action_id!r}, kind {kind!r}.")
            return
        try:
            state = action_verdict(self.server.views, action_id)
        except ViewsUnavailable as exc:
            self._page(HTTPStatus.SERVICE_UNAVAILABLE, error=f"Nothing sent. {exc}")
            return
        if state is None or state[0] != "needs_approval" or state[1]:
            # the guard keeps early feedback for ids it has not seen: never send one for an unknown action
            self._page(HTTPStatus.CONFLICT, error=f"Nothing sent: action {action_id} is not waiting for approval "
                                                  f"(verdict {state and state[0]}, result {state and state[1]}).")
            return
        try:
            self.server.sender.send(action_id, kind, self.server.operator, int(time.time() * 1000))
        except Exception as exc:  # the broker is down or slow: say so, the operator can retry
            self._page(HTTPStatus.BAD_GATEWAY, error=f"Could not send {kind} for {action_id}: {exc}")
            return
        what = "approval" if kind == "approve_action" else "rejection"
        notice = f"{action_id}: {what} sent to the guard as {self.server.operator}."
        self._send(HTTPStatus.SEE_OTHER, "", {"Location": "/?" + urlencode({"notice": notice})})


def make_server(settings: Settings, host: str, port: int, operator: str, views: Views | None = None) -> NocServer:
    """A bound server (port 0 picks a free one) over ``views`` (default: the DuckDB file, read-only)."""
    return NocServer((host, port), settings, operator, FeedbackSender(settings),
                     views or FileViews(settings.duckdb_file))


def serve(settings: Settings, host: str, port: int, operator: str, with_views: bool = False) -> int:
    """Serve until interrupted or terminated; ``with_views``: run the views agent in this process too."""
    views, stop, agent = None, threading.Event(), None
    if with_views:
        sink = ViewsSink(settings)
        agent = threading.Thread(target=sink.run, args=(stop,), name="views", daemon=True)
        agent.start()
        views = LiveViews(sink)
    server = make_server(settings, host, port, operator, views)
    # serve_forever returns once shutdown() runs, which must come from another thread
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"opsloop NOC on {server.url} (reading {server.views}, approving as {operator})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if agent is not None:
            stop.set()
            agent.join(30)
    return 0
