"""The NOC server (Starlette under uvicorn) without a broker (records go to an outbox the test reads): login,
sessions, roles, CSRF, forged and malformed requests, security headers and clear pages when the DuckDB file
is missing. Each refusal here was accepted, or crashed, before the NOC had users."""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from urllib.parse import urlencode

import pytest
from argon2 import PasswordHasher

from opsloop.config.settings import Settings
from opsloop.connectors.duckdb import open_db
from opsloop.ops import noc as noc_module
from opsloop.ops import noc_web
from opsloop.ops.noc import make_access, make_server
from opsloop.ops.noc_auth import Role, UserStore

pytestmark = pytest.mark.unit
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
FEEDBACK_SECRET = "NOCUNITFEEDBACKSECRET-" + "5" * 20
VERDICT_SECRET = "NOCUNITVERDICTSECRET-" + "6" * 20
PASSWORDS = {"ana": "ana's long password", "vic": "vic's long password", "ada": "ada's long password"}


class FakeOutbox:
    def __init__(self):
        self.sent: list[tuple[str, dict]] = []
        self.fail = False

    def send(self, records, wait=True, timeout_s=10.0):
        if self.fail and wait:
            raise RuntimeError("broker down")
        self.sent.extend(records)

    def close(self, timeout_s=5.0):
        pass

    def events(self) -> list[tuple]:
        return [(r["event"], r["actor"], r["target"]) for topic, r in self.sent if topic == "noc.audit"]


def start(settings: Settings, users: UserStore, **changes):
    settings = settings.replace(**changes)
    outbox = FakeOutbox()
    server = make_server(settings, "127.0.0.1", 0, outbox=outbox)
    server.access = make_access(settings, "127.0.0.1", server.server_address[1], users)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    wait_serving(server)
    return server, outbox, thread


def wait_serving(server) -> None:
    """uvicorn starts in its thread: wait until it answers (the socket is bound already)."""
    for _ in range(100):
        try:
            conn = http.client.HTTPConnection(*server.server_address[:2], timeout=5)
            conn.request("GET", "/noc.css", headers={"Host": "%s:%d" % server.server_address[:2]})
            conn.getresponse().read()
            conn.close()
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)


@pytest.fixture
def users(tmp_path):
    store = UserStore(tmp_path / "users.json", hasher=FAST)
    store.add("ana", Role.OPERATOR, PASSWORDS["ana"])
    store.add("vic", Role.VIEWER, PASSWORDS["vic"])
    store.add("ada", Role.ADMIN, PASSWORDS["ada"])
    return store


@pytest.fixture
def settings(tmp_path):
    return Settings(duckdb_path=tmp_path / "ops.duckdb", broker="127.0.0.1:9", topic_prefix="t.",
                    feedback_key=f"f1:{FEEDBACK_SECRET}", verdict_key=f"v1:{VERDICT_SECRET}")


@pytest.fixture
def noc(settings, users):
    server, outbox, thread = start(settings, users)
    server.outbox_fake = outbox
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


