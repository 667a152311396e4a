"""A PDU behind Debian's real snmpd, for the snmp tests and the sources bench: opsloop's pass_persist
program (ops/snmp_pass_persist.py) serves PDU values from a JSON file (re-read when replaced, so a test
changes the PDU between polls); snmpd runs on a free UDP port with a v2c community and a v3 user
(SHA auth, AES priv).

The values live under ``PDU_ROOT``, a subtree of enterprise 32473 (reserved for documentation
by RFC 5612), laid out like a vendor PDU MIB (README, "snmp" source kind):
``.1.1.{2,3,4,5}.<phase>`` current (0.1 A), power (W), voltage (0.1 V), overload (1 ok, 2 overload);
``.1.2.0`` total power (W); ``.2.1.{2,3}.<outlet>`` power (W), current (0.1 A);
``.3.1.2.<breaker>`` state (1 closed, 2 open); ``.5.1.2.<sensor>`` inlet temperature (0.1 degC).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from opsloop.models.pdu_mib import PDU_ROOT  # one layout for the twin and the test PDU

COMMUNITY = "opsloop-test"
V3_USER, V3_AUTH, V3_PRIV = "opsloop", "auth-pass-123", "priv-pass-456"


def pdu_values(phase_w=(1830, 1750, 1920), outlet_w=(410, 395, 0, 512), breakers=(1, 1), overload=(1, 1, 1),
               inlet_deci_c=(231,)) -> dict[str, list]:
    """The JSON the pass_persist program serves: OID -> [type, value]."""
    v: dict[str, list] = {}
    for i, w in enumerate(phase_w, 1):
        v[f"{PDU_ROOT}.1.1.2.{i}"] = ["gauge", round(w / 230 * 10)]
        v[f"{PDU_ROOT}.1.1.3.{i}"] = ["gauge", w]
        v[f"{PDU_ROOT}.1.1.4.{i}"] = ["gauge", 2300]
        v[f"{PDU_ROOT}.1.1.5.{i}"] = ["integer", overload[i - 1]]
    v[f"{PDU_ROOT}.1.2.0"] = ["gauge", sum(phase_w)]
    for i, w in enumerate(outlet_w, 1):
        v[f"{PDU_ROOT}.2.1.2.{i}"] = ["gauge", w]
        v[f"{PDU_ROOT}.2.1.3.{i}"] = ["gauge", round(w / 230 * 10)]
    for i, state in enumerate(breakers, 1):
        v[f"{PDU_ROOT}.3.1.2.{i}"] = ["integer", state]
    for i, deci_c in enumerate(inlet_deci_c, 1):
        v[f"{PDU_ROOT}.5.1.2.{i}"] = ["integer", deci_c]
    return v


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSnmpd:
    """snmpd in the foreground of a temporary directory; ``set_values`` changes what the PDU reports."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.dir = workdir
        self.port = port or free_udp_port()
        self.values_file = workdir / "pdu.json"
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def binary() -> str:
        found = shutil.which("snmpd") or ("/usr/sbin/snmpd" if os.path.exists("/usr/sbin/snmpd") else None)
        if found is None:
            raise RuntimeError("snmpd is not installed: `make system-deps` installs Debian's snmpd")
        return found

    def set_values(self, values: dict[str, list]) -> None:
        tmp = self.values_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(values))
        tmp.replace(self.values_file)  # the script never reads half a file

    def start(self, values: dict[str, list] | None = None) -> "LocalSnmpd":
        self.set_values(values or pdu_values())
        (self.dir / "persist").mkdir(exist_ok=True)
        conf = self.dir / "snmpd.conf"
        conf.write_text(
            f"rocommunity {COMMUNITY} 127.0.0.1 .{PDU_ROOT}\n"
            f'createUser {V3_USER} SHA "{V3_AUTH}" AES "{V3_PRIV}"\n'
            f"rouser {V3_USER} priv .{PDU_ROOT}\n"
            f"pass_persist .{PDU_ROOT} {sys.executable} -m opsloop.ops.snmp_pass_persist {self.values_file}\n")
        (self.dir / "snmpd.log").unlink(missing_ok=True)  # readiness is read from this run's log only
        log = open(self.dir / "snmpd.log", "ab")
        self.proc = subprocess.Popen([self.binary(), "-f", "-C", "-c", str(conf), "-Lf", str(self.dir / "snmpd.log"),
                                      "-p", str(self.dir / "snmpd.pid"), f"udp:127.0.0.1:{self.port}"],
                                     stdout=log, stderr=log, start_new_session=True,
                                     env={**os.environ, "SNMP_PERSISTENT_DIR": str(self.dir / "persist"),
                                          "MIBS": ""})
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """snmpd is up once it logs its version (it has bound the port and read its config by then)."""
        deadline = time.monotonic() + 20
        log = self.dir / "snmpd.log"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"snmpd exited ({self.proc.returncode}): {log.read_text()[-2000:]}")
            if log.exists() and "NET-SNMP version" in log.read_text():
                return
            time.sleep(0.1)
        raise RuntimeError(f"snmpd did not start on udp {self.port}: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> "LocalSnmpd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
