"""`opsloop noc`: the NOC page over the DuckDB views, and approvals onto ``operator.feedback``.

Standard library HTTP server (one page and three forms need no framework). Every request reads
the views afresh, so the page always shows what the views agent last committed. The NOC writes a
``Feedback`` record, keyed by the action id and naming the logged-in user, for the guard, and an
``AuditEvent`` on ``noc.audit`` for every login, logout, failed login, approval, rejection and
refused approval.

Who may do what is decided by ops/noc_auth.py (users, roles, sessions, CSRF tokens, request checks);
this module only applies it: every request must name an allowed Host, every page but the login form
needs a session, every POST must come from the NOC's own origin with a bounded body and (but the
login form's) the session's CSRF token, and only operators and admins approve.

DuckDB lets one process write a file and no other process open it meanwhile, so a running views
agent and a separate NOC cannot share one file. ``opsloop noc --with-views`` therefore runs the
views agent (streams/views.py) in the NOC's own process and reads through cursors on its
connection (``LiveViews``); without it the NOC opens the file read-only per request
(``FileViews``), for a file nothing is writing (e.g. the demo's, after it ends).
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import duckdb
from confluent_kafka import Producer

from opsloop.connectors.duckdb import open_db
from opsloop.streams.views import ViewsSink
from opsloop.connectors.kafka import producer, send_record, wait_delivered
from opsloop.ops.noc_auth import (LOGIN_COOKIE, MAX_BODY, NAME_RE, SECURITY_HEADERS, SESSION_COOKIE, LoginThrottle,
                                  ProxyAuth, Refused, Role, Session, Sessions, User, UserStore,
                                  allowed_hosts, check_origin, content_length, cookies, host_allowed, new_token,
                                  set_cookie, tokens_match)
from opsloop.ops.noc_view import (CSRF_FIELD, FEEDBACK_KINDS, FEEDBACK_PATH, LOGIN_PATH, LOGOUT_PATH, STYLE,
                                  STYLE_PATH, Screen, Viewer, login_page, render_page)
from opsloop.config.settings import Settings
from opsloop.models.signing import SigningError, sign_feedback
from opsloop.schemas.codec import Codec

log = logging.getLogger(__name__)
MAX_ROWS = 200  # per table: a screen, not an archive (`opsloop sql` reads everything)
AUDIT_ROWS = 50  # the audit trail on the page; `opsloop sql "SELECT * FROM v_audit"` has it all
QUERIES = {
    "power": "SELECT * FROM v_site_power QUALIFY row_number() OVER (PARTITION BY site ORDER BY minute DESC) = 1 "
             "ORDER BY site",
    "forecasts": "SELECT * FROM v_forecasts_latest ORDER BY site",
    "rul": f"SELECT * FROM v_rul_latest ORDER BY earliest, device LIMIT {MAX_ROWS}",
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


def read_screen(views: Views, audit: bool = False) -> Screen:
    """Every section of the page from one connection; ``audit``: the latest audit events too (admins)."""
    con = views.connect()
    try:
        rows = {name: _dicts(con.execute(sql)) for name, sql in QUERIES.items()}
        dead = con.execute("SELECT count(*) FROM v_deadletter").fetchone()[0]
    except duckdb.Error as exc:
        con.close()
        raise ViewsUnavailable(f"Cannot read the views in {views}: {exc}") from exc
    try:
        if audit:  # a file written before the audit trail existed lacks it: the rest of the page still shows
            rows["audit"] = _dicts(con.execute(f"SELECT * FROM v_audit LIMIT {AUDIT_ROWS}"))
    except duckdb.Error as exc:
        rows["audit_error"] = f"The audit trail cannot be read from {views}: {exc}"
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


@dataclass
class NocAccess:
    """Everything that decides who gets in: users, sessions, login throttle, allowed Host values, the trusted
    proxy (if any) and whether cookies are Secure because the NOC itself speaks TLS."""

    users: UserStore
    allowed_hosts: frozenset[str]
    sessions: Sessions = field(default_factory=Sessions)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    proxy: ProxyAuth | None = None
    tls: ssl.SSLContext | None = None


class NocServer(ThreadingHTTPServer):
    daemon_threads = True
    max_connections = 64  # threads serving at once; more connections are closed unanswered

    def __init__(self, address, settings: Settings, outbox: Outbox, views: Views, access: NocAccess):
        self.settings, self.outbox, self.views, self.access = settings, outbox, views, access
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(address, NocHandler)  # binds; closes the socket itself when it cannot

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):  # slow or idle clients must not pile up threads
            log.warning("NOC: %d connections open, refusing one from %s", self.max_connections, client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request, client_address) -> None:
        if self.access.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(NocHandler.timeout)  # the handshake runs in the request's thread, under its timeout
        try:
            secure = self.access.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            super().finish_request(secure, client_address)
        finally:
            self.shutdown_request(secure)

    def server_close(self) -> None:
        super().server_close()
        self.outbox.close()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{'https' if self.access.tls else 'http'}://{host}:{port}/"

    def audit(self, record: dict, wait: bool = False) -> None:
        log.info("audit: %s by %s (%s) on %s from %s%s", record["event"], record["actor"], record["role"],
                 record["target"], record["client"], f": {record['detail']}" if record["detail"] else "")
        if wait:
            self.outbox.send([("noc.audit", record)])
            return
        try:
            self.outbox.send([("noc.audit", record)], wait=False)
        except Exception as exc:  # a full local queue or a bad broker setting: logged, the page goes on
            log.error("audit record not queued: %s", exc)


class NocHandler(BaseHTTPRequestHandler):
    server: NocServer
    timeout = 10  # seconds per socket read or write: a stalled client frees its thread
    request_deadline_s = 30.0  # to receive a whole request and start answering: a trickling client is cut off
    server_version = "opsloop-noc"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self._cookies_out: list[str] = []
        self._deadline: threading.Timer | None = None

    def handle_one_request(self) -> None:
        self._deadline = threading.Timer(self.request_deadline_s, self._cut_off)
        self._deadline.daemon = True
        self._deadline.start()
        try:
            super().handle_one_request()
        finally:
            self._deadline.cancel()

    def _cut_off(self) -> None:
        log.debug("NOC: %s took over %.0f s to send a request; closing", self.peer, self.request_deadline_s)
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def log_message(self, fmt, *args) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    # --- answers ---

    def _send(self, status: HTTPStatus, body: str, headers: dict | None = None,
              content_type: str = "text/html; charset=utf-8") -> None:
        data = body.encode("utf-8")
        if self._deadline is not None:
            self._deadline.cancel()  # answering now: the deadline was for the request
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        for cookie in self._cookies_out:
            self.send_header("Set-Cookie", cookie)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _redirect(self, location: str) -> None:
        self._send(HTTPStatus.SEE_OTHER, "", {"Location": location})

    def _refuse(self, refused: Refused) -> None:
        self._send(refused.status, "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                                   f"<title>opsloop NOC: refused</title></head><body><p>Nothing done: "
                                   f"{escape(refused.reason)}.</p><p><a href=\"/\">Back to the NOC</a></p></body>"
                                   "</html>")

    def send_error(self, code, message=None, explain=None) -> None:  # the standard library's own errors
        self.close_connection = True
        self._refuse(Refused(HTTPStatus(code), message or HTTPStatus(code).phrase))

    # --- who is asking ---

    @property
    def peer(self) -> str:
        return self.client_address[0]

    def _client(self) -> str:
        proxy = self.server.access.proxy
        forwarded = self.headers.get("X-Forwarded-For") if proxy and self.peer in proxy.addresses else None
        return f"{forwarded.strip()[:100]} via {self.peer}" if forwarded else self.peer

    def _secure(self) -> bool:
        access = self.server.access
        return access.tls is not None or bool(access.proxy and access.proxy.https(self.peer, self.headers))

    def _set_session_cookie(self, session: Session | None) -> None:
        value, age = (session.id, self.server.access.sessions.max_age(session)) if session else ("", 0)
        self._cookies_out.append(set_cookie(SESSION_COOKIE, value, age, self._secure()))

    def _session(self) -> tuple[Session, User] | None:
        """The caller's live session and user; a request through the trusted proxy gets one for its user."""
        access = self.server.access
        session = access.sessions.get(cookies(self.headers.get("Cookie")).get(SESSION_COOKIE))
        proxied = access.proxy.user(self.peer, self.headers) if access.proxy else None
        if proxied is not None and (session is None or session.user != proxied):
            user = access.users.get(proxied)
            if user is None:
                self.server.audit(audit_record("login_failed", tried_name(proxied), self._client(),
                                               detail="the proxy's user is not a NOC user"))
                raise Refused(HTTPStatus.FORBIDDEN, f"{proxied[:64]!r} is not a NOC user (opsloop noc user add)")
            session = access.sessions.create(user.name, via_proxy=True)
            self._set_session_cookie(session)
            self.server.audit(audit_record("login", user.name, self._client(), role=user.role.label,
                                           detail="authenticated by the proxy"))
        if session is None:
            return None
        user = access.users.get(session.user)
        if user is None:  # removed since they logged in
            access.sessions.end(session.id)
            return None
        return session, user

    def _check_host(self) -> None:
        if not host_allowed(self.headers.get("Host"), self.server.access.allowed_hosts):
            raise Refused(HTTPStatus.MISDIRECTED_REQUEST,
                          f"this NOC does not answer to the name {str(self.headers.get('Host'))[:100]!r} "
                          "(OPSLOOP_NOC_ALLOWED_HOSTS)")

    def _form(self) -> dict[str, str]:
        """The POSTed form, after the checks that need no body: same origin, a bounded length."""
        check_origin(self.headers, self.server.access.allowed_hosts)
        if self.headers.get("Transfer-Encoding"):
            raise Refused(HTTPStatus.BAD_REQUEST, "chunked bodies are not accepted")
        length = content_length(self.headers.get("Content-Length"), MAX_BODY)
        try:
            raw = self.rfile.read(length)
        except (TimeoutError, OSError) as exc:
            raise Refused(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive: {exc}") from None
        if len(raw) != length:
            raise Refused(HTTPStatus.BAD_REQUEST, "the body is shorter than its Content-Length")
        form = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=20)
        return {name: values[0] for name, values in form.items()}

    def _authorized(self, form: dict[str, str], needed: Role, what: str) -> tuple[Session, User]:
        found = self._session()
        if found is None:
            raise Refused(HTTPStatus.UNAUTHORIZED, "log in first")
        session, user = found
        if not tokens_match(session.csrf, form.get(CSRF_FIELD)):
            raise Refused(HTTPStatus.FORBIDDEN, "the form's CSRF token does not match this session; reload the page")
        if not user.role.allows(needed):
            self.server.audit(audit_record("denied", user.name, self._client(), role=user.role.label,
                                           target=form.get("action_id"), detail=f"{what} needs the {needed.label} role"))
            raise Refused(HTTPStatus.FORBIDDEN, f"{what} needs the {needed.label} role; {user.name} is a "
                                                f"{user.role.label}")
        return session, user

    # --- routes ---

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        try:
            self._check_host()
            url = urlsplit(self.path)
            if url.path == STYLE_PATH:
                self._send(HTTPStatus.OK, STYLE, content_type="text/css; charset=utf-8")
            elif url.path == LOGIN_PATH:
                if self._session() is not None:
                    self._redirect("/")
                else:
                    self._login_page(HTTPStatus.OK, notice="Logged out." if url.query == "bye" else None)
            elif url.path == "/":
                found = self._session()
                if found is None:
                    self._redirect(LOGIN_PATH)
                else:
                    session, user = found
                    notice, session.flash = session.flash, None  # shown once, never taken from the URL
                    self._page(HTTPStatus.OK, session, user, notice=notice)
            else:
                self._send(HTTPStatus.NOT_FOUND, "<!doctype html><p>Not found. The NOC is at <a href=\"/\">/</a>.</p>")
        except Refused as refused:
            self._refuse(refused)

    def do_POST(self) -> None:
        routes = {FEEDBACK_PATH: self._feedback, LOGIN_PATH: self._login, LOGOUT_PATH: self._logout}
        try:
            self._check_host()
            route = routes.get(urlsplit(self.path).path)
            if route is None:
                raise Refused(HTTPStatus.NOT_FOUND, "no such form")
            route(self._form())
        except Refused as refused:
            self.close_connection = True  # the body may be unread: never parse it as the next request
            self._refuse(refused)

    def _login_page(self, status: HTTPStatus, notice: str | None = None, error: str | None = None) -> None:
        token = new_token()
        self._cookies_out.append(set_cookie(LOGIN_COOKIE, token, 900, self._secure()))
        self._send(status, login_page(token, notice=notice, error=error))

    def _login(self, form: dict[str, str]) -> None:
        access = self.server.access
        if not tokens_match(cookies(self.headers.get("Cookie")).get(LOGIN_COOKIE), form.get(CSRF_FIELD)):
            raise Refused(HTTPStatus.FORBIDDEN, "the login form's CSRF token does not match; reload the login page")
        name, password = form.get("username", "").strip(), form.get("password", "")
        attempt = f"{name}|{self.peer}"  # per name and client: nobody elsewhere can lock an operator out
        if access.throttle.locked(attempt):
            self.server.audit(audit_record("login_failed", tried_name(name), self._client(),
                                           detail="locked: too many failures"))
            self._login_page(HTTPStatus.TOO_MANY_REQUESTS, error="Too many failed logins for this user: "
                                                                 "wait a few minutes.")
            return
        user = access.users.verify(name, password)
        if user is None:
            access.throttle.failed(attempt)
            self.server.audit(audit_record("login_failed", tried_name(name), self._client(),
                                           detail="wrong name or password"))
            self._login_page(HTTPStatus.UNAUTHORIZED, error="Wrong user name or password.")
            return
        access.throttle.succeeded(attempt)
        old = access.sessions.end(cookies(self.headers.get("Cookie")).get(SESSION_COOKIE))  # never reuse an id
        session = access.sessions.create(user.name)
        self._set_session_cookie(session)
        self._cookies_out.append(set_cookie(LOGIN_COOKIE, "", 0, self._secure()))
        self.server.audit(audit_record("login", user.name, self._client(), role=user.role.label,
                                       detail="replaced a session" if old else None))
        self._redirect("/")

    def _logout(self, form: dict[str, str]) -> None:
        session, user = self._authorized(form, Role.VIEWER, "logging out")
        self.server.access.sessions.end(session.id)
        self._set_session_cookie(None)
        self.server.audit(audit_record("logout", user.name, self._client(), role=user.role.label))
        self._redirect(LOGIN_PATH + "?bye")

    def _page(self, status: HTTPStatus, session: Session, user: User, notice: str | None = None,
              error: str | None = None) -> None:
        views = self.server.views
        screen = None
        if status == HTTPStatus.OK:
            try:
                screen = read_screen(views, audit=user.role.allows(Role.ADMIN))
            except ViewsUnavailable as exc:
                status, error = HTTPStatus.SERVICE_UNAVAILABLE, str(exc)
        viewer = Viewer(user.name, user.role.label, session.csrf, user.role.allows(Role.OPERATOR))
        self._send(status, render_page(screen, viewer=viewer, source=str(views), notice=notice, error=error))

    def _feedback(self, form: dict[str, str]) -> None:
        session, user = self._authorized(form, Role.OPERATOR, "approving or rejecting an action")
        action_id, kind = form.get("action_id", ""), form.get("kind", "")
        if not action_id or kind not in FEEDBACK_KINDS:
            self._page(HTTPStatus.BAD_REQUEST, session, user,
                       error=f"Bad feedback: action {action_id[:100]!r}, kind {kind[:40]!r}.")
            return
        try:
            state = action_verdict(self.server.views, action_id)
        except ViewsUnavailable as exc:
            self._page(HTTPStatus.SERVICE_UNAVAILABLE, session, user, error=f"Nothing sent. {exc}")
            return
        if state is None or state[0] != "needs_approval" or state[1]:
            # the guard ignores feedback for an action that is not waiting: say so rather than send it
            self._page(HTTPStatus.CONFLICT, session, user,
                       error=f"Nothing sent: action {action_id} is not waiting for approval "
                             f"(verdict {state and state[0]}, result {state and state[1]}).")
            return
        now = int(self.server.settings.clock()() * 1000)  # the run's clock: the guard judges lapses on it
        audit = audit_record(kind, user.name, self._client(), role=user.role.label, target=action_id, ts_ms=now)
        log.info("audit: %s by %s (%s) on %s from %s", kind, user.name, user.role.label, action_id, self._client())
        try:  # the guard answers only the NOC's signed feedback
            feedback = sign_feedback(feedback_record(action_id, kind, user.name, now), self.server.settings.feedback_key)
        except SigningError as exc:
            self._page(HTTPStatus.SERVICE_UNAVAILABLE, session, user, error=f"Nothing sent. {exc}")
            return
        try:  # the approval and its audit record, acked together
            self.server.outbox.send([("operator.feedback", feedback), ("noc.audit", audit)])
        except Exception as exc:  # the broker is down or slow: say so, the operator can retry
            self._page(HTTPStatus.BAD_GATEWAY, session, user, error=f"Could not send {kind} for {action_id}: {exc}")
            return
        what = "approval" if kind == "approve_action" else "rejection"
        session.flash = f"{action_id}: {what} sent to the guard as {user.name}."
        self._redirect("/")


