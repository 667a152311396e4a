"""confluent-kafka clients, topic administration and the dead-letter writer.

Every Kafka side effect of the batch processors, sources and sinks goes through here,
configured from ``Settings`` (never from the environment).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic, AlterConfigOpType, ConfigEntry

from opsloop.config.catalog import TopicSpec, cached_catalog
from opsloop.config.settings import Settings
from opsloop.connectors.schema_registry import ConfluentEncoder
from opsloop.models.records import dead_letter
from opsloop.schemas.codec import Codec

DEADLETTER = "deadletter"

log = logging.getLogger("opsloop.kafka")


# -- transient broker faults ----------------------------------------------------------------

#: Errors of a broker that is down, restarting or moving a group: waited out, never fatal.
BROKER_DOWN = frozenset({
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._RESOLVE,
    KafkaError._WAIT_COORD, KafkaError.REQUEST_TIMED_OUT, KafkaError.NETWORK_EXCEPTION,
    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
})
#: Commit errors of a member the group no longer knows (its session expired while the broker was away, or a
#: rebalance is on): the consumer rejoins by itself, and the next owner resumes from the last commit.
GROUP_MOVED = frozenset({KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION,
                         KafkaError.REBALANCE_IN_PROGRESS, KafkaError._ASSIGNMENT_LOST, KafkaError._STATE})


def transient(err: KafkaError) -> bool:
    """A broker fault to wait out (commit, consume): never a fatal one."""
    return isinstance(err, KafkaError) and not err.fatal() and (
        err.code() in BROKER_DOWN or err.code() in GROUP_MOVED or err.retriable())


class Throttled:
    """At most one log line per ``every_s`` for each kind of repeated trouble, saying how many were held back."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(self, kind: str, level: int, msg: str, *args) -> bool:
        now = self.clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.every_s:
                self._held[kind] = self._held.get(kind, 0) + 1
                return False
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        if held:
            msg, args = msg + " (%d more like it in the last %.0f s)", (*args, held, self.every_s)
        self.logger.log(level, msg, *args)
        return True


class ClientLog:
    """librdkafka's own log lines and errors, rate-limited: a down broker makes every client log each refused
    connection (hundreds a minute), so each facility (FAIL, ERROR, ...) logs at most once a minute per
    process; fatal errors always log."""

    def __init__(self, every_s: float = 60.0):
        self.throttle = Throttled(logging.getLogger("opsloop.kafka.client"), every_s)

    def log(self, level: int, fmt: str, *args) -> None:  # the ``logger`` config's interface
        facility = str(args[0]) if args else ""
        self.throttle.log(f"log:{facility}", level, fmt, *args)

    def error(self, err: KafkaError) -> None:  # the ``error_cb`` config's interface
        if err.fatal():
            self.throttle.logger.error("Kafka client fatal error: %s", err.str())
        else:
            self.throttle.log("error", logging.WARNING, "Kafka client: %s", err.str())


CLIENT_LOG = ClientLog()




