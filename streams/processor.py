"""The loop every confluent-kafka batch processor shares (rollup, anomaly, and the keyed ones).

``BatchProcessor.run`` consumes a batch, hands each data message to ``handle`` (and
each partition end to ``partition_end``, in message order), then calls ``end_batch``.
About every ``commit_every_s`` (and when the processor emitted something that should be
committed at once, when idle, when a partition is revoked and when stopping) it commits:

1. wait until every output and dead letter is delivered,
2. ``checkpoint``: write the state the offsets depend on, and wait for it too,
3. commit the ``offsets``.

So a crash repeats at most the uncommitted messages and never loses one; subclasses keep
enough in their state to recognise a repeated message. Undeliverable outputs fail the
processor before it commits. Idle means every assigned partition is read to its end and
no data came for ``idle_close_s``; ``run(exit_when_idle=True)`` returns then, once committed.

Subclasses set ``name`` (consumer group, dead-letter agent, logger) and ``source`` (the
catalog topic read) and implement ``handle``; the other hooks default to doing nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from opsloop.connectors.kafka import DeadLetters, DeliveryErrors, close_clients, consumer, producer, send, wait_delivered
from opsloop.config.catalog import cached_catalog
from opsloop.config.settings import Settings
from opsloop.schemas.codec import Codec


class BatchProcessor:
    name = ""
    source = ""  # catalog topic read
    poll_s = 0.5  # the longest consume() waits for a batch to fill
    commit_every_s = 1.0
    commit_stat = "commits"  # the stats key counting commits

    def __init__(self, settings: Settings, codec: Codec | None = None, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.codec = codec or Codec.default()
        self.clock = clock  # processing time: commit pacing and idleness only
        self.catalog = cached_catalog(settings.topics_file)
        self.topic = settings.topic(self.source)
        self.log = logging.getLogger(f"opsloop.{self.name}")
        self.stats: dict[str, Any] = {}  # subclasses fill it; it must hold "dead_letters" and commit_stat
        self.assigned: set[int] = set()
        self.caught_up: set[int] = set()  # partitions read to their end, with nothing newer since
        self.processed: dict[int, int] = {}  # partition → next offset to read
        self.errors = DeliveryErrors()
        self.prod = None
        self.dead: DeadLetters | None = None

    # -- subclass hooks -------------------------------------------------------------------

    def setup(self, cons: Consumer) -> None:
        """Create what the processor needs before it joins the group (state topics)."""

    def on_assign(self, cons: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions given to this process (``self.assigned`` already holds them)."""

    def on_revoke(self, cons: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away (still in ``self.assigned``: they may be committed here)."""

    def before_batch(self) -> None:
        """Called before each batch is handled, empty ones too."""

    def handle(self, msg: Message) -> None:
        """One data message (``self.processed`` already counts it)."""
        raise NotImplementedError

    def partition_end(self, partition: int) -> None:
        """A partition was read to its end (called in message order)."""

    def end_batch(self, messages: int, idle: bool) -> bool:
        """After each batch (``messages``: data messages it held); True to commit now."""
        return False

    def checkpoint(self, partitions: set[int]) -> None:
        """Write the state of ``partitions`` that their next offsets rely on (outputs are delivered)."""

    def offsets(self, partitions: set[int]) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p, upto) for p, upto in self.processed.items() if p in partitions]

    # -- for subclasses -------------------------------------------------------------------

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        send(self.prod, topic, key, value, self.errors)

    def emit(self, topic: str, record: dict) -> None:
        """Send a record to catalog topic ``topic``, encoded and keyed as the catalog declares."""
        spec = self.catalog[topic]
        self.send(self.settings.topic(topic), spec.key_of(record), self.codec.encode(spec.record, record))

    def dead_letter(self, msg: Message, kind: str, reason: str) -> None:
        self.dead.send(msg, kind, reason, self.errors)

    def commit(self, cons: Consumer, partitions: set[int] | None = None) -> None:
        """Outputs delivered, then state durable, then offsets committed (``partitions``: default all assigned)."""
        partitions = set(self.assigned) if partitions is None else set(partitions) & self.assigned
        wait_delivered(self.prod)  # outputs first: stored state never runs ahead of what downstream got
        self.errors.raise_if_any()
        self.checkpoint(partitions)
        wait_delivered(self.prod)
        self.errors.raise_if_any()
        offsets = self.offsets(partitions)
        if offsets:
            cons.commit(offsets=offsets, asynchronous=False)
            self.stats[self.commit_stat] += 1

    # -- the loop -------------------------------------------------------------------------

    def _assigned(self, cons: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned = {p.partition for p in partitions}  # eager rebalancing: the whole assignment
        self.on_assign(cons, partitions)

    def _revoked(self, cons: Consumer, partitions: list[TopicPartition]) -> None:
        self.on_revoke(cons, partitions)
        for p in partitions:
            self.assigned.discard(p.partition)
            self.caught_up.discard(p.partition)
            self.processed.pop(p.partition, None)

    def _handle_batch(self, batch: list[Message]) -> int:
        """Dispatch a consumed batch in order; returns how many data messages it held."""
        data = 0
        for msg in batch:
            err = msg.error()
            if err is None:
                partition = msg.partition()
                self.caught_up.discard(partition)
                self.processed[partition] = msg.offset() + 1
                self.handle(msg)
                data += 1
            elif err.code() == KafkaError._PARTITION_EOF:  # consumers run with partition EOF events on
                self.caught_up.add(msg.partition())
                self.partition_end(msg.partition())
            else:
                raise KafkaException(err)
        return data

    def run(self, stop: threading.Event, exit_when_idle: bool = False) -> dict:
        settings = self.settings
        cons = consumer(settings, settings.group(self.name))
        self.prod = prod = producer(settings)
        self.dead = DeadLetters(settings, prod, self.name)
        try:
            self.setup(cons)
            cons.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked)
            last_data = last_commit = self.clock()
            dirty = False
            while not stop.is_set():
                batch = cons.consume(settings.batch_size, timeout=self.poll_s)
                self.before_batch()
                messages = self._handle_batch(batch)
                now = self.clock()
                if messages:
                    last_data = now
                idle = bool(self.assigned) and self.caught_up >= self.assigned and now - last_data >= settings.idle_close_s
                urgent = self.end_batch(messages, idle)
                prod.poll(0)
                dirty = dirty or bool(messages) or urgent
                if dirty and (urgent or idle or now - last_commit >= self.commit_every_s):
                    self.commit(cons)
                    last_commit, dirty = now, False
                if idle and exit_when_idle and not dirty:
                    break
            if dirty:
                self.commit(cons)  # stopping: keep what was done
        finally:
            self.stats["dead_letters"] = self.dead.count
            try:
                close_clients(prod, cons)  # leaving the group may revoke, and so commit: the producer is still here
            finally:
                self.prod = self.dead = None  # no client may outlive the run (the broker may stop next)
        self.log.info("%s stopped: %s", self.name, self.stats)
        return self.stats
