"""Who may do what on Kafka: one principal per agent, and the ACLs that follow from it.

``PRINCIPALS`` is the one table of what each principal reads and writes (catalog topic
names), which consumer groups it joins and whether it keeps private topics (changelogs,
Faust's own topics). ``plan`` turns it into the grants of one deployment (topic prefix and
app id from the settings): everything not granted is refused by the broker's authorizer
(``allow.everyone.if.no.acl.found=false``). The ``admin`` principal is the broker's super
user (topics, ACLs, SCRAM users) and needs no grant.

The rules the table keeps: only the guard writes ``actions.approved``; only the actuator
sinks and the views (the NOC's process runs the views agent) read it; only the NOC writes
``operator.feedback``. The anomaly agent reads it too, as a hint, and like rul's and peaks' ``slurm.queue`` (and
peaks' ``weather.forecast``) whole, with a reader of its own that joins no group (connectors/broadcast.py): its group id, ``<agent>-hints``,
falls under the agent's private prefix, so the topic's READ grant is all it adds.

>>> from opsloop.config.settings import Settings
>>> grants = plan(Settings())
>>> sorted({g.principal for g in grants if g.name == "actions.approved" and g.operation == "WRITE"})
['guard']
>>> sorted({g.principal for g in grants if g.name == "operator.feedback" and g.operation == "WRITE"})
['noc']
>>> print(plan(Settings(topic_prefix="t1."), ["rollup"])[0])
User:rollup ALLOW READ topic t1.telemetry.raw (literal)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from opsloop.config.catalog import cached_catalog
from opsloop.config.settings import Settings

ADMIN = "admin"  # the super user
DEADLETTER = "deadletter"
HEALTH = "agents.health"  # every batch-loop agent reports on it
EVERY_TOPIC = "*"  # in ``reads``: every catalog topic


@dataclass(frozen=True)
class Access:
    """What one principal needs; topics are catalog names, groups are agent names (``Settings.group``)."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()  # consumer groups it joins, by agent name
    private: tuple[str, ...] = ()  # agents whose own topics and groups (``<app id>.<prefix><agent>-*``) it uses
    fixed_groups: tuple[str, ...] = ()  # groups named ``<app id>.<name>`` with no topic prefix (label follower)
    faust: bool = False  # runs a Faust app: its group and its own topics (``<faust id>``, ``<faust id>-*``)