class BrokerWait:
    """An agent riding out a broker outage: backoff between retries, one clear log line a minute while it
    lasts, and one when it is over."""

    def __init__(self, logger: logging.Logger, agent: str, clock: Callable[[], float] = time.monotonic,
                 every_s: float = 60.0, first_s: float = 0.5, max_s: float = 10.0):
        self.logger, self.agent, self.clock = logger, agent, clock
        self.every_s, self.first_s, self.max_s = every_s, first_s, max_s
        self.since: float | None = None  # when the outage began (None: no outage)
        self.faults = 0  # faults in this outage
        self.total = 0  # faults waited out since start
        self.retry_at = 0.0
        self.back_at: float | None = None  # when the last outage ended
        self._delay = first_s
        self._logged: float | None = None

    def fault(self, what: str) -> None:
        now = self.clock()
        if self.since is None:
            self.since, self.faults, self._delay, self._logged = now, 0, self.first_s, None
        self.faults += 1
        self.total += 1
        self.retry_at = now + self._delay
        self._delay = min(self._delay * 2, self.max_s)
        if self._logged is None or now - self._logged >= self.every_s:
            self._logged = now
            self.logger.warning("%s: broker unavailable for %.0f s (%d faults, last: %s); waiting it out, "
                                "retrying with backoff (logged once a minute)", self.agent, now - self.since,
                                self.faults, what)

    def ready(self) -> bool:
        """The backoff since the last fault is over."""
        return self.clock() >= self.retry_at

    def ok(self) -> None:
        """The broker answered (a commit went through): the outage, if any, is over."""
        if self.since is not None:
            self.logger.warning("%s: broker back after %.1f s; %d faults waited out", self.agent,
                                self.clock() - self.since, self.faults)
            self.since, self.retry_at, self.back_at = None, 0.0, self.clock()

    def settled(self, settle_s: float) -> bool:
        """No outage now, and none ended in the last ``settle_s``."""
        return self.since is None and (self.back_at is None or self.clock() - self.back_at >= settle_s)


def security_config(settings: Settings) -> dict:
    """librdkafka's security settings for ``settings``: empty for PLAINTEXT, else TLS and/or SASL.

    The password is only ever in this dict, handed to the client: never log it.
    """
    protocol = settings.kafka_security_protocol.upper()
    if protocol == "PLAINTEXT":
        return {}
    config = {"security.protocol": protocol}
    if protocol.endswith("SSL"):
        config["ssl.endpoint.identification.algorithm"] = "https"  # the broker's name must match its certificate
        if settings.kafka_ca_file:
            config["ssl.ca.location"] = str(settings.kafka_ca_file)
    if protocol.startswith("SASL"):
        config.update({"sasl.mechanism": settings.kafka_sasl_mechanism, "sasl.username": settings.kafka_sasl_username,
                       "sasl.password": settings.kafka_password()})
    return config


def client_config(settings: Settings, **config) -> dict:
    """Bootstrap servers and security settings, plus ``config``."""
    # every client logs through one rate limiter (CLIENT_LOG): an outage is one line a minute, not a flood
    return {"bootstrap.servers": settings.broker, "log_level": 3, "logger": CLIENT_LOG, "error_cb": CLIENT_LOG.error,
            **security_config(settings), **config}


def producer(settings: Settings, **overrides) -> Producer:
    config = {
        **client_config(settings),
        "enable.idempotence": True,  # no duplicates from producer retries
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
    }
    config.update(overrides)
    return Producer(config)


def consumer(settings: Settings, group: str, **overrides) -> Consumer:
    config = {
        **client_config(settings),
        "group.id": group,
        "enable.auto.commit": False,  # processors commit only what they have fully handled
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,  # lets processors know when they have caught up
        "session.timeout.ms": 10_000,  # a crashed worker's partitions move within 10 s, not the 45 s default
        "fetch.min.bytes": 1,
    }
    config.update(overrides)
    return Consumer(config)


def admin(settings: Settings, **overrides) -> AdminClient:
    return AdminClient(client_config(settings, **{"log_level": 3, **overrides}))


