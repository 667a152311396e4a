"""Kind ``snmp``: a PDU (or any SNMP agent) polled over SNMP v2c or v3 (USM auth+priv) with pysnmp
or, with ``options.client: ezsnmp``, with Net-SNMP's C library (``snmp_netsnmp``).

Each poll bulk-walks every column the mapping names (``models.snmp_map``) on one agent,
``options.host``/``options.port``; ``devices`` maps that agent (``"host:port"``) to the site's
device. Every row becomes a point; alarm columns raise and clear Alarms as their rows enter and
leave the values that mean trouble (a breaker open, a phase overloaded).

Secrets stay out of the config file: ``community_env`` (v2c) and, under ``v3``, ``auth_key_env``
and ``priv_key_env`` name environment variables (``community`` may also be given inline).
A timeout, an authentication failure or an agent error is ``SourceUnavailable``; a value that is
not a number is dead-lettered (``decode``; NaN and infinities: ``invalid``).

One source may poll many agents: ``options.targets`` lists them (``host``, ``port``), each mapped
by ``devices`` as ``"host:port"``, all with the same credentials and mapping. They are walked at
once (pysnmp: on one engine, asyncio; ezsnmp: from a pool of threads), so a poll takes about as
long as the slowest agent. A poll fails
(``SourceUnavailable``) when every agent failed; when only some did, the rest is published and
the failed ones are logged by name and counted in ``failed_targets``.

The client only moves GETBULK requests: the walk (``ColumnWalk``), the mapping, the alarms and the
rejects are the same code for both, so both clients give the same readings from the same agent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from pyasn1.type import univ
from pysnmp.hlapi.v3arch import asyncio as snmp
from pysnmp.proto import rfc1905

from opsloop.config.site import Site
from opsloop.config.sources import SourceConfig
from opsloop.connectors.sources.base import Readings, Reject, SourceUnavailable
from opsloop.models.names import device_types
from opsloop.models.records import alarm, telemetry_point
from opsloop.connectors.sources.snmp_walk import END, Agent, ColumnWalk, credentials
from opsloop.models.snmp_map import BadValue, SnmpMap, SnmpMapError

AUTH = {"md5": snmp.usmHMACMD5AuthProtocol, "sha": snmp.usmHMACSHAAuthProtocol,
        "sha224": snmp.usmHMAC128SHA224AuthProtocol, "sha256": snmp.usmHMAC192SHA256AuthProtocol,
        "sha384": snmp.usmHMAC256SHA384AuthProtocol, "sha512": snmp.usmHMAC384SHA512AuthProtocol}
PRIV = {"des": snmp.usmDESPrivProtocol, "3des": snmp.usm3DESEDEPrivProtocol, "aes": snmp.usmAesCfb128Protocol,
        "aes192": snmp.usmAesCfb192Protocol, "aes256": snmp.usmAesCfb256Protocol}
ABSENT = (rfc1905.NoSuchObject, rfc1905.NoSuchInstance, rfc1905.EndOfMibView)
MAX_REPETITIONS = 16
CLIENTS = ("pysnmp", "ezsnmp")
log = logging.getLogger("opsloop.source.snmp")


def auth_data(config: SourceConfig):
    """pysnmp's credentials object."""
    creds = credentials(config)
    if creds["version"] == "v2c":
        return snmp.CommunityData(creds["community"], mpModel=1)
    return snmp.UsmUserData(creds["user"], creds["auth_key"], creds["priv_key"],
                            authProtocol=AUTH[creds["auth_protocol"]], privProtocol=PRIV[creds["priv_protocol"]])


def plain(value):
    """An SNMP value as int or str; None when the agent has no such object."""
    if isinstance(value, ABSENT):
        return None
    if isinstance(value, univ.Integer):  # Integer32, Gauge32, Counter32/64, Unsigned32, TimeTicks
        return int(value)
    if isinstance(value, univ.OctetString):
        return bytes(value).decode("utf-8", "replace")
    return value.prettyPrint()


