"""Kind ``snmp-trap``: a receiver for SNMP v2c and v3 notifications (a PDU's breaker trips, overloads).

It listens on ``options.listen`` (``host:port``; 162 needs privileges, the example uses 1162).
v2c notifications are accepted with ``community_env`` (or ``community``); v3 ones from the
``v3`` user (auth + priv keys from the environment) at the sender's ``engine_id`` (hex), as
SNMPv3 notifications are authenticated with the sender's engine. pysnmp drops what fails
authentication. ``devices`` maps each sender's address to its site device; each accepted
notification becomes one Alarm (``models.snmp_map.TrapMap``: trap OID -> code, raise or clear),
stamped with the receipt time. A notification from an unmapped sender, or with a trap OID no
rule names, is dead-lettered (``unknown``) with the OID and sender.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

from pyasn1.type import univ
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config as snmp_config
from pysnmp.entity import engine as snmp_engine
from pysnmp.entity.rfc3413 import ntfrcv

from opsloop.config.site import Site
from opsloop.config.sources import SourceConfig
from opsloop.connectors.sources.base import Deliver, Readings, Reject
from opsloop.connectors.sources.snmp import AUTH, PRIV, plain
from opsloop.connectors.sources.snmp_walk import _secret
from opsloop.models.names import device_types
from opsloop.models.records import alarm
from opsloop.models.snmp_map import SnmpMapError, TrapMap

log = logging.getLogger("opsloop.source.snmp_trap")
TRAP_OID = "1.3.6.1.6.3.1.1.4.1.0"  # snmpTrapOID.0: which notification this is


class SnmpTrapReceiver:
    def __init__(self, config: SourceConfig, site: Site, clock: Callable[[], float] = time.time):
        self.config = config
        self.site = site.id
        self.clock = clock
        host, _, port = str(config.option("listen", "0.0.0.0:162")).rpartition(":")
        self.listen = (host or "0.0.0.0", int(port))
        try:
            self.map = TrapMap.parse(config.options)
        except SnmpMapError as exc:
            raise config.error(str(exc)) from None
        self.types = device_types(site)
        self.community = None
        if "community" in config.options or "community_env" in config.options:
            self.community = _secret(config, dict(config.options), "community")
        self.v3 = None
        if config.option("v3") is not None:
            v3 = dict(config.option("v3"))
            auth, priv = str(v3.get("auth_protocol", "sha")).lower(), str(v3.get("priv_protocol", "aes")).lower()
            if auth not in AUTH or priv not in PRIV or "user" not in v3 or "engine_id" not in v3:
                raise config.error("options.v3 needs user, engine_id (the sender's, hex) and known protocols")
            self.v3 = (str(v3["user"]), AUTH[auth], _secret(config, v3, "auth_key"), PRIV[priv],
                       _secret(config, v3, "priv_key"), str(v3["engine_id"]).removeprefix("0x"))
        if self.community is None and self.v3 is None:
            raise config.error("options: community/community_env (v2c) or v3 is required")
        self.ready = threading.Event()  # set once the socket listens (tests wait on it)

    def _readings(self, sender: str, varbinds: list[tuple[str, object]]) -> Readings:
        now_ms = int(self.clock() * 1000)
        trap = next((str(v) for oid, v in varbinds if oid == TRAP_OID), "")
        raw = f"trap {trap} from {sender}: " + ", ".join(f"{o}={v}" for o, v in varbinds)
        device = self.config.device(sender)
        if device is None:
            return Readings(rejects=[Reject(raw.encode(), "unknown", f"SNMP trap {trap} from {sender}: the sender "
                                                                     f"is not mapped to a site device")])
        found = self.map.alarm(trap, varbinds)
        if found is None:
            return Readings(rejects=[Reject(raw.encode(), "unknown", f"SNMP trap {trap} from {sender} ({device}): "
                                                                     f"no rule in options.traps names it")])
        code, severity, state, text = found
        device_type = self.types.get(device, "pdu")
        return Readings(alarms=[alarm(now_ms, self.site, device, device_type, "opsloop.source.snmp-trap", code,
                                      f"{device}: {text}", severity, state, {"trap": trap, "sender": sender})])

    def serve(self, deliver: Deliver, stop: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(deliver, stop))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, deliver: Deliver, stop: threading.Event) -> None:
        engine = snmp_engine.SnmpEngine()
        transport = udp.UdpTransport().open_server_mode(self.listen)
        snmp_config.add_transport(engine, udp.DOMAIN_NAME, transport)
        if self.community is not None:
            snmp_config.add_v1_system(engine, "opsloop-trap", self.community)
        if self.v3 is not None:
            user, auth, auth_key, priv, priv_key, engine_id = self.v3
            snmp_config.add_v3_user(engine, user, auth, auth_key, priv, priv_key,
                                    securityEngineId=univ.OctetString(hexValue=engine_id))

        def received(snmp, state_reference, context_engine_id, context_name, varbinds, ctx) -> None:
            _, address = snmp.message_dispatcher.get_transport_info(state_reference)
            rows = [(str(name).lstrip("."), plain(value)) for name, value in varbinds]
            deliver(self._readings(str(address[0]), rows))

        ntfrcv.NotificationReceiver(engine, received)
        engine.transport_dispatcher.job_started(1)
        try:
            await transport._lport  # the socket is bound (or the bind failed: port taken, no privilege)
        except OSError as exc:
            engine.close_dispatcher()
            raise self.config.error(f"cannot listen on {self.listen[0]}:{self.listen[1]}: {exc}") from exc
        self.ready.set()
        log.info("%s: receiving SNMP notifications on %s:%d", self.config.name, *self.listen)
        try:
            while not stop.is_set():
                await asyncio.sleep(0.1)
        finally:
            engine.transport_dispatcher.job_finished(1)
            engine.close_dispatcher()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)


def build(config: SourceConfig, site: Site, clock) -> SnmpTrapReceiver:
    return SnmpTrapReceiver(config, site, clock or time.time)
