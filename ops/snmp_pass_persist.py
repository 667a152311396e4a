"""An snmpd ``pass_persist`` program serving SNMP objects from a JSON file: ``{oid: [type, value]}``.

    pass_persist .1.3.6.1.4.1.32473.14 /path/to/python -m opsloop.ops.snmp_pass_persist /path/to/pdu-a1.json

(a line of snmpd.conf). The file is read again whenever it is replaced (its mtime or inode change), so
whoever writes it (the site twin's ``--snmp-dir``, a test) changes what the agent answers between two
requests; writers replace it whole, so it is never read half written. Objects are read-only: a SET is
answered ``not-writable``. The protocol is snmpd's (``man snmpd.conf``, "pass_persist"): PING/PONG, then
``get`` or ``getnext`` with an OID, answered by the OID, its type and its value, or ``NONE``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TextIO


def _key(oid: str) -> tuple[int, ...]:
    return tuple(int(p) for p in oid.strip().strip(".").split("."))


class Objects:
    """The file's objects, re-read when the file was replaced."""

    def __init__(self, path: str):
        self.path = path
        self.stamp: tuple[int, int] | None = None
        self.values: dict[tuple[int, ...], list] = {}
        self.order: list[tuple[int, ...]] = []

    def load(self) -> dict[tuple[int, ...], list]:
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != self.stamp:
            with open(self.path) as f:
                self.values = {_key(o): v for o, v in json.load(f).items()}
            self.order, self.stamp = sorted(self.values), stamp
        return self.values


def serve(objects: Objects, stdin: TextIO, stdout: TextIO) -> None:
    for line in stdin:
        command = line.strip()
        if command == "PING":
            stdout.write("PONG\n")
        elif command in ("get", "getnext"):
            wanted = _key(stdin.readline())
            values = objects.load()
            if command == "get":
                found = wanted if wanted in values else None
            else:
                found = next((o for o in objects.order if o > wanted), None)
            if found is None:
                stdout.write("NONE\n")
            else:
                kind, value = values[found]
                stdout.write(f".{'.'.join(map(str, found))}\n{kind}\n{value}\n")
        elif command == "set":
            stdin.readline(), stdin.readline()
            stdout.write("not-writable\n")
        elif not command:
            break
        stdout.flush()


if __name__ == "__main__":
    serve(Objects(sys.argv[1]), sys.stdin, sys.stdout)