#: The one per-principal table. Agents run as the principal of the same name; "source" is every
#: producer of raw data (replay, the PCS simulator, site collectors); "noc" is `opsloop noc`, which
#: writes operator feedback and its audit trail and (with --with-views) runs the views agent in its process.
PRINCIPALS: dict[str, Access] = {
    "source": Access(writes=("telemetry.raw", "alarms.raw", "sources.health", "slurm.queue", "weather.forecast",
                             DEADLETTER)),
    "rollup": Access(reads=("telemetry.raw",), writes=("telemetry.site", DEADLETTER, HEALTH), groups=("rollup",)),
    "anomaly": Access(reads=("telemetry.raw", "actions.approved"), writes=("alarms.raw", DEADLETTER, HEALTH),
                      groups=("anomaly",),
                      private=("anomaly",)),
    "dedup": Access(reads=("alarms.raw", "operator.feedback"), writes=("alarms.clean", DEADLETTER, HEALTH),
                    groups=("dedup",), private=("dedup",), fixed_groups=("labels",)),
    "correlate": Access(reads=("alarms.clean",), writes=("incidents", DEADLETTER, HEALTH), groups=("correlate",),
                        private=("correlate",)),
    "peaks": Access(reads=("telemetry.site", "slurm.queue", "weather.forecast"), writes=("forecasts.peak", "actions.proposed", DEADLETTER, HEALTH),
                    groups=("peaks",), private=("peaks",)),
    "guard": Access(reads=("actions.proposed", "operator.feedback", "telemetry.site", "actions.results"),
                    writes=("actions.approved", "actions.results", "alarms.raw", DEADLETTER, HEALTH), groups=("guard",)),
    "pcs-sink": Access(reads=("actions.approved",), writes=("actions.results", "alarms.raw", DEADLETTER, HEALTH),
                       groups=("pcs-sink",)),
    "slurm-sink": Access(reads=("actions.approved",), writes=("actions.results", "alarms.raw", DEADLETTER, HEALTH),
                         groups=("slurm-sink",)),
    "llm-sink": Access(reads=("actions.approved",), writes=("actions.results", "alarms.raw", DEADLETTER, HEALTH),
                       groups=("llm-sink",)),
    "gpu-sink": Access(reads=("actions.approved",), writes=("actions.results", "alarms.raw", DEADLETTER, HEALTH),
                       private=("gpu-sink",)),  # one group per node (gpu-sink-<node>): the prefixed grant
    "views": Access(reads=(EVERY_TOPIC,), writes=(DEADLETTER, HEALTH), groups=("views",)),
    "noc": Access(reads=(EVERY_TOPIC,), writes=("operator.feedback", "noc.audit", DEADLETTER, HEALTH), groups=("views",)),
    "rul": Access(reads=("telemetry.raw", "alarms.raw", "slurm.queue"),
                  writes=("forecasts.rul", "actions.proposed", DEADLETTER, HEALTH), groups=("rul",), private=("rul",)),
    "narrate": Access(reads=("incidents",), writes=("narratives", DEADLETTER), faust=True),
    "cooling-sink": Access(reads=("actions.approved",), writes=("actions.results", "alarms.raw", DEADLETTER, HEALTH),
                           groups=("cooling-sink",)),
    "efficiency": Access(reads=("telemetry.raw",), writes=("advice.efficiency", "actions.proposed", DEADLETTER, HEALTH),
                         groups=("efficiency",), private=("efficiency",)),
}


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW ACL: ``principal`` may ``operation`` on the ``resource`` (topic or group) ``name``."""

    principal: str
    resource: str  # "topic" | "group"
    name: str
    pattern: str  # "literal" | "prefixed"
    operation: str  # "READ" | "WRITE" | "CREATE" | "DESCRIBE"

    def __str__(self) -> str:
        return f"User:{self.principal} ALLOW {self.operation} {self.resource} {self.name} ({self.pattern})"


def principals() -> list[str]:
    """Every principal with a SCRAM user: the agents' and the super user."""
    return [ADMIN, *PRINCIPALS]


def faust_id(settings: Settings) -> str:
    """The Faust app id (its consumer group and the prefix of its own topics); streams/app.py uses it."""
    return settings.app_id + (f"-{settings.topic_prefix.rstrip('.')}" if settings.topic_prefix else "")


def plan(settings: Settings, names: Iterable[str] | None = None) -> list[Grant]:
    """The grants of the principals ``names`` (default: all) for the deployment of ``settings``."""
    catalog = list(cached_catalog(settings.topics_file))
    grants: list[Grant] = []
    for name in (PRINCIPALS if names is None else names):
        access = PRINCIPALS[name]
        add = lambda *g: grants.append(Grant(name, *g))  # noqa: E731
        reads = catalog if EVERY_TOPIC in access.reads else access.reads
        for topic in reads:
            add("topic", settings.topic(topic), "literal", "READ")
        for topic in access.writes:
            add("topic", settings.topic(topic), "literal", "WRITE")
        for agent in access.groups:
            add("group", settings.group(agent), "literal", "READ")
        for group in access.fixed_groups:
            add("group", f"{settings.app_id}.{group}", "literal", "READ")
        for agent in access.private:
            own = f"{settings.app_id}.{settings.topic_prefix}{agent}-"
            for op in ("CREATE", "DESCRIBE", "READ", "WRITE"):
                add("topic", own, "prefixed", op)
            add("group", own, "prefixed", "READ")
        if access.faust:
            app = faust_id(settings)
            add("group", app, "literal", "READ")
            for op in ("CREATE", "DESCRIBE", "READ", "WRITE"):
                add("topic", f"{app}-", "prefixed", op)
    return grants
