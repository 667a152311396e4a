"""The NOC's auth core without a server: password hashing, the user file, roles, sessions, CSRF tokens, login
throttling, the Host allow-list, same-origin POSTs, body length limits and the trusted proxy."""

from __future__ import annotations

import json
import stat
from http import HTTPStatus

import pytest
from argon2 import PasswordHasher

from opsloop.ops.noc_auth import (MAX_BODY, LoginThrottle, ProxyAuth, Refused, Role, Sessions, UserStore,
                                  allowed_hosts, check_origin, content_length, cookies, host_allowed, set_cookie,
                                  tokens_match)

pytestmark = pytest.mark.unit
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)  # argon2id, cheap enough for tests
PASSWORD = "correct horse battery"


@pytest.fixture
def store(tmp_path):
    return UserStore(tmp_path / "noc" / "users.json", hasher=FAST)


def test_passwords_are_stored_as_argon2id_hashes_in_a_private_file(store):
    store.add("ana", Role.OPERATOR, PASSWORD)
    raw = store.path.read_text()
    assert PASSWORD not in raw and "$argon2id$" in raw
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert json.loads(raw)["users"][0] == {"name": "ana", "role": "operator", "hash": store.get("ana").password_hash,
                                           "created_ms": store.get("ana").created_ms}
    assert PASSWORD not in repr(store.get("ana"))


def test_verify_accepts_only_the_right_password(store):
    store.add("ana", Role.ADMIN, PASSWORD)
    assert store.verify("ana", PASSWORD).role is Role.ADMIN
    assert store.verify("ana", PASSWORD + "x") is None
    assert store.verify("nobody", PASSWORD) is None
    assert store.verify("", "") is None and store.verify("../etc", PASSWORD) is None


def test_users_are_added_once_replaced_on_request_and_removed(store):
    store.add("ana", Role.VIEWER, PASSWORD)
    with pytest.raises(ValueError, match="exists"):
        store.add("ana", Role.ADMIN, PASSWORD)
    store.add("ana", Role.ADMIN, PASSWORD + "!", replace=True)
    assert store.get("ana").role is Role.ADMIN and store.verify("ana", PASSWORD) is None
    assert store.remove("ana") and not store.remove("ana") and store.list() == []


@pytest.mark.parametrize("name, password, error", [
    ("ana", "short", "too short"), ("", PASSWORD, "bad user name"), ("a b", PASSWORD, "bad user name"),
    ("<script>", PASSWORD, "bad user name"), ("x" * 65, PASSWORD, "bad user name"),
])
def test_bad_names_and_short_passwords_are_refused(store, name, password, error):
    with pytest.raises(ValueError, match=error):
        store.add(name, Role.VIEWER, password)


def test_a_second_store_on_the_same_file_sees_changes(store):
    server_side = UserStore(store.path, hasher=FAST)
    assert server_side.get("ana") is None
    store.add("ana", Role.OPERATOR, PASSWORD)
    assert server_side.get("ana").role is Role.OPERATOR
    store.remove("ana")
    assert server_side.get("ana") is None


def test_roles_are_ordered():
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.OPERATOR)
    assert not Role.VIEWER.allows(Role.OPERATOR) and not Role.OPERATOR.allows(Role.ADMIN)
    with pytest.raises(ValueError, match="unknown role"):
        Role.parse("root")


def test_sessions_have_random_ids_own_csrf_tokens_and_expire():
    now = [1000.0]
    sessions = Sessions(lifetime_s=3600, idle_s=600, clock=lambda: now[0])
    a, b = sessions.create("ana"), sessions.create("ana")
    assert a.id != b.id and a.csrf != b.csrf and len(a.id) >= 43  # 256 random bits, base64
    assert sessions.get(a.id) is a and sessions.get("forged") is None and sessions.get(None) is None
    now[0] += 599
    assert sessions.get(a.id) is a  # seen: the idle clock restarts
    now[0] += 601
    assert sessions.get(b.id) is None  # idle too long
    for _ in range(6):
        now[0] += 500
        sessions.get(a.id)
    assert sessions.get(a.id) is None  # past its lifetime however active
    c = sessions.create("bo")
    sessions.end_user("bo")
    assert sessions.get(c.id) is None


def test_csrf_tokens_compare_exactly_and_never_when_missing():
    assert tokens_match("abc", "abc")
    assert not tokens_match("abc", "abd") and not tokens_match("abc", None) and not tokens_match("", "")
    assert not tokens_match(None, None)


