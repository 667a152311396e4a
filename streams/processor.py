"""The loop every confluent-kafka agent runs on: consume → process → deliver → checkpoint → commit.

``BatchProcessor.run`` consumes a batch from its ``sources``, hands each data message to
``handle`` (and each partition end to ``partition_end``, in message order), then calls
``end_batch`` and ``housekeeping``. About every ``commit_every_s`` (and when a hook asks for
it, when idle, when a partition is revoked and when stopping) it commits:

1. wait until every output and dead letter is delivered,
2. ``checkpoint``: write the state the offsets depend on, and wait for it too,
3. commit the ``offsets``.

So a crash repeats at most the uncommitted messages and never loses one; subclasses keep
enough in their state to recognise a repeated message. An output the client or the broker
refuses for what it is (too large: ``connectors.kafka.REJECTED``) goes to ``deadletter`` as
``undeliverable``, since a restart would only fail on it again; other delivery errors fail
the processor before it commits. Dead letters are bounded (``DeadLetters``). Idle means every assigned partition is read to its end and
no data came for ``quiet_s`` and no partition's end is an open transaction's first record (``_held_open``);
``run(exit_when_idle=True)`` returns then, once committed and
``settled``, and once no agent of the same worker has written to any topic it reads for ``quiet_s``
(``Handoff``: the agents of one worker end together, so none leaves before its upstream's last outputs).

A transient broker fault (the broker down or restarting, a commit refused because the group
moved on while it was away) is waited out, never fatal: outputs stay queued in the producer
until delivered, a refused commit is retried with backoff (offsets are cumulative, so the
next commit covers it), and the agent logs one line a minute while it lasts (``BrokerWait``;
the Kafka clients' own logging is rate-limited in connectors/kafka.py). When the group has
dropped this member meanwhile, its partitions are *lost*: the processor drops the state of
those partitions without writing or committing anything (another member may own them by
now) and the next owner, this process after it rejoins, resumes from the last commit and
the state checkpointed with it, as after a crash. Delivery failures (an output the producer
gave up on) stay fatal: a restart redoes the batch.

Exactly-once (``settings.delivery = "exactly-once"``, for the processors marked ``transactional``: the
stateful ones whose only effects are Kafka records): the producer is transactional and a commit is one
Kafka transaction holding the outputs, dead letters, checkpointed state and the consumed offsets
(``send_offsets_to_transaction``, read-process-write). Readers that read committed (librdkafka's default)
see all of it or none; a crash, a revocation or a lost assignment aborts what is open, and the next owner
resumes from the last transaction. Each process has its own transactional id (fencing is by the group's
generation, KIP-447), so a killed process's open transaction holds readers back until the broker aborts it,
after ``transaction_timeout_ms``. The default stays at-least-once.

A processor that stores its offsets with its own state, in one transaction (the views
agent), returns them from ``stored_offsets``: an assignment resumes from them and the
Kafka commit only copies them, asynchronously, for lag dashboards.

Partitions are ``(physical topic, partition)`` pairs. Subclasses set ``name`` (consumer group,
dead-letter agent, logger) and ``source`` (the catalog topic read) or ``sources`` and implement
``handle``; the other hooks default to doing nothing. Every source is read through the group unless
``joined_sources`` leaves it out (the series agents read their hint topics whole, streams/series.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from opsloop.config.catalog import cached_catalog
from opsloop.config.settings import Settings
from opsloop.connectors.kafka import (BROKER_DOWN, CLIENT_LOG, BrokerWait, DeadLetters, DeliveryErrors, Throttled,
                                      close_clients, consumer, producer, send, send_record, transient)
from opsloop.models.records import agent_health, consumer_lag
from opsloop.schemas.codec import Codec, DecodeError

Partition = tuple[str, int]  # (physical topic, partition)


class Handoff:
    """The idle-ending agents of one worker (``agents``) end together: each may leave only when every one of
    them is idle and settled and none has written to a topic of ``watched`` (physical names of the topics they
    read) for the quiet time, so no downstream agent leaves before its upstream's last outputs reach it."""

    def __init__(self, watched: set[str] = frozenset(), agents: set[str] = frozenset()):
        self.watched = frozenset(watched)
        self.waiting = set(agents)  # agents not idle yet
        self.last_write: float | None = None  # processing time of the last write to a watched topic

    def wrote(self, topic: str, now: float) -> None:
        if topic in self.watched:
            self.last_write = now

    def idle(self, agent: str, idle: bool) -> None:
        if idle:
            self.waiting.discard(agent)
        else:
            self.waiting.add(agent)

    def may_end(self, now: float, quiet_s: float) -> bool:
        return not self.waiting and (self.last_write is None or now - self.last_write >= quiet_s)