class Client:
    """A browser-like client: keeps cookies, sends the NOC's own Origin on POSTs."""

    def __init__(self, server):
        self.host, self.port = server.server_address[:2]
        self.origin = f"http://{self.host}:{self.port}"
        self.jar: dict[str, str] = {}

    def request(self, method, path, form=None, headers=None, body=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        data = body if body is not None else (urlencode(form).encode() if form is not None else None)
        base = {"Host": f"{self.host}:{self.port}"}
        if method == "POST":
            base.update({"Origin": self.origin, "Content-Type": "application/x-www-form-urlencoded"})
        if self.jar:
            base["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        base.update(headers or {})
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in base.items():
            if value is not None:
                conn.putheader(name, value)
        if data is not None and "Content-Length" not in base:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        resp = conn.getresponse()
        page = resp.read().decode()
        for cookie in resp.headers.get_all("Set-Cookie") or []:
            name, value = cookie.split(";")[0].split("=", 1)
            if value:
                self.jar[name] = value
            else:
                self.jar.pop(name, None)
        conn.close()
        return resp, page

    def csrf(self, page: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]*)"', page).group(1)

    def login(self, name, password=None):
        _, page = self.request("GET", "/login")
        return self.request("POST", "/login", {"csrf_token": self.csrf(page), "username": name,
                                                "password": password or PASSWORDS[name]})


def logged_in(noc, name) -> tuple[Client, str]:
    client = Client(noc)
    resp, _ = client.login(name)
    assert resp.status == 303 and resp.headers["Location"] == "/"
    resp, page = client.request("GET", "/")
    return client, page


def test_the_page_needs_a_login_and_sends_security_headers(noc):
    client = Client(noc)
    resp, _ = client.request("GET", "/")
    assert resp.status == 303 and resp.headers["Location"] == "/login"
    resp, page = client.request("GET", "/login")
    assert resp.status == 200 and 'type="password"' in page
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'; frame-ancestors 'none'")
    assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "same-origin" and resp.headers["Cache-Control"] == "no-store"
    assert "HttpOnly; SameSite=Strict" in resp.headers["Set-Cookie"] and "Secure" not in resp.headers["Set-Cookie"]
    resp, css = client.request("GET", "/noc.css")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/css") and "font-family" in css


def test_login_sets_a_strict_httponly_session_and_is_audited(noc):
    client = Client(noc)
    resp, _ = client.login("ana")
    session_cookie = [c for c in resp.headers.get_all("Set-Cookie") if c.startswith("noc_session=")][0]
    assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie and "Max-Age=28800" in session_cookie
    assert len(client.jar["noc_session"]) >= 43
    resp, page = client.request("GET", "/")
    assert resp.status == 503 and "No DuckDB file at" in page  # logged in; the views are not there yet
    assert "approving as <strong>ana</strong> (operator)" in page
    assert noc.outbox_fake.events() == [("login", "ana", None)]
    record = noc.outbox_fake.sent[0][1]
    assert record["role"] == "operator" and record["client"] == "127.0.0.1" and record["source"] == "noc"


def test_wrong_password_fails_is_audited_and_locks_after_five(noc):
    client = Client(noc)
    for _ in range(5):
        resp, page = client.login("ana", "not the password at all")
        assert resp.status == 401 and "Wrong user name or password" in page and "noc_session" not in client.jar
    resp, page = client.login("ana")  # the right password, but locked for now
    assert resp.status == 429 and "noc_session" not in client.jar
    events = noc.outbox_fake.events()
    assert events == [("login_failed", "ana", None)] * 6
    assert all("not the password" not in str(r) for _, r in noc.outbox_fake.sent)  # no secret in the trail


def test_login_form_needs_its_csrf_token(noc):
    client = Client(noc)
    client.request("GET", "/login")
    resp, _ = client.request("POST", "/login", {"csrf_token": "guessed", "username": "ana",
                                                  "password": PASSWORDS["ana"]})
    assert resp.status == 403 and "noc_session" not in client.jar
    fresh = Client(noc)  # no login cookie at all (a cross-site form never has it)
    resp, _ = fresh.request("POST", "/login", {"csrf_token": "", "username": "ana", "password": PASSWORDS["ana"]})
    assert resp.status == 403


def test_operator_approval_carries_the_user_and_lands_on_the_audit_trail(noc, monkeypatch):
    monkeypatch.setattr(noc_web, "action_verdict", lambda views, action_id: ("needs_approval", None))
    client, page = logged_in(noc, "ana")
    resp, _ = client.request("POST", "/feedback", {"action_id": "a1", "kind": "approve_action",
                                                    "csrf_token": client.csrf(page)})
    assert resp.status == 303 and resp.headers["Location"] == "/actions"
    resp, page = client.request("GET", "/actions")
    assert "a1: approval sent to the guard as ana." in page
    assert "approval sent" not in client.request("GET", "/")[1]  # once
    assert "Approve everything" not in client.request("GET", "/?notice=Approve+everything")[1]  # no text from links
    (feedback,) = [r for topic, r in noc.outbox_fake.sent if topic == "operator.feedback"]
    assert (feedback["target_id"], feedback["kind"], feedback["operator"]) == ("a1", "approve_action", "ana")
    assert feedback["key_id"] == "f1" and feedback["signature"]  # the guard answers only signed feedback
    assert noc.outbox_fake.events()[-1] == ("approve_action", "ana", "a1")
    resp, _ = client.request("POST", "/feedback", {"action_id": "a2", "kind": "reject_action",
                                                    "csrf_token": client.csrf(page)})
    assert resp.status == 303 and noc.outbox_fake.events()[-1] == ("reject_action", "ana", "a2")


def test_viewer_sees_no_buttons_and_cannot_approve(noc, monkeypatch):
    monkeypatch.setattr(noc_web, "action_verdict", lambda views, action_id: ("needs_approval", None))
    client, page = logged_in(noc, "vic")
    assert "viewing as <strong>vic</strong> (viewer)" in page
    resp, page = client.request("POST", "/feedback", {"action_id": "a1", "kind": "approve_action",
                                                       "csrf_token": client.csrf(page)})
    assert resp.status == 403 and "needs the operator role" in page
    assert not [r for topic, r in noc.outbox_fake.sent if topic == "operator.feedback"]
    assert noc.outbox_fake.events()[-1] == ("denied", "vic", "a1")


@pytest.mark.parametrize("forge, status", [
    (lambda c, tok: ({"action_id": "a1", "kind": "approve_action", "csrf_token": tok}, {"Cookie": None}), 401),
    (lambda c, tok: ({"action_id": "a1", "kind": "approve_action", "csrf_token": "forged"}, {}), 403),
    (lambda c, tok: ({"action_id": "a1", "kind": "approve_action"}, {}), 403),
    (lambda c, tok: ({"action_id": "a1", "kind": "approve_action", "csrf_token": tok}, {"Origin": "null"}), 403),
    (lambda c, tok: ({"action_id": "a1", "kind": "approve_action", "csrf_token": tok}, {"Origin": None}), 403),
    (lambda c, tok: ({"action_id": "a1", "kind": "approve_action", "csrf_token": tok},
                     {"Origin": "http://elsewhere.example"}), 403),
    (lambda c, tok: ({"action_id": "a1", "kind": "approve_action", "csrf_token": tok},  # DNS rebinding
                     {"Host": f"evil.example:{c.port}", "Origin": f"http://evil.example:{c.port}"}), 421),
])
def test_forged_approvals_are_refused(noc, monkeypatch, forge, status):
    monkeypatch.setattr(noc_web, "action_verdict", lambda views, action_id: ("needs_approval", None))
    client, page = logged_in(noc, "ana")
    form, headers = forge(client, client.csrf(page))
    resp, page = client.request("POST", "/feedback", form, headers)
    assert resp.status == status and "Nothing done" in page
    assert not [r for topic, r in noc.outbox_fake.sent if topic == "operator.feedback"]


def test_a_rebinding_host_cannot_even_read_the_page(noc):
    client, _ = logged_in(noc, "ana")
    resp, _ = client.request("GET", "/", headers={"Host": f"evil.example:{client.port}"})
    assert resp.status == 421
    resp, _ = client.request("GET", "/", headers={"Host": None})
    assert resp.status in (400, 421)


def test_feedback_checks_after_login(noc):
    open_db(noc.settings.duckdb_file).close()  # the sink's tables and views, no rows
    client, page = logged_in(noc, "ana")
    assert "No site power yet" in page
    assert "No actions proposed" in client.request("GET", "/actions")[1]
    token = client.csrf(page)
    resp, page = client.request("POST", "/feedback", {"action_id": "nobody-proposed-this", "kind": "approve_action",
                                                       "csrf_token": token})
    assert resp.status == 409 and "not waiting for approval" in page
    resp, page = client.request("POST", "/feedback", {"action_id": "a1", "kind": "delete_everything",
                                                       "csrf_token": token})
    assert resp.status == 400 and "Bad feedback" in page
    assert client.request("GET", "/nowhere")[0].status == 404


def test_a_failed_send_is_shown(noc, monkeypatch):
    monkeypatch.setattr(noc_web, "action_verdict", lambda views, action_id: ("needs_approval", None))
    client, page = logged_in(noc, "ana")
    noc.outbox_fake.fail = True
    resp, page = client.request("POST", "/feedback", {"action_id": "a1", "kind": "approve_action",
                                                       "csrf_token": client.csrf(page)})
    assert resp.status == 502 and "Could not send approve_action for a1: broker down" in page


def test_admin_sees_the_audit_trail_others_do_not(noc):
    open_db(noc.settings.duckdb_file).close()
    client, page = logged_in(noc, "ada")
    assert 'href="/audit"' in page
    assert "No audit events yet" in client.request("GET", "/audit")[1]
    client, page = logged_in(noc, "ana")
    assert 'href="/audit"' not in page
    resp, page = client.request("GET", "/audit")
    assert resp.status == 404 and "No audit events" not in page


def test_logout_needs_the_token_and_ends_the_session(noc):
    client, page = logged_in(noc, "ana")
    resp, _ = client.request("POST", "/logout", {"csrf_token": "forged"})
    assert resp.status == 403
    resp, _ = client.request("POST", "/logout", {"csrf_token": client.csrf(page)})
    assert resp.status == 303 and resp.headers["Location"].startswith("/login")
    assert "noc_session" not in client.jar
    assert "Logged out." in client.request("GET", resp.headers["Location"])[1]
    assert noc.outbox_fake.events()[-1] == ("logout", "ana", None)


def test_a_removed_user_is_out_at_the_next_request(noc, users):
    client, _ = logged_in(noc, "ana")
    UserStore(users.path, hasher=FAST).remove("ana")  # as `opsloop noc user remove` does, from another process
    time.sleep(0.01)
    resp, _ = client.request("GET", "/")
    assert resp.status == 303 and resp.headers["Location"] == "/login"


def test_a_login_replaces_the_session_id(noc):
    planted = Client(noc)
    planted.jar["noc_session"] = "chosen-by-an-attacker"
    planted.login("ana")
    assert planted.jar["noc_session"] != "chosen-by-an-attacker"
    client, _ = logged_in(noc, "ana")
    first = client.jar["noc_session"]
    form_from = Client(noc)
    _, page = form_from.request("GET", "/login")
    client.jar["noc_login"] = form_from.jar["noc_login"]
    client.request("POST", "/login", {"csrf_token": form_from.csrf(page), "username": "ana",
                                      "password": PASSWORDS["ana"]})
    assert client.jar["noc_session"] != first
    stale = Client(noc)
    stale.jar["noc_session"] = first
    assert stale.request("GET", "/")[0].status == 303


def raw(server, head: bytes, body: bytes = b"", read_timeout: float = 30) -> bytes:
    with socket.create_connection(server.server_address[:2], timeout=read_timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def post_head(server, length: str, extra: str = "") -> bytes:
    host = "%s:%d" % server.server_address[:2]
    return (f"POST /feedback HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


# h11 (under uvicorn) refuses lengths it cannot parse, an absurdly long one included, before the NOC sees them
@pytest.mark.parametrize("length, status", [("abc", b"400"), ("-5", b"400"), ("209715200", b"413"),
                                            ("9" * 40, b"400"), ("", b"400")])
def test_garbage_and_huge_lengths_are_refused_without_reading(noc, length, status):
    started = time.monotonic()
    answer = raw(noc, post_head(noc, length), b"x" * 1024)  # no 200 MB: the answer comes before any body
    assert answer.startswith(b"HTTP/1.0 " + status) or answer.startswith(b"HTTP/1.1 " + status), answer[:80]
    assert b"connection: close" in answer.lower() and time.monotonic() - started < 5


def test_a_big_body_is_refused_before_it_is_sent(noc):
    head = post_head(noc, str(200 * 1024 * 1024))
    with socket.create_connection(noc.server_address[:2], timeout=10) as sock:
        sock.sendall(head)
        sent = 0
        try:
            while sent < 8 * 1024 * 1024:  # the server answers and closes long before 200 MB
                sock.sendall(b"x" * 65536)
                sent += 65536
        except OSError:
            pass
        assert sock.recv(64).startswith(b"HTTP/1.1 413")


def test_a_stalled_body_times_out(noc, monkeypatch):
    monkeypatch.setattr(noc_web, "BODY_TIMEOUT_S", 0.5)
    started = time.monotonic()
    answer = raw(noc, post_head(noc, "100"), b"action_id=a1")  # promises 100 bytes, sends 12, then waits
    assert time.monotonic() - started < 10
    assert answer == b"" or answer.split(b" ")[1] in (b"408", b"400")


def test_chunked_bodies_are_refused(noc):
    host = "%s:%d" % noc.server_address[:2]
    head = (f"POST /feedback HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    assert raw(noc, head, b"5\r\nhello\r\n0\r\n\r\n").split(b" ")[1] == b"400"


def test_the_proxys_user_header_logs_in_only_from_the_proxy(settings, users):
    server, outbox, thread = start(settings, users, noc_trusted_proxy="127.0.0.1",
                                   noc_proxy_user_header="X-Forwarded-User")
    try:
        client = Client(server)
        resp, page = client.request("GET", "/", headers={"X-Forwarded-User": "ana", "X-Forwarded-Proto": "https",
                                                         "X-Forwarded-For": "192.0.2.7"})
        assert resp.status == 503 and "approving as <strong>ana</strong>" in page
        assert [c for c in resp.headers.get_all("Set-Cookie") if c.startswith("noc_session=")][0].endswith("; Secure")
        assert outbox.events() == [("login", "ana", None)]
        assert outbox.sent[0][1]["client"] == "192.0.2.7 via 127.0.0.1"
        resp, _ = Client(server).request("GET", "/", headers={"X-Forwarded-User": "mallory"})
        assert resp.status == 403
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    server, outbox, thread = start(settings, users, noc_trusted_proxy="192.0.2.1",
                                   noc_proxy_user_header="X-Forwarded-User")
    try:
        resp, _ = Client(server).request("GET", "/", headers={"X-Forwarded-User": "ana"})
        assert resp.status == 303  # not from the proxy: the header means nothing
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_every_interface_needs_allowed_names(settings, users):
    with pytest.raises(ValueError, match="OPSLOOP_NOC_ALLOWED_HOSTS"):
        make_access(settings, "0.0.0.0", 8088, users)
    with pytest.raises(ValueError, match="OPSLOOP_NOC_TRUSTED_PROXY"):
        make_access(settings.replace(noc_proxy_user_header="X-Forwarded-User"), "127.0.0.1", 8088, users)


def test_a_tls_proxy_without_a_user_header_still_gets_secure_cookies(settings, users):
    server, outbox, thread = start(settings, users, noc_trusted_proxy="127.0.0.1")
    try:
        client = Client(server)
        resp, _ = client.request("GET", "/", headers={"X-Forwarded-User": "ana"})
        assert resp.status == 303  # no user header configured: the login form it is
        resp, _ = client.request("GET", "/login", headers={"X-Forwarded-Proto": "https"})
        assert resp.headers["Set-Cookie"].endswith("; Secure")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_refusals_carry_the_security_headers_and_huge_heads_are_refused(noc):
    client = Client(noc)
    resp, page = client.request("PUT", "/", body=b"")
    assert resp.status == 501 and resp.headers["X-Frame-Options"] == "DENY" and "Nothing done" in page
    resp, page = client.request("GET", "/nowhere")
    assert resp.status == 404 and resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
    answer = raw(noc, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")  # over the 16 KiB head limit
    assert answer.split(b" ")[1] in (b"400", b"431", b"414")


def test_audit_text_is_cleaned_and_no_password_is_kept_as_a_name():
    record = noc_module.audit_record("login_failed", "ana\nINFO forged line", "127.0.0.1\r", target="a\x1b[31m")
    assert record["actor"] == "ana?INFO forged line" and record["client"] == "127.0.0.1?" and record["target"] == "a?[31m"
    assert noc_module.tried_name("ana") == "ana"
    assert noc_module.tried_name("my secret passphrase") == "(not a user name)"


def test_connections_beyond_the_limit_are_turned_away(settings, users, monkeypatch):
    monkeypatch.setattr(noc_module.NocServer, "max_connections", 2)
    noc, _, thread = start(settings, users)
    idle = [socket.create_connection(noc.server_address[:2], timeout=10) for _ in range(2)]
    try:
        time.sleep(0.3)  # both accepted and waiting for a request line
        with socket.create_connection(noc.server_address[:2], timeout=10) as third:
            third.sendall(b"GET /login HTTP/1.0\r\n\r\n")
            assert third.recv(64).split(b" ")[1] == b"503"  # answered at once, never queued
    finally:
        for sock in idle:
            sock.close()
    for _ in range(50):  # the freed threads notice the closed sockets
        try:
            if Client(noc).request("GET", "/login")[0].status == 200:
                break
        except (ConnectionError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    else:
        pytest.fail("the NOC did not serve again after idle connections closed")
    noc.shutdown()
    noc.server_close()
    thread.join()


def test_over_tls_the_cookies_are_secure(settings, users, tmp_path):
    import shutil
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("no openssl to make a test certificate")
    cert, key = tmp_path / "noc.pem", tmp_path / "noc.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True, timeout=60)
    server, outbox, thread = start(settings, users, noc_tls_cert=cert, noc_tls_key=key)
    try:
        assert server.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        conn = http.client.HTTPSConnection(*server.server_address[:2], timeout=30, context=ctx)
        conn.request("GET", "/login")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and resp.headers["Set-Cookie"].endswith("; Secure")
        conn.close()
        with socket.create_connection(server.server_address[:2], timeout=10) as plain:  # no TLS: no answer
            plain.sendall(b"GET /login HTTP/1.0\r\n\r\n")
            try:
                assert not plain.recv(64).startswith(b"HTTP/")
            except ConnectionResetError:
                pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_v_audit_reads_the_audit_table_newest_first(tmp_path):
    con = open_db(tmp_path / "v.duckdb")
    try:
        for ts, event in ((1_000, "login"), (2_000, "approve_action")):
            record = noc_module.audit_record(event, "ana", "127.0.0.1", role="operator", target="a1", ts_ms=ts)
            con.execute("INSERT INTO noc_audit BY NAME SELECT ?::BIGINT AS ts_ms, ? AS event, ? AS actor, ? AS role, "
                        "? AS target, ? AS client, ? AS source, ? AS detail, 0 AS _partition, ?::BIGINT AS _offset",
                        [record[k] for k in ("ts_ms", "event", "actor", "role", "target", "client", "source",
                                             "detail")] + [ts])
        rows = con.execute("SELECT epoch_ms(time), event, actor, role, target, client, source FROM v_audit").fetchall()
    finally:
        con.close()
    assert rows == [(2_000, "approve_action", "ana", "operator", "a1", "127.0.0.1", "noc"),
                    (1_000, "login", "ana", "operator", "a1", "127.0.0.1", "noc")]


def test_a_trickling_request_is_cut_off(noc, monkeypatch):
    monkeypatch.setattr(noc_web.HeadDeadline, "deadline_s", 0.5)
    started = time.monotonic()
    with socket.create_connection(noc.server_address[:2], timeout=10) as sock:
        sock.sendall(b"GET /login HTTP/1.1\r\n")
        try:
            for _ in range(50):  # a header byte every 0.1 s: each read is in time, the request never ends
                sock.sendall(b"X")
                time.sleep(0.1)
        except OSError:
            pass
        try:
            assert sock.recv(64) == b""
        except ConnectionResetError:
            pass
    assert time.monotonic() - started < 4


def test_no_password_or_token_reaches_a_log_line(noc, caplog):
    caplog.set_level("DEBUG")
    client = Client(noc)
    client.login("ana", "a wrong but long password")
    client.login("ana")
    _, page = client.request("GET", "/")
    client.request("POST", "/logout", {"csrf_token": client.csrf(page)})
    text = caplog.text + repr(noc.outbox_fake.sent)
    assert "audit: login by ana" in caplog.text
    for secret in ("a wrong but long password", PASSWORDS["ana"], client.csrf(page)):
        assert secret not in text


def test_no_signing_key_reaches_the_page_its_errors_or_the_log(noc, monkeypatch, caplog):
    caplog.set_level("DEBUG")
    monkeypatch.setattr(noc_web, "action_verdict", lambda views, action_id: ("needs_approval", None))
    client, page = logged_in(noc, "ana")
    pages = [page, client.request("GET", "/?notice=hello")[1], client.request("GET", "/nowhere")[1]]
    pages.append(client.request("POST", "/feedback", {"action_id": "a1", "kind": "approve_action",
                                                       "csrf_token": client.csrf(page)})[1])
    records = [str(record) for _, record in noc.outbox_fake.sent]
    for text in pages + records + [caplog.text, repr(noc.settings)]:
        assert FEEDBACK_SECRET not in text and VERDICT_SECRET not in text


def test_without_a_feedback_key_nothing_is_sent_and_the_page_says_why(settings, users, monkeypatch):
    monkeypatch.setattr(noc_web, "action_verdict", lambda views, action_id: ("needs_approval", None))
    server, outbox, thread = start(settings, users, feedback_key="")
    try:
        client, page = logged_in(server, "ana")
        resp, page = client.request("POST", "/feedback", {"action_id": "a1", "kind": "approve_action",
                                                           "csrf_token": client.csrf(page)})
        assert resp.status == 503 and "OPSLOOP_FEEDBACK_KEY" in page
        assert [topic for topic, _ in outbox.sent] == ["noc.audit"]  # the login; no feedback
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_event_stream_wakes_when_the_views_agent_in_its_process_stores_a_batch(tmp_path):
    """With --with-views a page's stream looks again as soon as the sink stored a batch (not a whole LIVE_S later);
    over a file nobody here writes it waits its full interval."""
    import asyncio

    from opsloop.ops.noc_core import FileViews, LiveViews
    from opsloop.schemas.codec import Codec
    from opsloop.streams.views import ViewsSink
    from consumed import Msg

    settings = Settings(duckdb_path=tmp_path / "views.duckdb", topic_prefix="noc-test.")
    sink = ViewsSink(settings, topics=["noc.audit"])
    audit = Codec.default().encode("AuditEvent", noc_module.audit_record("login", "ana", "127.0.0.1"))
    timer = threading.Timer(0.3, sink.write_batch, [[Msg("noc-test.noc.audit", 0, 0, audit)]])
    try:
        began = time.monotonic()
        timer.start()
        waited = asyncio.run(noc_web._until_changed(LiveViews(sink), 30.0))
        assert time.monotonic() - began < 15 and waited < 15 and sink.version == 1
    finally:
        timer.join()
        sink.close()
    assert asyncio.run(noc_web._until_changed(FileViews(tmp_path / "views.duckdb"), 0.2)) == 0.2
