"""The logs source on the real broker: a real file appended to, rotated and truncated while followed, a
restart that goes on from the saved position, and a real journald (its own namespace) followed by journalctl."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from opsloop.config.site import parse_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources import KINDS
from opsloop.connectors.sources.loop import SourceRun
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.integration

SITE = parse_site({"site": {"id": "lab"}, "devices": [
    {"id": "node-1", "type": "gpu_node"}, {"id": "node-1-g2", "type": "gpu"}, {"id": "ups-a", "type": "ups"},
    {"id": "kernel-log", "type": "collector"}]}, "lab.yaml")
XID = "2026-12-05T18:00:0{}Z gpu-n1 kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=2231, GPU has fallen off the bus."


class Following:
    """A logs source running in its own thread until ``stop``."""

    def __init__(self, settings, options: dict, devices: dict | None = None):
        self.config = parse_sources({"site": "lab", "sources": [{
            "kind": "logs", "name": "kernel-log", "interval_s": 0.2,
            "devices": devices or {"gpu-n1/PCI:0000:3b:00": "node-1-g2", "gpu-n1": "node-1", "ups-a": "ups-a"},
            "options": {"follow_s": 0.05, **options}}]}, "s.yaml")[0]
        self.run = SourceRun(settings, self.config, SITE, KINDS["logs"].build(self.config, SITE, time.time))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run.run, args=(self.stop,))
        self.thread.start()

    def wait_for(self, alarms: int, dead: int = 0, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.run.health.alarms >= alarms and self.run.health.dead_letters >= dead:
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.run.health.alarms} alarm(s), {self.run.health.dead_letters} dead letter(s)")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def _append(path, *lines: str) -> None:
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()


def test_a_followed_file_across_rotation_truncation_and_restart(kafka_settings, read_topic, tmp_path):
    path, state = tmp_path / "kern.log", tmp_path / "kern.pos"
    _append(path, XID.format(0))  # before the first start: not read (no saved position: from the end)
    source = Following(kafka_settings, {"reader": "file", "path": str(path), "state_file": str(state)})
    try:
        time.sleep(0.3)
        _append(path, XID.format(1), "2026-12-05T18:00:02Z gpu-n1 sshd[4]: Accepted publickey for root",
                "2026-12-05T18:00:03Z n9 kernel: NVRM: Xid (PCI:0000:aa:00): 13, pid=1, x")  # host not mapped
        with open(path, "a") as f:
            f.write("2026-12-05T18:00:04Z mgmt-1 upsmon[5]: UPS ups-a@localhost on ")  # half a line...
        source.wait_for(alarms=1, dead=1)
        os.rename(path, tmp_path / "kern.log.1")  # logrotate: the old file keeps being written a moment
        _append(tmp_path / "kern.log.1", "battery")  # ...finished in the rotated file
        time.sleep(0.3)
        _append(path, "2026-12-05T18:00:05Z mgmt-1 upsmon[5]: UPS ups-a@localhost on line power")
        source.wait_for(alarms=3, dead=1)
        os.truncate(path, 0)  # copytruncate
        time.sleep(0.3)
        _append(path, XID.format(6))
        source.wait_for(alarms=4, dead=1)
    finally:
        source.close()
    assert source.run.kind.stats() == {"lines": 6, "alarms": 4, "ignored": 1, "unmapped": 1, "malformed": 0}

    _append(path, XID.format(7))  # written while the source is down: read after the restart, once
    again = Following(kafka_settings, {"reader": "file", "path": str(path), "state_file": str(state)})
    try:
        again.wait_for(alarms=1)
    finally:
        again.close()

    codec = Codec.default()
    alarms = [codec.decode_as("Alarm", m.value()) for m in read_topic(kafka_settings, "alarms.raw")]
    assert [(a["code"], a["state"], a["device"], a["attributes"]["log_line"][:22]) for a in alarms] == [
        ("XID_79", "raise", "node-1-g2", "2026-12-05T18:00:01Z g"),
        ("UPS_ON_BATTERY", "raise", "ups-a", "2026-12-05T18:00:04Z m"),
        ("UPS_ON_BATTERY", "clear", "ups-a", "2026-12-05T18:00:05Z m"),
        ("XID_79", "raise", "node-1-g2", "2026-12-05T18:00:06Z g"),
        ("XID_79", "raise", "node-1-g2", "2026-12-05T18:00:07Z g")]
    assert alarms[1]["attributes"]["log_line"].endswith("on battery") and alarms[0]["severity"] == "critical"
    assert alarms[0]["ts_ms"] == 1_796_493_601_000
    dead = [codec.decode_as("DeadLetter", m.value()) for m in read_topic(kafka_settings, "deadletter")]
    assert [(d["error_kind"], d["topic"]) for d in dead] == [("unknown", "source:kernel-log")]
    assert "n9/PCI:0000:aa:00" in dead[0]["error"]


def test_malformed_journal_json_is_a_dead_letter(kafka_settings, tmp_path):
    source = KINDS["logs"].build(parse_sources({"site": "lab", "sources": [{
        "kind": "logs", "name": "kernel-log", "devices": {"gpu-n1": "node-1"},
        "options": {"reader": "journald"}}]}, "s.yaml")[0], SITE, time.time)
    entry = {"__REALTIME_TIMESTAMP": "1796493601500123", "_HOSTNAME": "gpu-n1", "SYSLOG_IDENTIFIER": "slurmd",
             "MESSAGE": "error: Unable to register: Unable to contact slurm controller (connect failure)"}
    out = source.readings([json.dumps(entry).encode(), b'{"MESSAGE": "cut sh', b"[1, 2]"], journal=True)
    assert [(a["code"], a["device"]) for a in out.alarms] == [("SLURM_DAEMON_ERROR", "node-1")]
    assert [r.kind for r in out.rejects] == ["decode", "decode"] and source.stats()["malformed"] == 2


JOURNALD = Path("/lib/systemd/systemd-journald")


@pytest.fixture
def journald():
    """A real systemd-journald in its own namespace (its own sockets and journal files: the host's logging is
    untouched), as ``systemd-journald@NAMESPACE.service`` runs it; yields the namespace."""
    machine_id = Path("/etc/machine-id")
    if not JOURNALD.exists() or not shutil.which("journalctl") or not shutil.which("logger") \
            or not machine_id.exists():
        pytest.skip("needs systemd-journald, journalctl, logger and /etc/machine-id (Debian's systemd, bsdutils)")
    namespace = f"opsloop{os.getpid()}"
    run_dir = Path(f"/run/systemd/journal.{namespace}")
    stored = [Path(d) / f"{machine_id.read_text().strip()}.{namespace}" for d in ("/var/log/journal", "/run/log/journal")]
    proc = subprocess.Popen([str(JOURNALD), namespace], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (run_dir / "dev-log").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"systemd-journald would not start here: {proc.stderr.read().decode()[-300:]}")
            time.sleep(0.05)
        yield namespace
    finally:
        proc.terminate()
        proc.wait(10)
        for path in (run_dir, *stored):
            shutil.rmtree(path, ignore_errors=True)


def _logger(namespace: str, tag: str, message: str) -> None:
    subprocess.run(["logger", "-u", f"/run/systemd/journal.{namespace}/dev-log", "-t", tag, message], check=True)


def _stored(namespace: str, message: str, timeout_s: float = 20.0) -> None:
    """Wait until journald has written ``message`` to its journal: ``logger`` returns once the datagram is sent, and a
    journald short of CPU may take it in only after a reader that starts "from now on" has started."""
    deadline = time.monotonic() + timeout_s
    while message not in subprocess.run(["journalctl", "--namespace", namespace, "-o", "cat", "--no-pager"],
                                        capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, f"journald did not store {message!r} in {timeout_s:.0f} s"
        time.sleep(0.1)


def test_journald_is_followed_and_a_restart_goes_on_from_its_cursor(kafka_settings, read_topic, journald, tmp_path):
    options = {"reader": "journald", "journal_args": ["--namespace", journald], "state_file": str(tmp_path / "cursor")}
    _logger(journald, "slurmd", "error: written before the first start: not read")
    _stored(journald, "written before the first start")  # else it may arrive after journalctl began to follow
    source = Following(kafka_settings, options, {"*": "node-1", "gpu-n1/PCI:0000:3b:00": "node-1-g2"})
    try:
        deadline = time.monotonic() + 20
        while source.run.kind.lines == 0:  # until journalctl follows: it starts at the end of the journal
            assert time.monotonic() < deadline, "journalctl never followed"
            _logger(journald, "opsloop-test", "warming up")
            time.sleep(0.3)
        _logger(journald, "kernel", "NVRM: Xid (PCI:0000:3b:00): 48, pid=7, name=train, DBE (0x1)")
        _logger(journald, "slurmd", "error: Unable to register: Unable to contact slurm controller")
        _logger(journald, "sshd", "Accepted publickey for root")
        source.wait_for(alarms=2)
    finally:
        source.close()
    _logger(journald, "upsmon", "UPS ups-a@localhost on battery")  # while stopped: read after the restart
    again = Following(kafka_settings, options, {"*": "node-1", "ups-a": "ups-a"})
    try:
        again.wait_for(alarms=1)
        time.sleep(0.5)
    finally:
        again.close()
    codec = Codec.default()
    # alarms.raw is keyed by device: ups-a's alarm may sit in another partition, read before node-1's
    alarms = sorted((codec.decode_as("Alarm", m.value()) for m in read_topic(kafka_settings, "alarms.raw")),
                    key=lambda a: a["ts_ms"])
    assert [(a["code"], a["severity"], a["device"], a["attributes"].get("program")) for a in alarms] == [
        ("XID_48", "critical", "node-1", "kernel"),  # logger's lines carry this host's name, not gpu-n1
        ("SLURM_DAEMON_ERROR", "minor", "node-1", "slurmd"),
        ("UPS_ON_BATTERY", "major", "ups-a", "upsmon")]
    assert re.fullmatch(r"\S+ \S+ kernel\[\d+\]: NVRM: Xid \(PCI:0000:3b:00\): 48, pid=7, name=train, DBE \(0x1\)",
                        alarms[0]["attributes"]["log_line"])
    assert abs(alarms[0]["ts_ms"] - time.time() * 1000) < 120_000  # journald's own timestamp
    assert source.run.kind.stats()["malformed"] == 0 and source.run.kind.stats()["ignored"] >= 1