def apply_catalog(settings: Settings, specs: Iterable[TopicSpec], timeout_s: float = 30.0) -> list[str]:
    """Create missing topics, add missing partitions, set configs. Returns one line per change."""
    client = admin(settings)
    existing = client.list_topics(timeout=timeout_s).topics
    specs = list(specs)
    lines = []
    new = [NewTopic(settings.topic(s.name), s.partitions, s.replication, config=s.configs())
           for s in specs if settings.topic(s.name) not in existing]
    for topic, future in (client.create_topics(new) if new else {}).items():
        try:
            future.result(timeout_s)
            lines.append(f"created {topic}")
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent `topics create`
                raise
    grow = [NewPartitions(settings.topic(s.name), s.partitions) for s in specs
            if settings.topic(s.name) in existing and len(existing[settings.topic(s.name)].partitions) < s.partitions]
    for topic, future in (client.create_partitions(grow) if grow else {}).items():
        future.result(timeout_s)
        lines.append(f"grew {topic} to {next(p.new_total_count for p in grow if p.topic == topic)} partitions")
    resources = [ConfigResource(ConfigResource.Type.TOPIC, settings.topic(s.name), incremental_configs=[
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in s.configs().items()])
        for s in specs if settings.topic(s.name) in existing]
    for resource, future in (client.incremental_alter_configs(resources) if resources else {}).items():
        future.result(timeout_s)
    if not lines:
        lines.append(f"all {len(specs)} topics present")
    return lines


_ELECTING = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
             KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION}


def watermark_offsets(cons: Consumer, tp: TopicPartition, timeout_s: float = 30.0) -> tuple[int, int]:
    """A partition's offsets, retried while a new topic's leader is still being elected."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return cons.get_watermark_offsets(tp, timeout=timeout_s)
        except KafkaException as exc:
            err = exc.args[0]
            if not (err.retriable() or err.code() in _ELECTING) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


#: Produce errors that say the record itself is unacceptable (too large, refused by the broker):
#: sending it again cannot help, so the record goes to the dead letter instead (``Rejected``).
REJECTED = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE}

#: ``on_rejected(topic, key, value, error)``: a record the broker or the client will not take.
Rejected = Callable[[str, "bytes | None", "bytes | None", KafkaError], None]


def send(prod: Producer, topic: str, key: bytes | None, value: bytes | None, on_delivery=None,
         partition: int | None = None, on_rejected: Rejected | None = None) -> None:
    """Produce one message (to ``partition``, else by key), waiting for room when the local queue is full
    (back-pressure, not an error). A record the client refuses outright (``REJECTED``, e.g. larger than
    ``message.max.bytes``) goes to ``on_rejected`` when given, else raises."""
    where = {} if partition is None else {"partition": partition}
    while True:
        try:
            prod.produce(topic, key=key, value=value, on_delivery=on_delivery, **where)
            return
        except BufferError:
            prod.poll(0.1)
        except KafkaException as exc:
            err = exc.args[0]
            if on_rejected is None or not isinstance(err, KafkaError) or err.code() not in REJECTED:
                raise
            on_rejected(topic, key, value, err)
            return


def send_record(prod: Producer, settings: Settings, topic: str, record: dict, codec: Codec | None = None,
                on_delivery=None, on_rejected: Rejected | None = None) -> None:
    """Produce a record to catalog topic ``topic``, encoded and keyed as the catalog declares."""
    spec = cached_catalog(settings.topics_file)[topic]
    name = settings.topic(topic)
    if settings.encoding == "confluent":
        value = confluent_encoder(settings.schema_registry_url).encode(name, spec.record, record)
    else:
        value = (codec or Codec.default()).encode(spec.record, record)
    send(prod, name, spec.key_of(record), value, on_delivery, on_rejected=on_rejected)


@functools.lru_cache(maxsize=4)
def confluent_encoder(url: str) -> ConfluentEncoder:
    """One encoder per registry, so each topic's schema id is looked up once per process."""
    return ConfluentEncoder(url)


def wait_delivered(prod: Producer, timeout_s: float | None = 30.0) -> None:
    """Flush and fail loudly if anything is still undelivered after ``timeout_s``.

    ``None`` waits out a broker outage: until every message is delivered or the producer gives up on it
    (its ``message.timeout.ms``; the delivery callback reports that), logging at most once a minute."""
    if timeout_s is not None:
        left = prod.flush(timeout_s)
        if left:
            raise KafkaException(f"{left} messages not delivered within {timeout_s}s")
        return
    began = time.monotonic()
    while left := prod.flush(1.0):
        _WAITING.log("flush", logging.WARNING, "%d messages waiting for the broker for %.0f s", left,
                     time.monotonic() - began)