def users_file(settings: Settings) -> Path:
    return settings.noc_users_file or settings.data_dir / "noc" / "users.json"


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.noc_tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.noc_tls_cert, settings.noc_tls_key)
    return ctx


def make_access(settings: Settings, host: str, port: int, users: UserStore | None = None) -> NocAccess:
    """Who may use a NOC bound to ``host:port``, from the settings."""
    proxy = None
    addresses = frozenset(a.strip() for a in settings.noc_trusted_proxy.split(",") if a.strip())
    if settings.noc_proxy_user_header and not addresses:
        raise ValueError("OPSLOOP_NOC_PROXY_USER_HEADER needs OPSLOOP_NOC_TRUSTED_PROXY: the proxy's address")
    if addresses:  # its X-Forwarded-Proto and -For are believed; its user header only when one is named
        proxy = ProxyAuth(settings.noc_proxy_user_header, addresses)
    names = [n for n in settings.noc_allowed_hosts.split(",") if n.strip()]
    if host in ("", "0.0.0.0", "::") and not names:
        raise ValueError("listening on every interface needs OPSLOOP_NOC_ALLOWED_HOSTS: the names operators use")
    return NocAccess(users or UserStore(users_file(settings)), allowed_hosts(host, port, names),
                     Sessions(settings.noc_session_hours * 3600, settings.noc_idle_minutes * 60),
                     proxy=proxy, tls=tls_context(settings))


