"""The NOC's pages: a Starlette application with Jinja2 templates and live updates by server-sent events.

Each page is a template (ops/noc_templates/) whose live part is a fragment of its own: the page renders
it once, and ``/events`` renders the same fragment again whenever the views change and sends it to the
browser, which swaps it in (ops/noc_static/noc.js); no page reloads itself. The overview's chart is drawn
by plotly.js, served from the installed ``plotly`` package (with its licence, at /static/vendor/).

Every request passes ``RequestChecks`` (allowed Host, only GET, HEAD and POST, security headers on every
answer); POSTs read their body only after the origin, length and encoding checks (``read_form``), and
the session's CSRF token and the role decide the rest (``authorized``). Templates autoescape, so text
from alarms, incidents and users is shown, never run.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from http import HTTPStatus
from importlib import metadata
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import duckdb
import plotly
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, \
    Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from opsloop.config.site import Site, load_sites
from opsloop.ops import noc_pages
from opsloop.ops.noc_core import ViewsUnavailable, action_verdict, audit_record, feedback_record, tried_name
from opsloop.ops.noc_auth import (LOGIN_COOKIE, MAX_BODY, SECURITY_HEADERS, SESSION_COOKIE, Refused, Role, Session,
                                  User, check_origin, content_length, cookies, host_allowed, new_token, set_cookie,
                                  tokens_match)
from opsloop.ops.noc_view import CSRF_FIELD, FEEDBACK_KINDS, LABEL_KINDS, advice, is_pending, number, text
from opsloop.models.signing import SigningError, sign_feedback

log = logging.getLogger("opsloop.ops.noc")
HERE = Path(__file__).parent
STATIC = HERE / "noc_static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
BODY_TIMEOUT_S = 10.0  # a POST body must arrive within this
LIVE_S = 1.0  # how often an event stream renders its page again to look for changes
WAKE_S = 0.05  # how often it asks the views agent in this process (if any) whether it stored a batch
HEARTBEAT_S = 15.0  # a comment line keeps idle streams (and proxies) open

templates = Environment(loader=FileSystemLoader(HERE / "noc_templates"), autoescape=select_autoescape(default=True),
                        trim_blocks=True, lstrip_blocks=True)


def _when(value, fmt: str = "%Y-%m-%d %H:%M %Z") -> str:
    return value.strftime(fmt) if isinstance(value, datetime) else ("" if value is None else str(value))


def _ms(value) -> str:
    """Milliseconds since the epoch as UTC text (pages that span sites say UTC)."""
    if value is None:
        return ""
    return datetime.fromtimestamp(value / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


templates.filters.update(when=_when, ms=_ms, num=number, cell=text, advice=advice)
templates.globals.update(is_pending=is_pending, CSRF_FIELD=CSRF_FIELD, FEEDBACK_KINDS=FEEDBACK_KINDS,
                         LABEL_KINDS=LABEL_KINDS)


class HeadDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for the request head: a client trickling its request line
    and headers (each byte in time, never done) is cut off, as is one that connects and sends nothing."""

    deadline_s = 30.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _arm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.deadline_s, self._late)

    def _late(self) -> None:
        if self.cycle is None or self.cycle.response_complete:  # no request under way: its head never came
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)


class RequestChecks:
    """ASGI middleware before every route: the Host must be one of the NOC's names, the method GET, HEAD or
    POST; every answer, errors included, carries the security headers."""

    def __init__(self, app, server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                         if k.lower().encode() not in have]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        request = Request(scope)
        refused = None
        if not host_allowed(request.headers.get("host"), self.server.access.allowed_hosts):
            refused = Refused(HTTPStatus.MISDIRECTED_REQUEST, "this NOC does not answer to the name "
                              f"{str(request.headers.get('host'))[:100]!r} (OPSLOOP_NOC_ALLOWED_HOSTS)")
        elif scope["method"] not in ("GET", "HEAD", "POST"):
            refused = Refused(HTTPStatus.NOT_IMPLEMENTED, f"method {scope['method'][:20]!r} is not served")
        if refused is not None:
            return await refusal(refused, close=True)(scope, receive, with_headers)
        await self.app(scope, receive, with_headers)


def refusal(refused: Refused, close: bool = False) -> Response:
    body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>opsloop NOC</title>'
            f'<link rel="stylesheet" href="/noc.css"></head><body><p class="banner error">Nothing done: '
            f'{escape(refused.reason)}</p><p><a href="/">Back to the NOC</a></p></body></html>')
    return HTMLResponse(body, int(refused.status), headers={"Connection": "close"} if close else None)


