"""confluent-kafka clients, topic administration and the dead-letter writer.

Every Kafka side effect of the batch processors, sources and sinks goes through here,
configured from ``Settings`` (never from the environment).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic, AlterConfigOpType, ConfigEntry

from opsloop.config.catalog import TopicSpec, cached_catalog
from opsloop.config.settings import Settings
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


def _client_config(settings: Settings) -> dict:
    return {"bootstrap.servers": settings.broker, "log_level": 3, "logger": CLIENT_LOG,
            "error_cb": CLIENT_LOG.error}


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


def producer(settings: Settings, **overrides) -> Producer:
    config = {
        **_client_config(settings),
        "enable.idempotence": True,  # no duplicates from producer retries
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
    }
    config.update(overrides)
    return Producer(config)


def consumer(settings: Settings, group: str, **overrides) -> Consumer:
    config = {
        **_client_config(settings),
        "group.id": group,
        "enable.auto.commit": False,  # processors commit only what they have fully handled
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,  # lets processors know when they have caught up
        "session.timeout.ms": 10_000,  # a crashed worker's partitions move within 10 s, not the 45 s default
        "fetch.min.bytes": 1,
    }
    config.update(overrides)
    return Consumer(config)


def admin(settings: Settings) -> AdminClient:
    return AdminClient(_client_config(settings))


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


def send(prod: Producer, topic: str, key: bytes | None, value: bytes | None, on_delivery=None,
         partition: int | None = None) -> None:
    """Produce one message (to ``partition``, else by key), waiting for room when the local queue is full
    (back-pressure, not an error)."""
    where = {} if partition is None else {"partition": partition}
    while True:
        try:
            prod.produce(topic, key=key, value=value, on_delivery=on_delivery, **where)
            return
        except BufferError:
            prod.poll(0.1)


def send_record(prod: Producer, settings: Settings, topic: str, record: dict, codec: Codec | None = None,
                on_delivery=None) -> None:
    """Produce a record to catalog topic ``topic``, encoded and keyed as the catalog declares."""
    spec = cached_catalog(settings.topics_file)[topic]
    send(prod, settings.topic(topic), spec.key_of(record), (codec or Codec.default()).encode(spec.record, record),
         on_delivery)


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
    """Delivery callback that remembers the first error, so a batch can fail before committing."""

    def __init__(self):
        self.first: str | None = None

    def __call__(self, err, msg) -> None:
        if err is not None and self.first is None:
            self.first = f"delivery to {msg.topic()} failed: {err}"

    def raise_if_any(self) -> None:
        if self.first:
            error, self.first = self.first, None
            raise KafkaException(error)


class DeadLetters:
    """Writes rejected messages, whole and with the reason, to the ``deadletter`` topic."""

    def __init__(self, settings: Settings, prod: Producer, agent: str, codec: Codec | None = None):
        self.settings = settings
        self.prod = prod
        self.agent = agent
        self.codec = codec or Codec.default()
        self.count = 0

    def send(self, msg: Message, kind: str, error: str, on_delivery=None) -> None:
        ts_type, ts = msg.timestamp()
        record = dead_letter(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), kind, error,
                             self.agent, ts if ts_type else None)
        send_record(self.prod, self.settings, DEADLETTER, record, self.codec, on_delivery)
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
