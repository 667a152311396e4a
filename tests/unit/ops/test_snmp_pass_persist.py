"""The pass_persist program's side of snmpd's protocol, over in-memory pipes, and a file replaced between requests."""

import io
import json

import pytest

from opsloop.ops.snmp_pass_persist import Objects, serve

pytestmark = pytest.mark.unit


def ask(objects, lines: str) -> list[str]:
    out = io.StringIO()
    serve(objects, io.StringIO(lines), out)
    return out.getvalue().splitlines()


def test_get_getnext_ping_and_set_answer_as_snmpd_expects(tmp_path):
    path = tmp_path / "pdu.json"
    path.write_text(json.dumps({"1.3.6.1.4.1.32473.14.1.2.0": ["gauge", 5490],
                                "1.3.6.1.4.1.32473.14.1.10.1": ["integer", 2]}))  # 10 sorts after 2 as a number
    objects = Objects(str(path))
    assert ask(objects, "PING\nget\n.1.3.6.1.4.1.32473.14.1.2.0\nget\n.1.3.6.1.4.1.32473.14.9\n") == [
        "PONG", ".1.3.6.1.4.1.32473.14.1.2.0", "gauge", "5490", "NONE"]
    assert ask(objects, "getnext\n.1.3.6.1.4.1.32473.14.1.2.0\ngetnext\n.1.3.6.1.4.1.32473.14.1.10.1\n") == [
        ".1.3.6.1.4.1.32473.14.1.10.1", "integer", "2", "NONE"]
    assert ask(objects, "set\n.1.3.6.1.4.1.32473.14.1.2.0\ninteger 1\n") == ["not-writable"]


def test_a_replaced_file_is_read_again(tmp_path):
    path = tmp_path / "pdu.json"
    path.write_text(json.dumps({"1.3.6.1.4.1.32473.14.1.2.0": ["gauge", 1]}))
    objects = Objects(str(path))
    assert ask(objects, "get\n.1.3.6.1.4.1.32473.14.1.2.0\n")[-1] == "1"
    new = tmp_path / "pdu.tmp"
    new.write_text(json.dumps({"1.3.6.1.4.1.32473.14.1.2.0": ["gauge", 2]}))
    new.replace(path)
    assert ask(objects, "get\n.1.3.6.1.4.1.32473.14.1.2.0\n")[-1] == "2"
