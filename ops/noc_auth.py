"""Who may use the NOC, and what each request must carry: users and roles, passwords, sessions, CSRF tokens
and the request checks (Host allow-list, same-origin POSTs, bounded bodies).

No HTTP server in here: the functions take header values, cookies and form fields and return decisions;
the NOC's Starlette application (ops/noc_web.py) applies them. It does, in order: ``host_allowed`` on every request; for a POST ``check_origin`` and
``content_length`` before reading the body; ``Sessions.get`` on the session cookie (or ``ProxyAuth.user``),
then ``UserStore.get`` for the current role; ``tokens_match`` of the form's CSRF token with the session's;
``Role.allows`` for the route; ``SECURITY_HEADERS`` and ``set_cookie`` on every answer. A ``Refused`` carries
the HTTP status to answer with.

Roles are ordered: a viewer sees the page, an operator also approves and rejects actions, an admin also
sees the audit trail (users are managed with ``opsloop noc user``).

>>> Role.parse("operator").allows(Role.VIEWER), Role.VIEWER.allows(Role.OPERATOR)
(True, False)
>>> content_length("12", limit=64)
12
>>> content_length("abc", limit=64)
Traceback (most recent call last):
...
opsloop.ops.noc_auth.Refused: 400 Content-Length is not a number: 'abc'
>>> host_allowed("noc.example:8088", {"noc.example:8088"}), host_allowed("evil.example:8088", {"noc.example:8088"})
(True, False)
"""

from __future__ import annotations

import enum
import hmac
import json
import math
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Callable, Iterable, Mapping
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MAX_BODY = 64 * 1024  # every NOC form is a few hundred bytes
SESSION_COOKIE = "noc_session"
LOGIN_COOKIE = "noc_login"  # double-submit CSRF token of the login form, before any session exists
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 12


class Refused(Exception):
    """A request the NOC will not serve; ``status`` is the HTTP answer and the message says why."""

    def __init__(self, status: HTTPStatus, reason: str):
        super().__init__(f"{int(status)} {reason}")
        self.status, self.reason = status, reason


class Role(enum.IntEnum):
    VIEWER = 1  # sees the page
    OPERATOR = 2  # also approves and rejects actions
    ADMIN = 3  # also sees the audit trail

    @classmethod
    def parse(cls, name: str) -> "Role":
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}: one of {', '.join(r.label for r in cls)}") from None

    @property
    def label(self) -> str:
        return self.name.lower()

    def allows(self, needed: "Role") -> bool:
        return self >= needed


# --- users -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password_hash: str = field(repr=False)
    created_ms: int = 0


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ValueError(f"bad user name {name!r}: 1-64 letters, digits or . _ @ -, starting with a letter or digit")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password too short: at least {MIN_PASSWORD} characters")
    return password


