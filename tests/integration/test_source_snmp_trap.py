"""Kind ``snmp-trap``: notifications sent by net-snmp's own ``snmptrap`` (v2c and v3 SHA+AES) become
raise/clear Alarms; unknown traps and senders are dead-lettered; a wrong community is dropped."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest

from opsloop.config.site import parse_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources import KINDS
from opsloop.ops.snmp_pdu import PDU_ROOT, V3_AUTH, V3_PRIV, V3_USER, free_udp_port

pytestmark = pytest.mark.integration

SITE = parse_site({"site": {"id": "lab"}, "pdus": [{"id": "pdu-a1", "share": 1.0}],
                   "devices": [{"id": "pdu-traps", "type": "collector"}]}, "lab.yaml")
ENGINE_ID = "80001f8880c0ffee0000000001"
BREAKER = f"{PDU_ROOT}.3.1.2"
TRAPS = [{"trap": f"{PDU_ROOT}.0.1", "code": "PDU_BREAKER_OPEN", "state": "raise", "severity": "critical",
          "index_from": BREAKER, "text": "breaker {index} tripped"},
         {"trap": f"{PDU_ROOT}.0.2", "code": "PDU_BREAKER_OPEN", "state": "clear", "index_from": BREAKER,
          "text": "breaker {index} closed"}]


class Collected:
    def __init__(self):
        self.readings = []
        self.arrived = threading.Condition()

    def __call__(self, readings) -> bool:
        with self.arrived:
            self.readings.append(readings)
            self.arrived.notify_all()
        return True

    def wait(self, count: int, timeout: float = 10.0) -> list:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.readings) >= count, timeout)
            return list(self.readings)


@pytest.fixture
def receiver(monkeypatch):
    monkeypatch.setenv("TRAP_AUTH", V3_AUTH)
    monkeypatch.setenv("TRAP_PRIV", V3_PRIV)
    port = free_udp_port()
    block = {"kind": "snmp-trap", "name": "pdu-traps", "devices": {"127.0.0.1": "pdu-a1"},
             "options": {"listen": f"127.0.0.1:{port}", "community": "trap-community", "traps": TRAPS,
                         "v3": {"user": V3_USER, "engine_id": ENGINE_ID, "auth_key_env": "TRAP_AUTH",
                                "priv_key_env": "TRAP_PRIV"}}}
    config = parse_sources({"site": "lab", "sources": [block]}, "sources.yaml")[0]
    kind = KINDS["snmp-trap"].build(config, SITE, lambda: 1_700_000_000.0)
    collected, stop = Collected(), threading.Event()
    thread = threading.Thread(target=kind.serve, args=(collected, stop), daemon=True)
    thread.start()
    assert kind.ready.wait(10), "the trap receiver did not start listening"
    yield port, collected
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def snmptrap(port: int, trap: str, breaker: int, *auth: str) -> None:
    binary = shutil.which("snmptrap")
    assert binary, "snmptrap (Debian package snmp) is not installed: make system-deps"
    subprocess.run([binary, *auth, f"127.0.0.1:{port}", "", trap, f"{BREAKER}.{breaker}", "i", "2"],
                   check=True, capture_output=True, timeout=10)


V2C = ("-v", "2c", "-c", "trap-community")


def test_a_breaker_trap_raises_and_its_pair_clears_over_v2c(receiver):
    port, collected = receiver
    snmptrap(port, f"{PDU_ROOT}.0.1", 3, *V2C)
    snmptrap(port, f"{PDU_ROOT}.0.2", 3, *V2C)
    got = collected.wait(2)
    alarms = [a for r in got for a in r.alarms]
    assert [(a["code"], a["state"], a["severity"], a["text"], a["device"], a["ts_ms"]) for a in alarms] == [
        ("PDU_BREAKER_OPEN", "raise", "critical", "pdu-a1: breaker 3 tripped", "pdu-a1", 1_700_000_000_000),
        ("PDU_BREAKER_OPEN", "clear", "major", "pdu-a1: breaker 3 closed", "pdu-a1", 1_700_000_000_000)]
    assert alarms[0]["attributes"] == {"trap": f"{PDU_ROOT}.0.1", "sender": "127.0.0.1"}


def test_a_v3_auth_priv_trap_is_received(receiver):
    port, collected = receiver
    snmptrap(port, f"{PDU_ROOT}.0.1", 1, "-v", "3", "-e", f"0x{ENGINE_ID}", "-u", V3_USER, "-l", "authPriv",
             "-a", "SHA", "-A", V3_AUTH, "-x", "AES", "-X", V3_PRIV)
    (readings,) = collected.wait(1)
    assert [(a["code"], a["state"], a["text"]) for a in readings.alarms] == [
        ("PDU_BREAKER_OPEN", "raise", "pdu-a1: breaker 1 tripped")]


def test_an_unknown_trap_is_dead_lettered_and_a_wrong_community_is_dropped(receiver):
    port, collected = receiver
    snmptrap(port, f"{PDU_ROOT}.0.1", 2, "-v", "2c", "-c", "not-ours")
    snmptrap(port, f"{PDU_ROOT}.0.7", 2, *V2C)
    (readings,) = collected.wait(1)
    time.sleep(0.5)  # nothing else arrives: the wrong community was dropped, not delivered late
    assert len(collected.readings) == 1 and readings.alarms == []
    (reject,) = readings.rejects
    assert reject.kind == "unknown" and f"trap {PDU_ROOT}.0.7 from 127.0.0.1" in reject.reason
    assert "no rule in options.traps names it" in reject.reason