def test_cookies_are_httponly_strict_and_secure_when_asked():
    assert set_cookie("noc_session", "x", 60, secure=False) == "noc_session=x; Path=/; Max-Age=60; HttpOnly; SameSite=Strict"
    assert set_cookie("noc_session", "x", 60, secure=True).endswith("; Secure")
    assert cookies("a=1; noc_session=abc") == {"a": "1", "noc_session": "abc"}
    assert cookies('bad"cookie') == {} or "noc_session" not in cookies('bad"cookie')


def test_login_throttle_locks_a_name_after_repeated_failures():
    now = [0.0]
    throttle = LoginThrottle(limit=3, window_s=60, lock_s=120, clock=lambda: now[0])
    for _ in range(3):
        assert not throttle.locked("ana")
        throttle.failed("ana")
    assert throttle.locked("ana") and not throttle.locked("bo")
    now[0] += 100
    assert throttle.locked("ana")  # out of the window, still within the lock
    now[0] += 100
    assert not throttle.locked("ana")
    throttle.failed("ana")
    throttle.succeeded("ana")
    assert not throttle.locked("ana")


@pytest.mark.parametrize("value, status", [
    (None, HTTPStatus.LENGTH_REQUIRED), ("", HTTPStatus.LENGTH_REQUIRED), ("abc", HTTPStatus.BAD_REQUEST),
    ("-5", HTTPStatus.BAD_REQUEST), ("1e3", HTTPStatus.BAD_REQUEST), ("٣", HTTPStatus.BAD_REQUEST),
    (str(MAX_BODY + 1), HTTPStatus.REQUEST_ENTITY_TOO_LARGE), ("209715200", HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
    ("9" * 400, HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
])
def test_content_length_is_checked_before_reading(value, status):
    with pytest.raises(Refused) as refused:
        content_length(value)
    assert refused.value.status == status


def test_content_length_within_the_limit():
    assert content_length("0") == 0 and content_length(f" {MAX_BODY} ") == MAX_BODY


def test_allowed_hosts_from_the_bind_address_and_names():
    local = allowed_hosts("127.0.0.1", 8088)
    assert host_allowed("127.0.0.1:8088", local) and host_allowed("localhost:8088", local)
    assert host_allowed("LOCALHOST:8088", local)
    assert not host_allowed("evil.example:8088", local) and not host_allowed(None, local)
    assert not host_allowed("127.0.0.1:9999", local)
    public = allowed_hosts("0.0.0.0", 8443, ["noc.site.example", "noc2.example:443"])
    assert host_allowed("noc.site.example", public) and host_allowed("noc.site.example:8443", public)
    assert host_allowed("noc2.example:443", public) and not host_allowed("noc2.example", public)
    assert not host_allowed("0.0.0.0:8443", public) and not host_allowed("127.0.0.1:8443", public)


@pytest.mark.parametrize("headers, ok", [
    ({"Origin": "http://127.0.0.1:8088"}, True),
    ({"Referer": "http://127.0.0.1:8088/"}, True),  # no Origin: the Referer decides
    ({"Origin": "null"}, False),
    ({}, False),
    ({"Origin": "http://evil.example:8088"}, False),
    ({"Origin": "http://127.0.0.1:8088.evil.example"}, False),
    ({"Origin": "javascript://127.0.0.1:8088"}, False),
    ({"Origin": "null", "Referer": "http://127.0.0.1:8088/"}, False),
])
def test_posts_must_come_from_the_nocs_own_origin(headers, ok):
    allowed = allowed_hosts("127.0.0.1", 8088)
    if ok:
        check_origin(headers, allowed)
    else:
        with pytest.raises(Refused) as refused:
            check_origin(headers, allowed)
        assert refused.value.status == HTTPStatus.FORBIDDEN


def test_the_proxy_header_counts_only_from_the_proxy():
    proxy = ProxyAuth("X-Forwarded-User", frozenset({"10.0.0.5"}))
    assert proxy.user("10.0.0.5", {"X-Forwarded-User": "ana"}) == "ana"
    assert proxy.user("10.0.0.6", {"X-Forwarded-User": "ana"}) is None
    assert proxy.user("10.0.0.5", {"X-Forwarded-User": "  "}) is None
    assert proxy.https("10.0.0.5", {"X-Forwarded-Proto": "https"})
    assert not proxy.https("10.0.0.6", {"X-Forwarded-Proto": "https"})