class UserStore:
    """NOC users in one JSON file (mode 0600): name, role, argon2id hash. Written whole and atomically by the
    CLI; the server re-reads it when it changes, so a removed user or a changed role counts at the next request."""

    def __init__(self, path: Path, hasher: PasswordHasher | None = None):
        self.path = Path(path)
        self.hasher = hasher or PasswordHasher()  # argon2id, the library's current recommended parameters
        self._lock = threading.Lock()
        self._users: dict[str, User] = {}
        self._stamp: tuple[int, int] | None = None
        self._dummy: str | None = None  # unknown users cost as much time as known ones (made when first needed)
        self._verifying = threading.BoundedSemaphore(2)  # each verification takes ~64 MiB: bound memory

    def _load(self) -> dict[str, User]:
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._users, self._stamp = {}, None
                return self._users
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._users = {u["name"]: User(u["name"], Role.parse(u["role"]), u["hash"], u.get("created_ms", 0))
                               for u in data.get("users", [])}
                self._stamp = stamp
            return self._users

    def _write(self, users: dict[str, User]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": 1, "users": [{"name": u.name, "role": u.role.label, "hash": u.password_hash,
                                          "created_ms": u.created_ms} for u in sorted(users.values(),
                                                                                       key=lambda u: u.name)]}
        fd, tmp = tempfile.mkstemp(prefix=".users-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stamp = None

    def get(self, name: str) -> User | None:
        return self._load().get(name)

    def list(self) -> list[User]:
        return sorted(self._load().values(), key=lambda u: u.name)

    def add(self, name: str, role: Role, password: str, replace: bool = False) -> User:
        check_name(name)
        check_password(password)
        users = dict(self._load())
        if name in users and not replace:
            raise ValueError(f"user {name!r} exists (use --replace to set a new password or role)")
        user = User(name, role, self.hasher.hash(password), int(time.time() * 1000))
        users[name] = user
        self._write(users)
        return user

    def remove(self, name: str) -> bool:
        users = dict(self._load())
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True

    def verify(self, name: str, password: str) -> User | None:
        """The user when the password is theirs; None otherwise, in about the same time either way."""
        user = self.get(name) if NAME_RE.match(name or "") else None
        with self._verifying:
            if user is None and self._dummy is None:
                self._dummy = self.hasher.hash(secrets.token_hex(16))
            try:
                self.hasher.verify(user.password_hash if user else self._dummy, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return None
        return user


class LoginThrottle:
    """After ``limit`` failed logins for one name within ``window_s``, that name is locked for ``lock_s``."""

    def __init__(self, limit: int = 5, window_s: float = 300.0, lock_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic):
        self.limit, self.window_s, self.lock_s, self.clock = limit, window_s, lock_s, clock
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def locked(self, name: str) -> bool:
        now = self.clock()
        with self._lock:
            recent = [t for t in self._fails.get(name, []) if now - t < max(self.window_s, self.lock_s)]
            self._fails[name] = recent
            in_window = [t for t in recent if now - t < self.window_s]
            return len(in_window) >= self.limit or (len(recent) >= self.limit and now - recent[-1] < self.lock_s)

    def failed(self, name: str) -> None:
        with self._lock:
            self._fails.setdefault(name, []).append(self.clock())
            if len(self._fails) > 10_000:  # a flood of made-up names must not grow memory without bound
                self._fails.clear()

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._fails.pop(name, None)


# --- sessions and CSRF -------------------------------------------------------------------------------------


@dataclass
class Session:
    id: str = field(repr=False)
    user: str
    csrf: str = field(repr=False)
    created: float
    seen: float
    via_proxy: bool = False
    flash: str | None = None  # a notice for the next page of this session (e.g. "approval sent")


class Sessions:
    """Server-side sessions keyed by a random 256-bit id; each has its own CSRF token, an absolute lifetime and
    an idle timeout. Held in memory: restarting the NOC logs everyone out."""

    def __init__(self, lifetime_s: float = 8 * 3600, idle_s: float = 1800, clock: Callable[[], float] = time.time,
                 max_sessions: int = 10_000):
        self.lifetime_s, self.idle_s, self.clock, self.max_sessions = lifetime_s, idle_s, clock, max_sessions
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: str, via_proxy: bool = False) -> Session:
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now, via_proxy)
        with self._lock:
            self._expire(now)
            if len(self._by_id) >= self.max_sessions:  # drop the least recently seen
                oldest = min(self._by_id.values(), key=lambda s: s.seen)
                del self._by_id[oldest.id]
            self._by_id[session.id] = session
        return session

    def _expire(self, now: float) -> None:
        for sid in [sid for sid, s in self._by_id.items() if not self._alive(s, now)]:
            del self._by_id[sid]

    def _alive(self, s: Session, now: float) -> bool:
        return now - s.created < self.lifetime_s and now - s.seen < self.idle_s

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = self.clock()
        with self._lock:
            session = self._by_id.get(session_id)
            if session is None:
                return None
            if not self._alive(session, now):
                del self._by_id[session_id]
                return None
            session.seen = now
            return session

    def end(self, session_id: str | None) -> Session | None:
        with self._lock:
            return self._by_id.pop(session_id or "", None)

    def end_user(self, user: str) -> None:
        with self._lock:
            for sid in [sid for sid, s in self._by_id.items() if s.user == user]:
                del self._by_id[sid]

    def max_age(self, session: Session) -> int:
        return max(0, math.ceil(session.created + self.lifetime_s - self.clock()))


