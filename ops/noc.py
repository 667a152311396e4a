"""`opsloop noc`: the NOC's web pages over the DuckDB views, and approvals and alarm labels onto
``operator.feedback``.

The pages are a Starlette application (ops/noc_web.py, Jinja2 templates in ops/noc_templates/) served by
uvicorn; this module holds what the application stands on: where the views are read (``FileViews``,
``LiveViews``), the outbox that publishes the NOC's records, the audit records, who may get in
(``NocAccess``) and the server (``NocServer``, ``make_server``, ``serve``). The NOC writes a ``Feedback``
record, keyed by the action id (or alarm fingerprint) and naming the logged-in user, and an ``AuditEvent``
on ``noc.audit`` for every login, logout, failed login, approval, rejection, label and refused request.

Who may do what is decided by ops/noc_auth.py (users, roles, sessions, CSRF tokens, request checks); the
application applies it: every request must name an allowed Host, every page but the login form needs a
session, every POST must come from the NOC's own origin with a bounded body and (but the login form's)
the session's CSRF token, and only operators and admins approve and label.

DuckDB lets one process write a file and no other process open it meanwhile, so a running views agent
and a separate NOC cannot share one file. ``opsloop noc --with-views`` therefore runs the views agent
(streams/views.py) in the NOC's own process and reads through cursors on its connection (``LiveViews``);
without it the NOC opens the file read-only per request (``FileViews``), for a file nothing is writing
(e.g. the demo's, after it ends). Several NOC processes serving one site read a copy each: README, "NOC".
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from opsloop.streams.views import ViewsSink
from opsloop.ops.noc_auth import LoginThrottle, ProxyAuth, Sessions, UserStore, allowed_hosts
# re-exported: `opsloop noc user`, the tests and older callers import these from here
from opsloop.ops.noc_core import (FileViews, LiveViews, Outbox, Views, ViewsUnavailable, action_verdict,  # noqa: F401
                                  audit_record, feedback_record, tried_name)
from opsloop.ops.noc_web import HeadDeadline, build_app
from opsloop.config.settings import Settings

log = logging.getLogger(__name__)


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


class NocServer:
    """The NOC's web application (ops/noc_web.py) under uvicorn, on a socket bound at construction (port 0
    picks a free one). ``serve_forever`` runs it in the calling thread until ``shutdown``."""

    max_connections = 64  # connections and requests at once; more are answered 503
    keep_alive_s = 5  # an idle keep-alive connection is closed after this
    max_head_bytes = 16 * 1024  # request line and headers; a longer head is refused
    graceful_s = 3  # open event streams get this long to end at shutdown

    def __init__(self, address, settings: Settings, outbox: Outbox, views: Views, access: NocAccess):
        self.settings, self.outbox, self.views, self.access = settings, outbox, views, access
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind(address)
            self.socket.listen(128)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self.stopping = threading.Event()  # event streams end when it is set
        self._stopped = threading.Event()
        self._uvicorn: uvicorn.Server | None = None

    def serve_forever(self) -> None:
        tls = {"ssl_certfile": str(self.settings.noc_tls_cert), "ssl_keyfile": str(self.settings.noc_tls_key)} \
            if self.access.tls is not None else {}
        config = uvicorn.Config(build_app(self), log_config=None, access_log=False, lifespan="off",
                                proxy_headers=False, server_header=False, limit_concurrency=self.max_connections,
                                timeout_keep_alive=self.keep_alive_s, timeout_graceful_shutdown=self.graceful_s,
                                h11_max_incomplete_event_size=self.max_head_bytes, http=HeadDeadline, ws="none",
                                **tls)
        self._uvicorn = uvicorn.Server(config)
        self.stopping.clear()
        self._stopped.clear()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        self.stopping.set()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            self._stopped.wait(timeout_s)

    def server_close(self) -> None:
        self.socket.close()
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
    # uvicorn ends on SIGINT and SIGTERM itself (it runs in the main thread here)
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