# --- who is asking -----------------------------------------------------------------------------------------


@dataclass
class Caller:
    session: Session
    user: User

    @property
    def may_approve(self) -> bool:
        return self.user.role.allows(Role.OPERATOR)

    @property
    def is_admin(self) -> bool:
        return self.user.role.allows(Role.ADMIN)


class Visit:
    """One request's view of the server: who the peer is, whether cookies are Secure, the cookies to set."""

    def __init__(self, request: Request):
        self.request = request
        self.server = request.app.state.server
        self.access = self.server.access
        self.peer = request.client.host if request.client else ""
        self.set_cookies: list[str] = []

    def client(self) -> str:
        proxy = self.access.proxy
        forwarded = self.request.headers.get("x-forwarded-for") if proxy and self.peer in proxy.addresses else None
        return f"{forwarded.strip()[:100]} via {self.peer}" if forwarded else self.peer

    def secure(self) -> bool:
        return self.access.tls is not None or bool(self.access.proxy and
                                                   self.access.proxy.https(self.peer, self.request.headers))

    def session_cookie(self, session: Session | None) -> None:
        value, age = (session.id, self.access.sessions.max_age(session)) if session else ("", 0)
        self.set_cookies.append(set_cookie(SESSION_COOKIE, value, age, self.secure()))

    def caller(self) -> Caller | None:
        """The live session and its user; a request through the trusted proxy gets a session for its user."""
        access = self.access
        session = access.sessions.get(cookies(self.request.headers.get("cookie")).get(SESSION_COOKIE))
        proxied = access.proxy.user(self.peer, self.request.headers) if access.proxy else None
        if proxied is not None and (session is None or session.user != proxied):
            user = access.users.get(proxied)
            if user is None:
                self.server.audit(audit_record("login_failed", tried_name(proxied), self.client(),
                                               detail="the proxy's user is not a NOC user"))
                raise Refused(HTTPStatus.FORBIDDEN, f"{proxied[:64]!r} is not a NOC user (opsloop noc user add)")
            session = access.sessions.create(user.name, via_proxy=True)
            self.session_cookie(session)
            self.server.audit(audit_record("login", user.name, self.client(), role=user.role.label,
                                           detail="authenticated by the proxy"))
        if session is None:
            return None
        user = access.users.get(session.user)
        if user is None:  # removed since they logged in
            access.sessions.end(session.id)
            return None
        return Caller(session, user)

    def authorized(self, form: dict[str, str], needed: Role, what: str) -> Caller:
        caller = self.caller()
        if caller is None:
            raise Refused(HTTPStatus.UNAUTHORIZED, "log in first")
        if not tokens_match(caller.session.csrf, form.get(CSRF_FIELD)):
            raise Refused(HTTPStatus.FORBIDDEN, "the form's CSRF token does not match this session; reload the page")
        if not caller.user.role.allows(needed):
            self.server.audit(audit_record("denied", caller.user.name, self.client(), role=caller.user.role.label,
                                           target=form.get("action_id") or form.get("fingerprint"),
                                           detail=f"{what} needs the {needed.label} role"))
            raise Refused(HTTPStatus.FORBIDDEN, f"{what} needs the {needed.label} role; {caller.user.name} is a "
                                                f"{caller.user.role.label}")
        return caller

    async def form(self) -> dict[str, str]:
        """The POSTed form, read only after the checks that need no body: same origin, a bounded length."""
        check_origin(self.request.headers, self.access.allowed_hosts)
        if self.request.headers.get("transfer-encoding"):
            raise Refused(HTTPStatus.BAD_REQUEST, "chunked bodies are not accepted")
        length = content_length(self.request.headers.get("content-length"), MAX_BODY)
        try:
            raw = await asyncio.wait_for(self.request.body(), BODY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise Refused(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive in {BODY_TIMEOUT_S:.0f} s") from None
        if len(raw) != length:
            raise Refused(HTTPStatus.BAD_REQUEST, "the body is shorter than its Content-Length")
        form = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=20)
        return {name: values[0] for name, values in form.items()}

    def finish(self, response: Response) -> Response:
        for cookie in self.set_cookies:
            response.headers.append("set-cookie", cookie)
        return response

    def redirect(self, location: str) -> Response:
        return self.finish(RedirectResponse(location, status_code=303))


# --- pages -------------------------------------------------------------------------------------------------

NAV = [("/", "Overview"), ("/incidents", "Incidents"), ("/actions", "Actions"), ("/alarms", "Alarms"),
       ("/sources", "Sources"), ("/wall", "Wall")]


def _int(value: str | None, default: int = 1) -> int:
    try:
        return max(1, min(int(value or default), 100_000))
    except ValueError:
        return default


def _site(server, site_id: str) -> Site | None:
    return server.sites.get(site_id)


def read_live(server, path: str, params: dict[str, str], caller: Caller) -> tuple[str, dict]:
    """(fragment template, context) of a page's live part, read from the views now. Raises
    ViewsUnavailable when the file cannot be read and KeyError for a page that does not exist."""
    con = server.views.connect()
    try:
        if path == "/":
            ids = noc_pages.site_ids(con)
            site_id = params.get("site") or (ids[0] if ids else "")
            data = noc_pages.overview(con, site_id, _site(server, site_id)) if site_id else None
            ctx = {"sites": ids, "site": site_id, "o": data, "chart": noc_pages.chart(data) if data else None,
                   "pending": noc_pages.pending_count(con), "dead_letters": noc_pages.dead_letters(con)}
            if data:
                latest_action = data["actions"][-1] if data["actions"] else None
                ctx["action_sentence"] = latest_action
            return "overview_live.html", ctx
        if path == "/wall":
            ids = noc_pages.site_ids(con)
            walls = [noc_pages.overview(con, s, _site(server, s), hours=0) for s in ids]  # numbers, no chart
            return "wall_live.html", {"walls": walls, "incidents": noc_pages.incidents(con)["rows"][:8],
                                      "pending": noc_pages.pending_count(con)}
        if path == "/incidents":
            found = noc_pages.incidents(con, state=params.get("state", "open"), site=params.get("site", ""),
                                        severity=params.get("severity", ""), q=params.get("q", ""),
                                        page=_int(params.get("page")))
            return "incidents_live.html", {"found": found, "params": params, "page_rows": noc_pages.PAGE_ROWS}
        if path.startswith("/incidents/"):
            incident_id = path.removeprefix("/incidents/")
            inc = noc_pages.incident(con, incident_id, None)
            if inc is not None and inc["incident"]["site"] in server.sites:
                inc = noc_pages.incident(con, incident_id, server.sites[inc["incident"]["site"]])
            return "incident_live.html", {"inc": inc, "incident_id": incident_id}
        if path == "/actions":
            found = noc_pages.actions(con, q=params.get("q", ""), page=_int(params.get("page")))
            return "actions_live.html", {"found": found, "params": params, "page_rows": noc_pages.PAGE_ROWS}
        if path == "/alarms":
            return "alarms_live.html", {"alarms": noc_pages.alarms(con, site=params.get("site", ""))}
        if path == "/sources":
            return "sources_live.html", {"sources": noc_pages.sources(con), "agents": noc_pages.agents(con),
                                         "dead_letters": noc_pages.dead_letters(con)}
        if path == "/audit" and caller.is_admin:
            rows = [dict(zip([d[0] for d in cur.description], r)) for cur in [con.execute(
                "SELECT * FROM v_audit LIMIT 200")] for r in cur.fetchall()]
            return "audit_live.html", {"rows": rows}
        raise KeyError(path)
    except duckdb.Error as exc:
        raise ViewsUnavailable(f"Cannot read the views in {server.views}: {exc}") from exc
    finally:
        con.close()


def render_live(server, path: str, params: dict[str, str], caller: Caller) -> str:
    name, ctx = read_live(server, path, params, caller)
    return render_fragment(name, caller, **ctx)


def render_fragment(name: str, caller: Caller, **ctx) -> str:
    """One page's live part from its context (no I/O)."""
    return templates.get_template(name).render(viewer=caller, csrf=caller.session.csrf, **ctx)


def render_document(caller: Caller, here: str, live: str, *, source: str, title: str = "NOC",
                    notice: str | None = None, error: str | None = None, events: str = "", digest: str = "") -> str:
    """The whole page around a rendered live part (no I/O); ``events``: the page the stream follows,
    ``digest``: of the live part as rendered, so the stream sends it again only once it changed."""
    return templates.get_template("page.html").render(
        title=title, viewer=caller, csrf=caller.session.csrf, nav=NAV, here=here, live=live, notice=notice,
        error=error, source=source, events=events, digest=digest, kiosk=here == "/wall")


def digest(html: str) -> str:
    return hashlib.sha256(html.encode()).hexdigest()[:32]


def page_response(visit: Visit, caller: Caller, path: str, params: dict[str, str], title: str,
                  status: int = 200, notice: str | None = None, error: str | None = None) -> Response:
    live = ""
    if status == 200:
        try:
            live = render_live(visit.server, path, params, caller)
        except ViewsUnavailable as exc:
            status, error = 503, str(exc)
        except KeyError:
            status, error = 404, "No such page."
    events = path + ("?" + urlencode(params) if params else "") if status == 200 else ""
    html = render_document(caller, path, live, source=str(visit.server.views), title=title, notice=notice,
                           error=error, events=events, digest=digest(live))
    return visit.finish(HTMLResponse(html, status))


def titled(path: str) -> str:
    for href, label in NAV:
        if path == href:
            return label
    return "Incident" if path.startswith("/incidents/") else "Audit trail" if path == "/audit" else "NOC"


async def page(request: Request) -> Response:
    visit = Visit(request)
    caller = await run_in_threadpool(visit.caller)
    if caller is None:
        return visit.redirect("/login")
    notice, caller.session.flash = caller.session.flash, None  # shown once, never taken from the URL
    path = request.url.path
    params = {k: v[:200] for k, v in request.query_params.items() if k in ("site", "state", "severity", "q", "page")}
    return await run_in_threadpool(page_response, visit, caller, path, params, titled(path), 200, notice)


async def events(request: Request) -> Response:
    """Server-sent events for one page: its live fragment, sent again whenever it changes."""
    visit = Visit(request)
    caller = await run_in_threadpool(visit.caller)
    if caller is None:
        raise Refused(HTTPStatus.UNAUTHORIZED, "log in first")
    target = urlsplit(request.query_params.get("page", "/"))
    params = {k: v[0][:200] for k, v in parse_qs(target.query).items()
              if k in ("site", "state", "severity", "q", "page")}
    server = visit.server

    async def stream():
        last, quiet = request.query_params.get("seen", "")[:64], 0.0
        yield "retry: 2000\n\n"
        while not server.stopping.is_set() and not await request.is_disconnected():
            if server.access.sessions.get(caller.session.id) is None:
                yield "event: logout\ndata: /login\n\n"
                return
            try:
                html = await run_in_threadpool(render_live, server, target.path, params, caller)
            except (ViewsUnavailable, KeyError) as exc:
                html = f'<p class="banner error">{escape(str(exc))}</p>'
            now = digest(html)
            if now != last:
                last, quiet = now, 0.0
                yield "event: live\n" + "".join(f"data: {line}\n" for line in html.split("\n")) + "\n"
            elif quiet >= HEARTBEAT_S:
                quiet = 0.0
                yield ": still here\n\n"
            quiet += await _until_changed(server.views, LIVE_S)

    return visit.finish(StreamingResponse(stream(), media_type="text/event-stream",
                                          headers={"X-Accel-Buffering": "no"}))


async def _until_changed(views, most_s: float) -> float:
    """Wait until the views agent in this process stores a batch, at most ``most_s`` (all of it when the views
    are a file nobody here writes); returns the seconds waited. A stored verdict reaches the page within
    ``WAKE_S`` of its batch, not a whole ``LIVE_S`` later, and reading the number costs no query."""
    seen, waited = views.version(), 0.0
    if seen is None:
        await asyncio.sleep(most_s)
        return most_s
    while waited < most_s and views.version() == seen:
        await asyncio.sleep(WAKE_S)
        waited += WAKE_S
    return waited


# --- forms -------------------------------------------------------------------------------------------------


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


async def answer(visit: Visit, caller: Caller, status: int, back: str, error: str) -> Response:
    if wants_json(visit.request):
        return visit.finish(JSONResponse({"error": error}, status))
    return await run_in_threadpool(page_response, visit, caller, back, {}, titled(back), status, None, error)


async def feedback(request: Request) -> Response:
    visit = Visit(request)
    form = await visit.form()
    caller = await run_in_threadpool(visit.authorized, form, Role.OPERATOR, "approving or rejecting an action")
    action_id, kind = form.get("action_id", ""), form.get("kind", "")
    if not action_id or kind not in FEEDBACK_KINDS:
        return await answer(visit, caller, 400, "/actions", f"Bad feedback: action {action_id[:100]!r}, kind {kind[:40]!r}.")
    try:
        state = await run_in_threadpool(action_verdict, visit.server.views, action_id)
    except ViewsUnavailable as exc:
        return await answer(visit, caller, 503, "/actions", f"Nothing sent. {exc}")
    if state is None or state[0] != "needs_approval" or state[1]:
        # the guard ignores feedback for an action that is not waiting: say so rather than send it
        return await answer(visit, caller, 409, "/actions", f"Nothing sent: action {action_id} is not waiting for "
                            f"approval (verdict {state and state[0]}, result {state and state[1]}).")
    what = "approval" if kind == "approve_action" else "rejection"
    return await send_feedback(visit, caller, action_id, kind, f"{action_id}: {what} sent to the guard as "
                               f"{caller.user.name}.", "/actions")


async def label(request: Request) -> Response:
    """An operator's label on an alarm (noise or actionable), for the noise model on operator.feedback."""
    visit = Visit(request)
    form = await visit.form()
    caller = await run_in_threadpool(visit.authorized, form, Role.OPERATOR, "labelling an alarm")
    fingerprint, kind = form.get("fingerprint", ""), form.get("kind", "")
    if not fingerprint or kind not in LABEL_KINDS:
        return await answer(visit, caller, 400, "/alarms", f"Bad label: alarm {fingerprint[:100]!r}, kind {kind[:40]!r}.")
    return await send_feedback(visit, caller, fingerprint, kind, f"{fingerprint[:100]} labelled "
                               f"{LABEL_KINDS[kind].lower()} by {caller.user.name}.", "/alarms")


async def send_feedback(visit: Visit, caller: Caller, target: str, kind: str, notice: str, back: str) -> Response:
    server, user = visit.server, caller.user
    now = int(server.settings.clock()() * 1000)  # the run's clock: the guard judges lapses on it
    event, detail = (kind, None) if kind in FEEDBACK_KINDS else ("other", kind)  # AuditEvent has no label kinds
    audit = audit_record(event, user.name, visit.client(), role=user.role.label, target=target, ts_ms=now,
                         detail=detail)
    log.info("audit: %s by %s (%s) on %s from %s", kind, user.name, user.role.label, target[:100], visit.client())
    try:  # the guard and the noise model answer only the NOC's signed feedback
        record = sign_feedback(feedback_record(target, kind, user.name, now), server.settings.feedback_key)
    except SigningError as exc:
        return await answer(visit, caller, 503, back, f"Nothing sent. {exc}")
    try:  # the feedback and its audit record, acked together
        await run_in_threadpool(server.outbox.send, [("operator.feedback", record), ("noc.audit", audit)])
    except Exception as exc:  # the broker is down or slow: say so, the operator can retry
        return await answer(visit, caller, 502, back, f"Could not send {kind} for {target[:100]}: {exc}")
    if wants_json(visit.request):
        return visit.finish(JSONResponse({"notice": notice}))
    caller.session.flash = notice
    return visit.redirect(back)


# --- login -------------------------------------------------------------------------------------------------


def login_page(visit: Visit, status: int = 200, notice: str | None = None, error: str | None = None) -> Response:
    token = new_token()
    visit.set_cookies.append(set_cookie(LOGIN_COOKIE, token, 900, visit.secure()))
    html = templates.get_template("login.html").render(csrf=token, notice=notice, error=error)
    return visit.finish(HTMLResponse(html, status))


async def login_form(request: Request) -> Response:
    visit = Visit(request)
    if await run_in_threadpool(visit.caller) is not None:
        return visit.redirect("/")
    return login_page(visit, notice="Logged out." if request.url.query == "bye" else None)


async def login(request: Request) -> Response:
    visit = Visit(request)
    form = await visit.form()
    access = visit.access
    if not tokens_match(cookies(request.headers.get("cookie")).get(LOGIN_COOKIE), form.get(CSRF_FIELD)):
        raise Refused(HTTPStatus.FORBIDDEN, "the login form's CSRF token does not match; reload the login page")
    name, password = form.get("username", "").strip(), form.get("password", "")
    attempt = f"{name}|{visit.peer}"  # per name and client: nobody elsewhere can lock an operator out
    if access.throttle.locked(attempt):
        visit.server.audit(audit_record("login_failed", tried_name(name), visit.client(),
                                        detail="locked: too many failures"))
        return login_page(visit, 429, error="Too many failed logins for this user: wait a few minutes.")
    user = await run_in_threadpool(access.users.verify, name, password)
    if user is None:
        access.throttle.failed(attempt)
        visit.server.audit(audit_record("login_failed", tried_name(name), visit.client(),
                                        detail="wrong name or password"))
        return login_page(visit, 401, error="Wrong user name or password.")
    access.throttle.succeeded(attempt)
    old = access.sessions.end(cookies(request.headers.get("cookie")).get(SESSION_COOKIE))  # never reuse an id
    session = access.sessions.create(user.name)
    visit.session_cookie(session)
    visit.set_cookies.append(set_cookie(LOGIN_COOKIE, "", 0, visit.secure()))
    visit.server.audit(audit_record("login", user.name, visit.client(), role=user.role.label,
                                    detail="replaced a session" if old else None))
    return visit.redirect("/")


async def logout(request: Request) -> Response:
    visit = Visit(request)
    form = await visit.form()
    caller = await run_in_threadpool(visit.authorized, form, Role.VIEWER, "logging out")
    visit.access.sessions.end(caller.session.id)
    visit.session_cookie(None)
    visit.server.audit(audit_record("logout", caller.user.name, visit.client(), role=caller.user.role.label))
    return visit.redirect("/login?bye")


# --- files -------------------------------------------------------------------------------------------------

STATIC_CACHE = {"Cache-Control": "private, max-age=3600"}


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    files = {"noc.css": STATIC / "noc.css", "noc.js": STATIC / "noc.js", "vendor/plotly.min.js": PLOTLY_JS}
    if name == "vendor/PLOTLY-LICENSE.txt":
        return PlainTextResponse(plotly_licence(), headers=STATIC_CACHE)
    if name not in files:
        raise Refused(HTTPStatus.NOT_FOUND, "no such file")
    return FileResponse(files[name], headers=STATIC_CACHE)


def plotly_licence() -> str:
    """plotly.js's licence as the installed plotly package carries it (MIT), with where it came from."""
    dist = metadata.distribution("plotly")
    texts = [f"plotly.min.js is plotly.js as shipped in the plotly {dist.version} Python package.\n"]
    for file in dist.files or []:
        if "licen" in file.name.lower():
            texts.append(file.read_text())
    if len(texts) == 1:
        texts.append(dist.metadata.get("License-Expression") or dist.metadata.get("License") or "MIT")
    return "\n".join(texts)


async def css(request: Request) -> Response:
    return FileResponse(STATIC / "noc.css", media_type="text/css; charset=utf-8")


async def no_icon(request: Request) -> Response:
    return Response(status_code=204)


async def not_found(request: Request, exc) -> Response:
    return HTMLResponse('<!doctype html><p>Not found. The NOC is at <a href="/">/</a>.</p>', 404)


async def refused(request: Request, exc: Refused) -> Response:
    return refusal(exc, close=request.method == "POST")  # the body may be unread: never reuse the connection


def build_app(server) -> Starlette:
    if not hasattr(server, "sites"):
        server.sites = _load_sites(server)
    pages = ["/", "/incidents", "/incidents/{incident_id:path}", "/actions", "/alarms", "/sources", "/wall", "/audit"]
    routes = [Route(p, page, methods=["GET", "HEAD"]) for p in pages] + [
        Route("/login", login_form, methods=["GET", "HEAD"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]), Route("/feedback", feedback, methods=["POST"]),
        Route("/label", label, methods=["POST"]), Route("/events", events, methods=["GET"]),
        Route("/noc.css", css, methods=["GET", "HEAD"]), Route("/favicon.ico", no_icon, methods=["GET", "HEAD"]), Route("/static/{name:path}", static, methods=["GET", "HEAD"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, Refused: refused})
    app.state.server = server
    return RequestChecks(app, server)


def _load_sites(server) -> dict[str, Site]:
    """The site files beside the configured one, for time zones, topology and billing periods."""
    try:
        return load_sites(server.settings.topology.parent, known=[])
    except Exception as exc:  # a page without a site file still shows, in UTC
        log.warning("NOC: site files not read (%s); times in UTC", exc)
        return {}

