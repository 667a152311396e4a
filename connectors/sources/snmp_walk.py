"""What both SNMP clients share (``snmp`` with pysnmp, ``snmp_netsnmp`` with Net-SNMP): the checked
credentials, the agent's state, and the column walk that turns GETBULK replies into rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from opsloop.config.sources import SourceConfig

AUTH_PROTOCOLS = ("md5", "sha", "sha224", "sha256", "sha384", "sha512")
PRIV_PROTOCOLS = ("des", "3des", "aes", "aes192", "aes256")
NO_RESPONSE = "No SNMP response received before timeout"  # pysnmp's words; ezsnmp's timeout says the same
END = object()  # a column's walk ran past the agent's last object (endOfMibView)


def _secret(config: SourceConfig, block: dict, key: str) -> str:
    env = block.get(f"{key}_env")
    if env:
        if env not in os.environ:
            raise config.error(f"options: {key}_env names {env}, which is not set")
        return os.environ[env]
    if key in block:
        return str(block[key])
    raise config.error(f"options: {key} or {key}_env is required")


def credentials(config: SourceConfig) -> dict:
    """The SNMP version and its secrets, checked, for whichever client: ``version`` is v2c (with
    ``community``) or v3 (``user``, ``auth_protocol``, ``auth_key``, ``priv_protocol``, ``priv_key``)."""
    version = str(config.option("version", "v2c"))
    if version == "v2c":
        return {"version": version, "community": _secret(config, dict(config.options), "community")}
    if version != "v3":
        raise config.error(f"options.version must be v2c or v3, got {version!r}")
    v3 = dict(config.option("v3", required=True))
    auth, priv = str(v3.get("auth_protocol", "sha")).lower(), str(v3.get("priv_protocol", "aes")).lower()
    if auth not in AUTH_PROTOCOLS or priv not in PRIV_PROTOCOLS:
        raise config.error(f"options.v3: auth_protocol one of {', '.join(AUTH_PROTOCOLS)}, priv_protocol one of {', '.join(PRIV_PROTOCOLS)}")
    if "user" not in v3:
        raise config.error("options.v3.user is required")
    return {"version": version, "user": str(v3["user"]), "auth_protocol": auth, "priv_protocol": priv,
            "auth_key": _secret(config, v3, "auth_key"), "priv_key": _secret(config, v3, "priv_key")}


@dataclass
class Agent:
    host: str
    port: int
    device: str
    device_type: str
    active: dict = field(default_factory=dict)  # alarm rows now raised
    repetitions: int | None = None  # rows per column to ask for: one more than the longest column last time
    transport: object = None  # the client's transport or session, made once

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


class ColumnWalk:
    """Every row of every column of one agent, in the config's column order: all the columns walk
    side by side, one GETBULK per round for those not yet past their last row (a PDU's table in a
    few requests). The client asks ``request()`` for the OIDs to go on from and feeds back the
    reply's (oid, value) pairs, value ``END`` past the agent's last object."""

    def __init__(self, columns: list[str]):
        self.columns = columns
        self.found: dict[str, list[tuple[str, object]]] = {c: [] for c in columns}
        self.after = {c: c for c in columns}  # where each unfinished column goes on from
        self.asked: list[str] = []

    def request(self) -> list[str]:
        """The OIDs of the next GETBULK; empty once every column is walked."""
        self.asked = list(self.after)
        return [self.after[c] for c in self.asked]

    def feed(self, binds: list[tuple[str, object]]) -> None:
        finished = set()
        for i, (oid, value) in enumerate(binds):  # row-major: repetition by repetition, column by column
            column = self.asked[i % len(self.asked)]
            if column in finished or value is END or not oid.startswith(column + "."):
                finished.add(column)
                continue
            self.found[column].append((oid, value))
            self.after[column] = oid
        for column in self.asked:
            if column in finished or not binds:  # past its last row, or an agent with nothing more to say
                del self.after[column]

    def rows(self) -> list[tuple[str, object]]:
        return [row for column in self.columns for row in self.found[column]]

    def repetitions(self, most: int) -> int:
        """Rows per column to ask for next time: one more than the longest column had, so the same
        walk comes in one round without rows of the next columns, which are decoded and thrown away."""
        return min(most, 1 + max((len(rows) for rows in self.found.values()), default=0))
