"""Following a log file: lines without end, a file that appears late, a rotation while the source was stopped."""

import json
import os

import pytest

from opsloop.connectors.sources.logs import MAX_LINE, FileFollower, split_lines

pytestmark = pytest.mark.unit


def test_a_line_without_end_is_handed_on_in_pieces_not_held():
    lines, rest = split_lines(b"a\nb\n" + b"x" * (MAX_LINE + 1))
    assert lines == [b"a", b"b", b"x" * (MAX_LINE + 1)] and rest == b""
    assert split_lines(b"a\nbc") == ([b"a"], b"bc")


def test_a_file_that_appears_later_is_read_from_its_start(tmp_path):
    path = tmp_path / "syslog"
    follower = FileFollower(path)
    assert follower.read() == []
    path.write_bytes(b"one\ntwo\nthr")
    assert follower.read() == [b"one", b"two"]
    with open(path, "ab") as f:
        f.write(b"ee\n")
    assert follower.read() == [b"three"]


def test_a_restart_resumes_at_the_saved_offset_or_reads_a_file_rotated_meanwhile_from_its_start(tmp_path):
    path, state = tmp_path / "kern.log", tmp_path / "pos"
    path.write_bytes(b"old\n")
    first = FileFollower(path, state)  # no saved position: from the end
    with open(path, "ab") as f:
        f.write(b"a\nb\npart")
    assert first.read() == [b"a", b"b"]
    first.commit()
    first.close()
    assert json.loads(state.read_text())["offset"] == len(b"old\na\nb\n")  # the partial line is read again
    with open(path, "ab") as f:
        f.write(b"ial\n")
    again = FileFollower(path, state)
    assert again.read() == [b"partial"]
    again.commit()
    again.close()
    os.rename(path, tmp_path / "kern.log.1")
    path.write_bytes(b"new\n")  # rotated while stopped
    assert FileFollower(path, state).read() == [b"new"]