_WAITING = Throttled(log)


class DeliveryErrors:
    """Delivery callback that remembers the first error, so a batch can fail before committing.

    A record the broker refused for what it is (``REJECTED``) goes to ``on_rejected`` when one is
    set (the processors dead-letter it), since failing the batch would only fail again on restart."""

    def __init__(self, on_rejected: Rejected | None = None):
        self.first: str | None = None
        self.on_rejected = on_rejected

    def __call__(self, err, msg) -> None:
        if err is None:
            return
        if self.on_rejected is not None and err.code() in REJECTED:
            self.on_rejected(msg.topic(), msg.key(), msg.value(), err)
        elif self.first is None:
            self.first = f"delivery to {msg.topic()} failed: {err}"

    def raise_if_any(self) -> None:
        if self.first:
            error, self.first = self.first, None
            raise KafkaException(error)


class DeadLetters:
    """Writes rejected messages with the reason to the ``deadletter`` topic, bounded.

    Key and value are kept whole up to ``Settings.deadletter_max_bytes`` and cut beyond it, with
    their sizes and SHA-256 hashes (models/records.py ``dead_letter``). Should the client or the
    broker still refuse a dead letter as too large (a topic with a lower ``max.message.bytes``), it
    is sent again with a quarter of the room, down to sizes and hashes alone: a dead letter never
    stops the agent that writes it.
    """

    def __init__(self, settings: Settings, prod: Producer, agent: str, codec: Codec | None = None):
        self.settings = settings
        self.prod = prod
        self.agent = agent
        self.codec = codec or Codec.default()
        self.max_bytes = settings.deadletter_max_bytes
        self.count = 0
        self.shrunk = 0  # dead letters sent again with less room

    def send(self, msg: Message, kind: str, error: str, on_delivery=None) -> None:
        ts_type, ts = msg.timestamp()
        self.write(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), kind, error,
                   ts if ts_type else None, on_delivery)

    def undeliverable(self, topic: str, key: bytes | None, value: bytes | None, err: KafkaError,
                      on_delivery=None) -> None:
        """An output the broker or the client refused: kept here, with why (never a crash loop)."""
        reason = f"an output for {topic} ({0 if value is None else len(value)} bytes) was refused: {err.str()}"
        self.write(topic, -1, -1, key, value, "undeliverable", reason, None, on_delivery)

    def write(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, kind: str,
              error: str, ts_ms: int | None = None, on_delivery=None, max_bytes: int | None = None) -> None:
        room = self.max_bytes if max_bytes is None else max_bytes
        record = dead_letter(topic, partition, offset, key, value, kind, error, self.agent, ts_ms, room)

        def again(err: KafkaError) -> None:  # too large after all: the same dead letter with less room
            if room == 0:
                raise KafkaException(err)  # sizes and hashes alone refused: nothing smaller to send
            self.shrunk += 1
            self.count -= 1
            self.write(topic, partition, offset, key, value, kind, error, ts_ms, on_delivery, room // 4)

        def delivered(err, msg) -> None:
            if err is not None and err.code() in REJECTED:
                again(err)
            elif on_delivery is not None:
                on_delivery(err, msg)

        send_record(self.prod, self.settings, DEADLETTER, record, self.codec, delivered,
                    on_rejected=lambda _t, _k, _v, err: again(err))
        self.count += 1


def close_clients(prod: Producer, cons: Consumer, timeout_s: float = 10.0) -> None:
    """Stop a processor's clients: flush what is in flight, then leave the group, even if the flush fails."""
    try:
        wait_delivered(prod, timeout_s)
    finally:
        cons.close()


def now_ms() -> int:
    """Wall clock, for the connector layer only (e.g. idle detection); models get time passed in."""
    return int(time.time() * 1000)


def acl_binding(grant) -> "AclBinding":
    """The Admin API binding of a ``config.access.Grant`` (an ALLOW from any host)."""
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    return AclBinding(ResourceType[grant.resource.upper()], grant.name, ResourcePatternType[grant.pattern.upper()],
                      f"User:{grant.principal}", "*", AclOperation[grant.operation], AclPermissionType.ALLOW)


def apply_acls(settings: Settings, grants: Iterable, timeout_s: float = 30.0) -> int:
    """Create the grants' ACLs (idempotent: an existing ACL is left as it is) and wait until the broker's authorizer
    holds them all (the controller commits them first); returns how many were applied."""
    from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    bindings = [acl_binding(g) for g in grants]
    if not bindings:
        return 0
    client = admin(settings)
    for future in client.create_acls(bindings).values():
        future.result(timeout_s)
    every = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                             AclPermissionType.ANY)
    wanted = {str(b) for b in bindings}
    deadline = time.monotonic() + timeout_s
    while wanted - {str(b) for b in client.describe_acls(every, request_timeout=timeout_s).result(timeout_s)}:
        if time.monotonic() > deadline:
            raise KafkaException(f"the broker did not report {len(wanted)} new ACLs within {timeout_s}s")
        time.sleep(0.1)
    return len(bindings)


