"""`opsloop acl plan` prints the ACLs of a deployment; `opsloop secure-init` keeps its secrets to their owner."""

from __future__ import annotations

import stat

import pytest

from opsloop.ops import cli
from opsloop.ops.kafka import make_passwords

pytestmark = pytest.mark.unit


def test_acl_plan_prints_each_grant_of_the_deployment(capsys, monkeypatch):
    monkeypatch.setenv("OPSLOOP_TOPIC_PREFIX", "prod.")
    assert cli.main(["acl", "plan", "--principal", "pcs-sink"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "User:pcs-sink ALLOW READ topic prod.actions.approved (literal)" in lines
    assert "User:pcs-sink ALLOW READ group opsloop.prod.pcs-sink (literal)" in lines
    assert all(line.startswith("User:pcs-sink ALLOW ") for line in lines)
    assert not any("WRITE topic prod.actions.approved" in line for line in lines)


def test_passwords_are_random_kept_and_readable_by_their_owner_only(tmp_path):
    assert make_passwords(tmp_path / "users", ["a", "b"]) == ["a", "b"]
    first = (tmp_path / "users" / "a.password").read_text()
    assert make_passwords(tmp_path / "users", ["a", "b", "c"]) == ["c"]  # kept: the SCRAM users hold them
    assert (tmp_path / "users" / "a.password").read_text() == first and len(first) >= 32
    assert first != (tmp_path / "users" / "b.password").read_text()
    for path in (tmp_path / "users").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "users").stat().st_mode) == 0o700
