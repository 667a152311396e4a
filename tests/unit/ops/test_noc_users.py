"""`opsloop noc user add|list|remove`: passwords from stdin (never argv), no default user, audit attempted."""

from __future__ import annotations

import io

import pytest

from opsloop.ops import cli
from opsloop.ops.noc_auth import Role, UserStore

pytestmark = pytest.mark.unit


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSLOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OPSLOOP_BROKER", "127.0.0.1:9")  # nothing listens: the audit record is not sent
    sent = []
    monkeypatch.setattr("opsloop.ops.noc_users._audit", lambda settings, event, target, detail:
                        sent.append((event, target, detail)))
    return tmp_path, sent


def test_add_list_remove(env, monkeypatch, capsys):
    tmp_path, sent = env
    assert cli.main(["noc", "user", "list"]) == 0
    assert "no NOC users" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("a long admin password\n"))
    assert cli.main(["noc", "user", "add", "root-admin", "--role", "admin"]) == 0
    store = UserStore(tmp_path / "noc" / "users.json")
    assert store.verify("root-admin", "a long admin password").role is Role.ADMIN
    monkeypatch.setattr("sys.stdin", io.StringIO("another password!\n"))
    assert cli.main(["noc", "user", "add", "root-admin", "--role", "operator"]) == 2  # exists
    assert "exists" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli.main(["noc", "user", "add", "bo", "--role", "viewer"]) == 2
    assert "too short" in capsys.readouterr().err
    assert cli.main(["noc", "user", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["root-admin\tadmin"]
    assert cli.main(["noc", "user", "remove", "root-admin"]) == 0
    assert cli.main(["noc", "user", "remove", "root-admin"]) == 1
    assert [(e, t) for e, t, _ in sent] == [("user_added", "root-admin"), ("user_removed", "root-admin")]


def test_no_password_argument_exists():
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["noc", "user", "add", "x", "--role", "admin", "--password", "secret"])


def test_the_noc_will_not_start_without_users(env, capsys):
    assert cli.main(["noc", "--port", "0"]) == 2
    assert "create the first admin" in capsys.readouterr().err