class SnmpPoller:
    def __init__(self, config: SourceConfig, site: Site):
        self.config = config
        self.site = site.id
        targets = config.option("targets")
        if targets is None:
            targets = [{"host": config.option("host", required=True), "port": config.option("port", 161)}]
        elif not isinstance(targets, list) or not targets or not all(isinstance(t, dict) and "host" in t
                                                                      for t in targets):
            raise config.error("options.targets must be a list of {host, port}")
        types = device_types(site)
        self.agents = []
        for target in targets:
            host, port = str(target["host"]), int(target.get("port", 161))
            device = config.device(f"{host}:{port}")
            if device is None:
                raise config.error(f"devices must map the agent {host}:{port} to the site's device")
            self.agents.append(Agent(host, port, device, types.get(device, "pdu")))
        if len({a.endpoint for a in self.agents}) != len(self.agents):
            raise config.error("options.targets: an agent is listed twice")
        try:
            self.map = SnmpMap.parse(config.options)
        except SnmpMapError as exc:
            raise config.error(str(exc)) from None
        self.max_repetitions = int(config.option("max_repetitions", MAX_REPETITIONS))  # rows per column per request
        client = str(config.option("client", "pysnmp"))
        if client not in CLIENTS:
            raise config.error(f"options.client must be one of {', '.join(CLIENTS)}, got {client!r}")
        if client == "ezsnmp":
            from opsloop.connectors.sources.snmp_netsnmp import NetSnmpClient  # optional: a C extension

            self.client = NetSnmpClient(config, len(self.agents))
        else:
            self.client = PysnmpClient(config)
        self.failed_targets: Counter = Counter()

    def poll(self, now_ms: int) -> Readings:
        results = self.client.walk_all(self.agents, self.map.columns(), self.max_repetitions)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, SourceUnavailable):
                raise result  # not the agent's answer: a fault here, as before there were several agents
        failed = [str(r) for r in results if isinstance(r, SourceUnavailable)]
        if failed and len(failed) == len(self.agents):
            raise SourceUnavailable("; ".join(failed))
        out = Readings()
        for agent, rows in zip(self.agents, results):
            if isinstance(rows, SourceUnavailable):  # some answered: the poll counts, the others are named
                self.failed_targets[agent.endpoint] += 1
                log.warning("poll failed: %s", rows)
            else:
                self._read(agent, rows, now_ms, out)
        return out

    def _read(self, agent: Agent, rows: list[tuple[str, object]], now_ms: int, out: Readings) -> None:
        device, device_type = agent.device, agent.device_type
        for oid, value in rows:
            if value is None:
                continue
            try:
                point = self.map.point(oid, value)
                changes = self.map.alarm_changes(oid, value, agent.active)
            except BadValue as exc:
                out.rejects.append(Reject(f"{oid} = {value}".encode(), exc.kind,
                                          f"SNMP {agent.endpoint} ({device}): {exc}"))
                continue
            if point is not None:
                metric, number, unit = point
                out.points.append(telemetry_point(now_ms, self.site, device, device_type, metric, number,
                                                  unit, self.config.name))
            for code, severity, state, text in changes:
                out.alarms.append(alarm(now_ms, self.site, device, device_type, "opsloop.source.snmp", code,
                                        f"{device}: {text}", severity, state, {"oid": oid}))

    def close(self) -> None:
        self.client.close()


class PysnmpClient:
    """GETBULK with pysnmp: every agent at once on one engine, in an asyncio loop of our own."""

    def __init__(self, config: SourceConfig):
        self.auth = auth_data(config)
        self.timeout_s = config.timeout_s
        self.retries = int(config.option("retries", 1))
        self.loop = asyncio.new_event_loop()
        self.engine: snmp.SnmpEngine | None = None  # made inside self.loop: pysnmp binds it to the running loop

    def walk_all(self, agents: list[Agent], columns: list[str], max_repetitions: int) -> list:
        return self.loop.run_until_complete(self._walk_all(agents, columns, max_repetitions))

    async def _walk_all(self, agents, columns, max_repetitions) -> list:
        if self.engine is None:
            self.engine = snmp.SnmpEngine()
        return await asyncio.gather(*[self._walk(a, columns, max_repetitions) for a in agents],
                                    return_exceptions=True)

    async def _walk(self, agent: Agent, columns: list[str], max_repetitions: int) -> list[tuple[str, object]]:
        """Each reply is decoded value by value (pyasn1: the poll's main cost), hence the walk's
        ``repetitions``: after the first walk an agent is asked for just the rows it has."""
        if agent.transport is None:
            agent.transport = await snmp.UdpTransportTarget.create((agent.host, agent.port),
                                                                   timeout=self.timeout_s, retries=self.retries)
        walk, repetitions = ColumnWalk(columns), agent.repetitions or max_repetitions
        while oids := walk.request():
            error, status, index, binds = await snmp.bulk_cmd(
                self.engine, self.auth, agent.transport, snmp.ContextData(), 0, repetitions,
                *[snmp.ObjectType(snmp.ObjectIdentity(oid)) for oid in oids], lookupMib=False)
            if error:
                raise SourceUnavailable(f"SNMP {agent.endpoint}: {error} (walking {', '.join(walk.asked)})")
            if status:
                raise SourceUnavailable(f"SNMP {agent.endpoint}: agent error {status.prettyPrint()} "
                                        f"at {binds[int(index) - 1][0] if index and binds else walk.asked[0]}")
            walk.feed([(str(name), END if isinstance(value, rfc1905.EndOfMibView) else plain(value))
                       for name, value in binds])
        agent.repetitions = walk.repetitions(max_repetitions)
        return walk.rows()

    def close(self) -> None:
        try:
            if self.engine is not None:
                self.engine.close_dispatcher()
        finally:  # let the dispatcher's own tasks see their cancellation before the loop goes
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


def build(config: SourceConfig, site: Site, clock) -> SnmpPoller:
    return SnmpPoller(config, site)