def tokens_match(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; a missing token on either side never matches."""
    return bool(expected) and bool(given) and hmac.compare_digest(expected.encode(), given.encode())


def new_token() -> str:
    return secrets.token_urlsafe(32)


def cookies(header: str | None) -> dict[str, str]:
    """Cookie header → name → value; a malformed header yields no cookies."""
    jar = SimpleCookie()
    try:
        jar.load(header or "")
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def set_cookie(name: str, value: str, max_age: int, secure: bool) -> str:
    """A Set-Cookie value: host-only, whole site, not readable by scripts, never sent cross-site."""
    return (f"{name}={value}; Path=/; Max-Age={int(max_age)}; HttpOnly; SameSite=Strict"
            + ("; Secure" if secure else ""))


# --- request checks ----------------------------------------------------------------------------------------

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
                               "object-src 'none'; img-src 'self' data:",  # data: the chart library's probe image
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def content_length(value: str | None, limit: int = MAX_BODY) -> int:
    """The body length a POST announces, checked before a byte of it is read."""
    if value is None or value.strip() == "":
        raise Refused(HTTPStatus.LENGTH_REQUIRED, "a form needs a Content-Length")
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise Refused(HTTPStatus.BAD_REQUEST, f"Content-Length is not a number: {value[:40]!r}")
    length = int(text[:20]) if len(text) <= 20 else limit + 1
    if length > limit:
        raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {text[:20]} bytes; at most {limit} accepted")
    return length


def allowed_hosts(bind_host: str, port: int, names: Iterable[str] = ()) -> frozenset[str]:
    """The Host header values the NOC answers: the configured names (with and without the port) and, unless it
    listens on every interface, the bind address and the loopback names."""
    hosts: set[str] = set()
    local = [] if bind_host in ("", "0.0.0.0", "::") else [bind_host]
    if bind_host in ("127.0.0.1", "localhost", "::1"):
        local += ["127.0.0.1", "localhost", "[::1]"]
    for name in [*local, *names]:
        name = name.strip().lower()
        if not name:
            continue
        if ":" in name and not name.startswith("[") and name.count(":") > 1:
            name = f"[{name}]"  # an IPv6 literal
        if re.search(r":\d+$", name):
            hosts.add(name)
        else:
            hosts.update({name, f"{name}:{port}"})
    return frozenset(hosts)


def host_allowed(host: str | None, allowed: frozenset[str] | set[str]) -> bool:
    """DNS rebinding defence: a page fetched under another name must not reach the NOC."""
    return bool(host) and host.strip().lower() in allowed


def check_origin(headers: Mapping[str, str], allowed: frozenset[str] | set[str]) -> None:
    """A POST must say it comes from one of the NOC's own pages: Origin (or, without one, Referer) with an
    allowed host. ``Origin: null`` (sandboxed frames, file: pages, some redirects) is refused."""
    origin = headers.get("Origin")
    source = origin if origin is not None else headers.get("Referer")
    if source is None:
        raise Refused(HTTPStatus.FORBIDDEN, "the form carries no Origin or Referer")
    if source.strip() == "null":
        raise Refused(HTTPStatus.FORBIDDEN, "the form came from an opaque origin (Origin: null)")
    parts = urlsplit(source.strip())
    if parts.scheme not in ("http", "https") or not host_allowed(parts.netloc, allowed):
        raise Refused(HTTPStatus.FORBIDDEN, f"the form came from {source[:100]!r}, not from this NOC")


@dataclass(frozen=True)
class ProxyAuth:
    """The site's reverse proxy at ``addresses``: its X-Forwarded-Proto (https: cookies are Secure) and
    X-Forwarded-For are believed, and when ``header`` is set a request from it names its authenticated user
    there. That user must exist in the user store, which gives the role. Requests from anywhere else are
    judged on their own: the headers mean nothing."""

    header: str
    addresses: frozenset[str]

    def user(self, peer: str, headers: Mapping[str, str]) -> str | None:
        if not self.header or peer not in self.addresses:
            return None
        value = headers.get(self.header)
        return value.strip() if value and value.strip() else None

    def https(self, peer: str, headers: Mapping[str, str]) -> bool:
        return peer in self.addresses and (headers.get("X-Forwarded-Proto") or "").strip().lower() == "https"