class BatchProcessor:
    name = ""
    source = ""  # the catalog topic read ...
    sources: tuple[str, ...] = ()  # ... or several
    poll_s = 0.5  # the longest consume() waits for a batch to fill
    batch_size: int | None = None  # the most messages a batch holds (None: settings.batch_size)
    wake_on_first = False  # hand over a batch as soon as one message is there (latency over throughput)
    quiet_s: float | None = None  # no data for this long, caught up, is idle (None: settings.idle_close_s)
    commit_every_s = 1.0
    settle_s = 10.0  # after a broker outage, how long partition ends are not trusted (sources flush their backlog)
    commit_stat: str | None = "commits"  # the stats key counting commits (None: not counted)
    consumer_overrides: dict[str, Any] = {}
    transactional = False  # outputs, state and offsets may commit in one Kafka transaction (exactly-once)
    # A crashed process's open transaction is aborted by the broker only after this long, and until then readers
    # that read committed wait at its first output: short, but well above the commit interval (one a few seconds)
    transaction_timeout_ms = 15_000
    producer_overrides: dict[str, Any] = {}
    # How often an agent that runs until stopped reports on agents.health (None: never). Agents run with
    # --exit-when-idle (replays, batch jobs) do not report: their reports would keep each other from being idle.
    health_every_s: float | None = 15.0

    def __init__(self, settings: Settings, codec: Codec | None = None, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.codec = codec or Codec.default()
        self.clock = clock  # processing time: commit pacing and idleness only
        self.catalog = cached_catalog(settings.topics_file)
        self.sources = self.sources or (self.source,)
        self.topic = settings.topic(self.sources[0])
        self.log = logging.getLogger(f"opsloop.{self.name}")
        self.stats: dict[str, Any] = {}  # subclasses fill it; it must hold "dead_letters" and commit_stat
        self.assigned: set[Partition] = set()
        self.caught_up: set[Partition] = set()  # partitions read to their end, with nothing newer since
        self.ends: dict[Partition, int] = {}  # partition → the offset its last end event was at
        self._held: dict[Partition, float] = {}  # caught up, records past their end not committed yet → since when
        self._held_logged: set[Partition] = set()
        self.processed: dict[Partition, int] = {}  # partition → next offset to read
        self.errors = DeliveryErrors(on_rejected=self._undeliverable)
        self._refused: dict[str, tuple[int, float | None]] = {}  # topic → (refused since logged, when logged)
        self.prod = None
        self.cons: Consumer | None = None  # while running: hooks may pause and resume partitions
        self.dead: DeadLetters | None = None
        self.broker = BrokerWait(self.log, self.name, clock=clock)  # broker faults: backoff, one line a minute
        self.losing = False  # inside a "partitions lost" callback: nothing may be written or committed for them
        self.stale: set[Partition] = set()  # caught up before a broker fault: their end is to be confirmed again
        self._recheck_at = 0.0
        self.handoff = Handoff()  # the worker shares one between its agents
        self.exactly_once = self.transactional and settings.delivery == "exactly-once"
        self.run_clock = settings.clock()  # the run's clock: the times an agents.health report states
        self.instance = f"{self.name}@{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        self.health: dict[str, Any] = {"processed": 0, "last_input_ms": None, "last_commit_ms": None,
                                       "last_output_ms": None}
        self._sent = False  # an output since the loop last looked
        self._health_log = Throttled(self.log)

    # -- subclass hooks -------------------------------------------------------------------

    def setup(self, cons: Consumer) -> None:
        """Create what the processor needs before it joins the group (state topics)."""

    def joined_sources(self) -> tuple[str, ...]:
        """The sources read through the consumer group (default: all); a subclass reads the others itself."""
        return self.sources

    def on_assign(self, cons: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions given to this process (``self.assigned`` already holds them)."""

    def on_revoke(self, cons: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away (still in ``self.assigned``: they may be committed here)."""

    def before_batch(self) -> None:
        """Called before each batch is handled, empty ones too."""

    def handle(self, msg: Message) -> None:
        """One data message (``self.processed`` already counts it)."""
        raise NotImplementedError

    def partition_end(self, partition: Partition) -> None:
        """A partition was read to its end (called in message order)."""

    def partitions_stale(self, partitions: set[Partition]) -> None:
        """Partitions read to their end before a broker fault: their end is unknown again (sources may have
        queued data meanwhile) until they deliver or ``partition_end`` confirms them at their end."""

    def end_batch(self, messages: int, idle: bool) -> bool:
        """After each batch (``messages``: data messages it held); True to commit now."""
        return False

    def housekeeping(self) -> bool:
        """Time-driven work after each batch, empty ones too (deadlines, verification, undo at expiry);
        True when it sent something that should be delivered and committed now."""
        return False

    def settled(self) -> bool:
        """Nothing time-driven left to wait for: ``exit_when_idle`` may end the run."""
        return True

    def checkpoint(self, partitions: set[Partition]) -> None:
        """Write the state of ``partitions`` that their next offsets rely on (outputs are delivered)."""

    def stored_offsets(self) -> dict[Partition, int] | None:
        """Next offsets kept in the processor's own store, with its state; None when Kafka's commits are the truth."""
        return None

    def offsets(self, partitions: set[Partition]) -> list[TopicPartition]:
        upto = self.stored_offsets()
        upto = self.processed if upto is None else upto
        return [TopicPartition(topic, p, offset) for (topic, p), offset in upto.items() if (topic, p) in partitions]

    def consumer_error(self, err: KafkaError) -> None:
        """A consumer error other than a partition end: fatal unless a processor knows better."""
        raise KafkaException(err)

    def close(self) -> None:
        """Release what the processor holds (files, device connections); its clients are closed by now."""

    # -- for subclasses -------------------------------------------------------------------

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.handoff.wrote(topic, self.clock())
        self._sent = True
        send(self.prod, topic, key, value, self.errors, on_rejected=self._undeliverable)

    def _undeliverable(self, topic: str, key: bytes | None, value: bytes | None, err: KafkaError) -> None:
        """An output the client or the broker refused for what it is: a dead letter, not a crash loop
        (logged once a minute per topic, with how many since)."""
        self.stats["undeliverable"] = self.stats.get("undeliverable", 0) + 1
        count, last = self._refused.get(topic, (0, None))
        now = self.clock()
        if last is None or now - last >= 60.0:
            self.log.error("%s: %d output(s) for %s refused (%s); kept in the dead letter as undeliverable",
                           self.name, count + 1, topic, err.str())
            self._refused[topic] = (0, now)
        else:
            self._refused[topic] = (count + 1, last)
        self.dead.undeliverable(topic, key, value, err, self.errors)

    def emit(self, topic: str, record: dict) -> None:
        """Send a record to catalog topic ``topic``, encoded and keyed as the catalog declares."""
        spec = self.catalog[topic]
        self.send(self.settings.topic(topic), spec.key_of(record), self.codec.encode(spec.record, record))

    def dead_letter(self, msg: Message, kind: str, reason: str) -> None:
        self.dead.send(msg, kind, reason, self.errors)

    def decoded(self, msg: Message, record: str) -> dict | None:
        """``msg`` decoded as ``record``; None once it is dead-lettered with the codec's reason, if it cannot be."""
        try:
            return self.codec.decode_as(record, msg.value())
        except DecodeError as exc:
            self.dead_letter(msg, "decode", exc.reason)
            return None

    def flush(self) -> None:
        """Wait until everything sent so far is delivered; fail if any of it was not.

        While the broker is away this waits (one log line a minute); the producer gives up on a message
        only after its ``message.timeout.ms``, which fails the processor before it commits."""
        while True:
            left = self.prod.flush(1.0)
            self.errors.raise_if_any()
            if not left:
                return
            self.broker_fault(f"{left} messages awaiting delivery")

    def report_health(self, cons: Consumer) -> None:
        """Publish this instance's health on agents.health from what its consumer knows locally (positions, and
        the ends cached from fetch responses): no broker request, so no admin right, and the NOC needs none
        either. A report that cannot be delivered is logged (once a minute), never fails the agent."""
        assigned = [TopicPartition(t, p) for t, p in sorted(self.assigned)]
        try:
            ends = [(tp.offset, cons.get_watermark_offsets(tp, cached=True)[1]) for tp in cons.position(assigned)] \
                if assigned else []
        except KafkaException:  # mid-rebalance: the lag is not known this time
            ends = []
        h = self.health
        record = agent_health(self.name, self.settings.group(self.name), self.instance, int(self.run_clock() * 1000),
                              len(assigned), consumer_lag(ends), h["processed"], self.dead.count, h["last_input_ms"],
                              h["last_commit_ms"], h["last_output_ms"])
        send_record(self.prod, self.settings, "agents.health", record, self.codec, self._health_delivered)

    def _health_delivered(self, err, msg) -> None:
        if err is not None:
            self._health_log.log("health", logging.WARNING, "%s: health report not delivered: %s (is agents.health "
                                 "created? opsloop topics create)", self.name, err)

    def catalog_name(self, topic: str) -> str:
        """The catalog name of a physical topic."""
        prefix = self.settings.topic_prefix
        return topic[len(prefix):] if prefix and topic.startswith(prefix) else topic

    def commit(self, cons: Consumer, partitions: set[Partition] | None = None) -> bool:
        """Outputs delivered, then state durable, then offsets committed (``partitions``: default all assigned).

        Returns False when the broker refused the commit for a transient reason: it is retried after a backoff
        (``self.broker``), and state written meanwhile only runs ahead of the offsets, which the processors'
        states recognise on a replay. Partitions being lost are neither checkpointed nor committed."""
        if self.losing:
            return False
        if self.exactly_once:
            return self._commit_transaction(cons)
        partitions = set(self.assigned) if partitions is None else set(partitions) & self.assigned
        self.flush()  # outputs first: stored state never runs ahead of what downstream got
        self.checkpoint(partitions)
        self.flush()
        offsets = self.offsets(partitions)
        if offsets:
            try:
                # offsets a processor stores itself reach Kafka for lag dashboards only: no need to wait
                cons.commit(offsets=offsets, asynchronous=self.stored_offsets() is not None)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError._NO_OFFSET:
                    return True
                if not (isinstance(err, KafkaError) and transient(err)):
                    raise
                self.broker_fault(f"commit refused: {err.str()}")
                return False
            if self.commit_stat:
                self.stats[self.commit_stat] += 1
            self.broker.ok()
        return True

    def _commit_transaction(self, cons: Consumer) -> bool:
        """Exactly-once: state, outputs and the offsets of every assigned partition in one transaction (one
        transaction holds the outputs of all of them), then the next one begins. A broker fault while committing
        is waited out here, committing the same transaction again (nothing may be produced into it meanwhile);
        any other failure aborts it and fails the processor: a restart resumes from the last transaction."""
        self.checkpoint(set(self.assigned))
        offsets = self.offsets(set(self.assigned))
        try:
            if offsets:
                self.prod.send_offsets_to_transaction(offsets, cons.consumer_group_metadata(), 60)
            while True:
                try:
                    self.prod.commit_transaction(60)
                    break
                except KafkaException as exc:
                    err = exc.args[0] if exc.args else None
                    if not (isinstance(err, KafkaError) and err.retriable()):
                        raise
                    self.broker_fault(f"transaction commit: {err.str()}")
                    time.sleep(1.0)  # the broker is away: do not spin on it
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.txn_requires_abort():
                self.prod.abort_transaction(30)
            raise
        self.errors.raise_if_any()
        self.prod.begin_transaction()
        if self.commit_stat and offsets:
            self.stats[self.commit_stat] += 1
        self.broker.ok()
        return True

    def _abort_transaction(self) -> None:
        """Exactly-once: drop the open transaction's outputs and state (the partitions are someone else's now, or
        their state was reset), and begin the next one."""
        if self.exactly_once and self.prod is not None:
            self.prod.abort_transaction(30)
            self.prod.poll(0)  # serves the purged outputs' delivery reports: they failed on purpose
            self.errors.first = None
            self.prod.begin_transaction()

    # -- broker faults --------------------------------------------------------------------

    def broker_fault(self, what: str) -> None:
        """A transient broker fault: back off, log (once a minute), and stop trusting partition ends."""
        self.broker.fault(what)
        if self.caught_up:
            stale, self.caught_up = set(self.caught_up), set()
            self.stale |= stale
            self.partitions_stale(stale)

    def _client_error(self, err: KafkaError) -> None:
        """The clients' ``error_cb`` (served in this thread, by consume and poll)."""
        CLIENT_LOG.error(err)
        if err.code() in BROKER_DOWN and not err.fatal():
            self.broker_fault(err.str())

    def _confirm_ends(self, cons: Consumer) -> None:
        """Partitions made stale by a broker fault and silent since: at their end (nothing waiting at the
        broker past what was handled) they are caught up again; asked at most once a second."""
        now = self.clock()
        self.stale &= self.assigned
        if not self.stale or now < self._recheck_at or not self.broker.ready():
            return
        self._recheck_at = now + 1.0
        try:
            if not self.broker.settled(self.settle_s):
                cons.list_topics(self.topic, timeout=1.0)  # the broker answers: the outage is over
                self.broker.ok()
                return
            for tp in cons.position([TopicPartition(t, p) for t, p in sorted(self.stale)]):
                partition = (tp.topic, tp.partition)
                low, high = cons.get_watermark_offsets(tp, timeout=1.0, cached=False)
                at = tp.offset if tp.offset >= 0 else self.processed.get(partition)
                if at is None:  # nothing read since it was assigned: its committed offset is where it stands
                    committed = cons.committed([TopicPartition(*partition)], timeout=1.0)[0].offset
                    at = committed if committed >= 0 else low
                if at >= high and partition in self.stale:
                    self.stale.discard(partition)
                    self.caught_up.add(partition)
                    self.partition_end(partition)
        except KafkaException as exc:
            self.broker_fault(f"checking partition ends: {exc.args[0]}")

    # -- the loop -------------------------------------------------------------------------

    def _assigned(self, cons: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned = {(p.topic, p.partition) for p in partitions}  # eager rebalancing: the whole assignment
        stored = self.stored_offsets()
        if stored is not None:  # resume from the processor's store, not from the group's commits
            for tp in partitions:
                tp.offset = stored.get((tp.topic, tp.partition), tp.offset)
            cons.assign(partitions)
        self.on_assign(cons, partitions)

    def _lost(self, cons: Consumer, partitions: list[TopicPartition]) -> None:
        """The group dropped this member (its session expired, e.g. while the broker was away): the partitions
        may be another member's already, so their state is dropped unwritten and their offsets uncommitted."""
        self.log.warning("%s lost partitions %s (the group moved on); resuming from the last commit",
                         self.name, sorted((p.topic, p.partition) for p in partitions))
        self.losing = True
        try:
            self._revoked(cons, partitions)
        finally:
            self.losing = False

    def _revoked(self, cons: Consumer, partitions: list[TopicPartition]) -> None:
        self.on_revoke(cons, partitions)
        self._abort_transaction()  # what the last transaction left out is redone by the next owner
        for p in partitions:
            self.assigned.discard((p.topic, p.partition))
            self.caught_up.discard((p.topic, p.partition))
            self.stale.discard((p.topic, p.partition))
            self.processed.pop((p.topic, p.partition), None)
            self.ends.pop((p.topic, p.partition), None)

    def _held_open(self, cons: Consumer) -> set[Partition]:
        """Caught-up partitions whose end is a transaction still open: a reader that reads committed (librdkafka's
        default) stops at the last stable offset and reports its end there, while the high watermark, as the last
        fetch response gave it, is past it. Not idle until the transaction commits or aborts: a killed writer's is
        aborted by the broker after its transaction timeout, and an agent ending before then would miss what
        follows it. Local calls only (positions and cached watermarks)."""
        held = set()
        for tp in cons.position([TopicPartition(t, p) for t, p in sorted(self.caught_up)]):
            partition = (tp.topic, tp.partition)
            _, high = cons.get_watermark_offsets(tp, cached=True)
            at = max(tp.offset, self.ends.get(partition, -1))
            if 0 <= at < high:
                held.add(partition)
        now = self.clock()
        self._held = {p: self._held.get(p, now) for p in held}
        # data that just arrived is "held" for a moment too (fetched, not yet handed over): log only the long waits
        waiting = sorted(p for p, since in self._held.items() if now - since >= 5.0 and p not in self._held_logged)
        self._held_logged = {p for p in self._held_logged if p in held} | set(waiting)
        if waiting:
            self.log.info("%s: %s read to the last stable offset, with records of an open transaction past it; "
                          "not idle until it commits or is aborted", self.name, waiting)
        return held

    def _consume(self, cons: Consumer) -> list[Message]:
        size = self.batch_size or self.settings.batch_size
        if not self.wake_on_first:
            return cons.consume(size, timeout=self.poll_s)
        first = cons.poll(self.poll_s)  # returns on the first message (consume() waits out its timeout)
        return [first] + cons.consume(size - 1, timeout=0) if first is not None else []

    def _handle_batch(self, batch: list[Message]) -> int:
        """Dispatch a consumed batch in order; returns how many data messages it held."""
        data = 0
        for msg in batch:
            err = msg.error()
            if err is None:
                partition = (msg.topic(), msg.partition())
                if partition not in self.assigned:
                    continue  # fetched before its partition was revoked or lost: its next owner reads it again
                self.caught_up.discard(partition)
                self.stale.discard(partition)  # it speaks again: its next end comes as an event
                self.processed[partition] = msg.offset() + 1
                self.handle(msg)
                data += 1
            elif err.code() == KafkaError._PARTITION_EOF:  # consumers run with partition EOF events on
                partition = (msg.topic(), msg.partition())
                if partition not in self.assigned:
                    continue
                self.ends[partition] = msg.offset()
                if not self.broker.settled(self.settle_s):
                    self.stale.add(partition)  # the end of what reached the broker: sources may still be flushing
                    continue
                self.caught_up.add(partition)
                self.stale.discard(partition)
                self.partition_end(partition)
            elif err.code() in BROKER_DOWN and not err.fatal():
                self.broker_fault(err.str())  # the consumer reconnects by itself
            else:
                self.consumer_error(err)
        return data

    def run(self, stop: threading.Event, exit_when_idle: bool = False) -> dict:
        settings = self.settings
        quiet_s = settings.idle_close_s if self.quiet_s is None else self.quiet_s
        self.cons = cons = consumer(settings, settings.group(self.name),
                                    **{"error_cb": self._client_error, **self.consumer_overrides})
        transaction = {"transactional.id": f"{settings.app_id}.{settings.topic_prefix}{self.name}-"
                                           f"{uuid.uuid4().hex[:12]}",
                       "transaction.timeout.ms": self.transaction_timeout_ms} if self.exactly_once else {}
        self.prod = prod = producer(settings, **{"error_cb": self._client_error, **transaction,
                                                 **self.producer_overrides})
        if self.exactly_once:  # fencing is by the consumer group's generation (KIP-447): one id per process
            prod.init_transactions(60)
            prod.begin_transaction()
            self.log.info("%s: exactly-once, transactional id %s", self.name, transaction["transactional.id"])
        self.dead = DeadLetters(settings, prod, self.name, self.codec)
        try:
            try:
                self.setup(cons)
                cons.subscribe([settings.topic(s) for s in self.joined_sources()], on_assign=self._assigned,
                               on_revoke=self._revoked, on_lost=self._lost)
                last_data = last_commit = self.clock()
                dirty = progressed = False
                reporting = self.health_every_s is not None and not exit_when_idle
                next_report = self.clock() + (self.health_every_s or 0.0)
                while not stop.is_set():
                    batch = self._consume(cons)
                    self.before_batch()
                    messages = self._handle_batch(batch)
                    if self.stale:
                        self._confirm_ends(cons)
                    now = self.clock()
                    if messages:
                        last_data, progressed = now, True
                        self.health["processed"] += messages
                        self.health["last_input_ms"] = int(self.run_clock() * 1000)
                    if self._sent:
                        self.health["last_output_ms"], self._sent = int(self.run_clock() * 1000), False
                    idle = (bool(self.assigned) and self.caught_up >= self.assigned and now - last_data >= quiet_s
                            and not self._held_open(cons))
                    urgent = self.end_batch(messages, idle)
                    urgent = self.housekeeping() or urgent
                    prod.poll(0)
                    dirty = dirty or bool(messages) or urgent
                    if dirty and (urgent or idle or now - last_commit >= self.commit_every_s) and self.broker.ready():
                        if self.commit(cons):
                            last_commit, dirty = now, False
                            if progressed:
                                self.health["last_commit_ms"], progressed = int(self.run_clock() * 1000), False
                    if reporting and now >= next_report:
                        self.report_health(cons)
                        next_report = now + self.health_every_s
                        dirty = dirty or self.exactly_once  # the report rides in the open transaction: commit it
                    done = idle and not dirty and self.settled()
                    self.handoff.idle(self.name, done)
                    if exit_when_idle and done and self.handoff.may_end(self.clock(), quiet_s):
                        break
                if dirty and not self.commit(cons):  # stopping: keep what was done
                    self.log.warning("%s stopped with its last commit refused; the next run repeats it", self.name)
            finally:
                self.stats["dead_letters"] = self.dead.count
                try:
                    close_clients(prod, cons)  # leaving the group may revoke, and so commit: the producer is still here
                finally:
                    self.prod = self.cons = self.dead = None  # no client may outlive the run (the broker may stop)
        finally:
            self.close()
        self.log.info("%s stopped: %s", self.name, self.stats)
        return self.stats