def make_server(settings: Settings, host: str, port: int, views: Views | None = None,
                access: NocAccess | None = None, outbox: Outbox | None = None) -> NocServer:
    """A bound server (port 0 picks a free one) over ``views`` (default: the DuckDB file, read-only)."""
    server = NocServer((host, port), settings, outbox or Outbox(settings), views or FileViews(settings.duckdb_file),
                       access or NocAccess(UserStore(users_file(settings)), frozenset()))
    if access is None:  # the port is known only now when it was 0
        server.access = make_access(settings, host, server.server_address[1], server.access.users)
    return server


def serve(settings: Settings, host: str, port: int, with_views: bool = False) -> int:
    """Serve until interrupted or terminated; ``with_views``: run the views agent in this process too."""
    users = UserStore(users_file(settings))
    if not users.list():
        print(f"opsloop noc: no NOC users in {users.path}: create the first admin with "
              "`opsloop noc user add NAME --role admin`", file=sys.stderr)
        return 2
    views, stop, agent = None, threading.Event(), None
    if with_views:
        sink = ViewsSink(settings)
        agent = threading.Thread(target=sink.run, args=(stop,), name="views", daemon=True)
        agent.start()
        views = LiveViews(sink)
    server = make_server(settings, host, port, views)
    # serve_forever returns once shutdown() runs, which must come from another thread
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"opsloop NOC on {server.url} (reading {server.views}; users in {users.path}; answers to "
          f"{', '.join(sorted(server.access.allowed_hosts))})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if agent is not None:
            stop.set()
            agent.join(30)
    return 0