def upsert_scram_users(settings: Settings, passwords: dict[str, str], timeout_s: float = 30.0) -> list[str]:
    """Create or update SCRAM-SHA-512 users through the Admin API (as a super user); returns their names."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    if not passwords:
        return []
    client = admin(settings)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    upserts = [UserScramCredentialUpsertion(name, info, password.encode()) for name, password in passwords.items()]
    for future in client.alter_user_scram_credentials(upserts).values():
        future.result(timeout_s)
    return list(passwords)


def read_to_end(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[Message]:
    """Every message of physical ``topic`` up to each partition's end as it stands when the read begins.

    The ends are taken first (``get_watermark_offsets``: for a reader that reads committed, the last stable offset)
    and a partition is done once a message or the position reaches its end. A partition-end event alone would
    not do: librdkafka reports one only when a fetch sent at the end comes back empty, that is after the partition
    was silent for ``fetch.wait.max.ms`` (500 ms), so a partition written more often than that (a rollup emitting
    every 50 ms) is never reported at its end while it is written. The event still ends a partition whose
    committed end stops short of the one taken (an open transaction). Assigns the partitions directly (no group
    join, nothing committed)."""
    from confluent_kafka import OFFSET_BEGINNING

    cons = consumer(settings, f"{settings.app_id}.reader")
    try:
        partitions = cons.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in partitions:
            low, high = watermark_offsets(cons, TopicPartition(topic, p), timeout_s)
            if high > low:
                ends[p] = high
        if not ends:
            return []
        cons.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        messages = []
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise KafkaException(f"{topic}: partitions {sorted(ends)} not read to their end within {timeout_s:g} s")
            for msg in cons.consume(1000, timeout=0.5):
                err = msg.error()
                if err is None:
                    messages.append(msg)
                    if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                        ends.pop(msg.partition(), None)
                elif err.code() == KafkaError._PARTITION_EOF:
                    ends.pop(msg.partition(), None)
            # past a transaction marker the position moves on without a message
            for tp in cons.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
        return messages
    finally:
        cons.close()


def read_records(settings: Settings, name: str, timeout_s: float = 60.0) -> list[tuple[dict, int]]:
    """Every record of catalog topic ``name`` to the end of each partition (``read_to_end``), decoded, with its
    Kafka timestamp (ms); for summaries after a run."""
    spec = cached_catalog(settings.topics_file)[name]
    codec = Codec.default()
    return [(codec.decode_as(spec.record, msg.value()), msg.timestamp()[1])
            for msg in read_to_end(settings, settings.topic(name), timeout_s)]
