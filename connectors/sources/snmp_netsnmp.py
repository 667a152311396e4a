"""The ``snmp`` kind's second client (``options.client: ezsnmp``): GETBULK through Net-SNMP's C
library by its ``ezsnmp`` bindings, which decode a reply in C at about a quarter of pysnmp's CPU
per value and release the GIL while they wait, so the agents are walked at once from a pool of
threads (``options.workers``, default one per agent up to 64), one session per agent.

It moves requests and nothing else: the walk (``snmp.ColumnWalk``), mapping, alarms and rejects
are the poller's, as with pysnmp. Values come back as text with their SNMP type; the integer
types become ints, strings stay strings, as pysnmp's values do. A timeout reads as pysnmp's does
(``snmp.NO_RESPONSE``); any other Net-SNMP error (a wrong key, an agent error) keeps its words.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

try:
    import ezsnmp
    from ezsnmp.exceptions import GenericError, TimeoutError as SnmpTimeout
except ImportError:  # no wheel for this platform: the pysnmp client still works
    ezsnmp = None

from opsloop.config.sources import SourceConfig
from opsloop.connectors.sources.base import SourceUnavailable
from opsloop.connectors.sources.snmp_walk import END, NO_RESPONSE, Agent, ColumnWalk, credentials

INTEGERS = {"INTEGER", "Integer32", "Gauge32", "Counter32", "Counter64", "Unsigned32", "UInteger32", "Timeticks"}
# Net-SNMP's names for its auth and priv protocols; 3DES privacy is not in the library
AUTH = {"md5": "MD5", "sha": "SHA", "sha224": "SHA-224", "sha256": "SHA-256", "sha384": "SHA-384",
        "sha512": "SHA-512"}
PRIV = {"des": "DES", "aes": "AES", "aes192": "AES-192", "aes256": "AES-256"}
MAX_WORKERS = 64
APP = "snmpbulkget: "  # the command-line tool ezsnmp names in its errors: not ours


def value_of(text: str, kind: str):
    """A varbind as pysnmp's client gives it: int for the integer types, the text otherwise;
    END past the agent's last object (Net-SNMP then puts its message in both fields)."""
    if kind in INTEGERS:
        return int(text)
    if kind.startswith("No more variables"):
        return END
    return text


class NetSnmpClient:
    def __init__(self, config: SourceConfig, agents: int):
        if ezsnmp is None:
            raise config.error("options.client: ezsnmp is not installed here (its wheels are for x86-64 Linux); "
                               "use client: pysnmp")
        creds = credentials(config)
        if creds["version"] == "v2c":
            self.session_args = {"version": "2c", "community": creds["community"]}
        elif creds["priv_protocol"] not in PRIV:
            raise config.error(f"options.v3.priv_protocol: ezsnmp takes {', '.join(PRIV)}")
        else:
            self.session_args = {"version": "3", "security_level": "authPriv", "security_username": creds["user"],
                                 "auth_protocol": AUTH[creds["auth_protocol"]], "auth_passphrase": creds["auth_key"],
                                 "privacy_protocol": PRIV[creds["priv_protocol"]],
                                 "privacy_passphrase": creds["priv_key"]}
        self.session_args.update(timeout=config.timeout_s, retries=int(config.option("retries", 1)),
                                 print_oids_numerically=True, print_full_oids=True, print_enums_numerically=True,
                                 print_timeticks_numerically=True)
        workers = int(config.option("workers", min(agents, MAX_WORKERS)))
        if workers < 1:
            raise config.error("options.workers must be at least 1")
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="snmp")
        self.opening = threading.Lock()  # Net-SNMP's library set-up is not thread-safe: one session made at a time

    def walk_all(self, agents: list[Agent], columns: list[str], max_repetitions: int) -> list:
        futures = [self.pool.submit(self._walk, a, columns, max_repetitions) for a in agents]
        out = []
        for future in futures:
            try:
                out.append(future.result())
            except Exception as exc:  # as asyncio.gather(return_exceptions=True) hands them to the poller
                out.append(exc)
        return out

    def _walk(self, agent: Agent, columns: list[str], max_repetitions: int) -> list[tuple[str, object]]:
        walk, repetitions = ColumnWalk(columns), agent.repetitions or max_repetitions
        while oids := walk.request():
            try:
                reply = self._session(agent, repetitions).bulk_get(oids)
            except SnmpTimeout:
                raise SourceUnavailable(f"SNMP {agent.endpoint}: {NO_RESPONSE} (walking {', '.join(walk.asked)})") \
                    from None
            except GenericError as exc:
                raise SourceUnavailable(f"SNMP {agent.endpoint}: {str(exc).strip().removeprefix(APP)} "
                                        f"(walking {', '.join(walk.asked)})") from None
            walk.feed([(f"{r.oid.lstrip('.')}.{r.index}" if r.index else r.oid.lstrip("."), value_of(r.value, r.type))
                       for r in reply])
        agent.repetitions = walk.repetitions(max_repetitions)
        return walk.rows()

    def _session(self, agent: Agent, repetitions: int):
        """The agent's session, kept (``agent.transport``: repetitions, session); a session fixes its
        max-repetitions when made, so a new one is made when the walk asks for another count (after
        the first walk, once)."""
        if agent.transport is None or agent.transport[0] != repetitions:
            with self.opening:
                if agent.transport is not None:
                    agent.transport[1].close()
                agent.transport = repetitions, ezsnmp.Session(hostname=agent.host, port_number=agent.port,
                                                              set_max_repeaters_to_num=repetitions,
                                                              **self.session_args)
        return agent.transport[1]

    def close(self) -> None:
        self.pool.shutdown(wait=True)
