"""A confluent-kafka batch processor with keyed, restart-safe state (the base of the alarm and peaks processors).

The loop of streams/rollup.py, with state per message key kept the way a Faust table keeps
it, in a compacted changelog (connectors/changelog.py), restored for the partitions this
process is assigned. Per batch: decode (undecodable records, and those ``reject`` finds a
reason against, → ``deadletter``), ``fold`` each record into its key's state, ``finish``
each touched key once, send what they return (then ``after_batch``). About once a second
(and when idle or stopping): wait until outputs are delivered, write the touched keys'
states to the changelog, wait again, then commit the offsets. A crash therefore
repeats at most the uncommitted events, and states carry the last offset they folded in,
so repeated events are recognised and skipped (see ``fold`` in the subclasses).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from confluent_kafka import TopicPartition

from connectors.changelog import Changelog
from connectors.kafka import (DeadLetters, DeliveryErrors, close_clients, consumer, data_messages, producer, send,
                              wait_delivered)
from ops.catalog import load_catalog
from ops.settings import Settings
from schemas.codec import Codec, DecodeError

COMMIT_EVERY_S = 1.0
POLL_S = 0.005  # the longest a record waits for its batch to fill (latency at low rates)

Output = tuple[str, bytes, str, dict]  # (catalog topic, key, record name, record)


class KeyedProcessor:
    name = "keyed"
    source = ""  # catalog topic read
    record = ""  # its record

    def __init__(self, settings: Settings, codec: Codec | None = None, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.codec = codec or Codec.default()
        self.clock = clock  # processing time: commit pacing and idleness only
        self.log = logging.getLogger(f"opsloop.{self.name}")
        self.topic = settings.topic(self.source)
        self.partitions = load_catalog(settings.topics_file)[self.source].partitions
        self.stats: dict[str, Any] = {"in": 0, "out": 0, "replayed": 0, "dead_letters": 0, "commits": 0}
        self._reset()

    # -- subclass hooks -------------------------------------------------------------------

    def load_state(self, key: bytes, stored: bytes | None) -> Any:
        raise NotImplementedError

    def dump_state(self, state: Any) -> bytes:
        raise NotImplementedError

    def fold(self, state: Any, key: bytes, record: dict, offset: int) -> list[Output] | None:
        """Outputs of one record, or None when the state has folded in this offset already."""
        raise NotImplementedError

    def finish(self, state: Any, key: bytes) -> list[Output]:
        return []

    def before_batch(self) -> None:
        pass

    def reject(self, record: dict) -> str | None:
        """Why a decoded record is invalid (it is dead-lettered as ``invalid``), or None to fold it."""
        return None

    def after_batch(self, messages: int) -> None:
        """Called once a batch's outputs are handed to the producer; ``messages``: records it held."""

    # -- plumbing -------------------------------------------------------------------------

    def _reset(self) -> None:
        self.stored: dict[int, dict[bytes, bytes]] = {}
        self.live: dict[tuple[int, bytes], Any] = {}
        self.dirty: set[tuple[int, bytes]] = set()
        self.processed: dict[int, int] = {}
        self.assigned: set[int] = set()
        self.caught_up: set[int] = set()

    def _on_assign(self, cons, partitions) -> None:
        self._reset()
        self.assigned = {p.partition for p in partitions}
        self.stored = self.changelog.restore(sorted(self.assigned))
        self.log.info("%s assigned partitions %s of %s; restored %d keys", self.name, sorted(self.assigned),
                      self.topic, sum(len(keys) for keys in self.stored.values()))

    def _on_revoke(self, cons, partitions) -> None:
        self._reset()  # uncommitted work is redone by the next owner, from the changelog

    def _state(self, partition: int, key: bytes) -> Any:
        found = self.live.get((partition, key))
        if found is None:
            found = self.live[(partition, key)] = self.load_state(key, self.stored.get(partition, {}).get(key))
        return found

    def _emit(self, prod, outputs: list[Output], errors: DeliveryErrors) -> None:
        for topic, key, record, value in outputs:
            send(prod, self.settings.topic(topic), key, self.codec.encode(record, value), errors)
        self.stats["out"] += len(outputs)

    def _commit(self, cons, prod, errors: DeliveryErrors) -> None:
        wait_delivered(prod)  # outputs first: stored state never runs ahead of what downstream got
        errors.raise_if_any()
        for partition, key in self.dirty:
            if partition in self.assigned:
                self.changelog.write(prod, partition, key, self.dump_state(self.live[(partition, key)]), errors)
        wait_delivered(prod)
        errors.raise_if_any()
        self.dirty.clear()
        offsets = [TopicPartition(self.topic, p, upto) for p, upto in self.processed.items() if p in self.assigned]
        if offsets:
            cons.commit(offsets=offsets, asynchronous=False)
            self.stats["commits"] += 1

    def run(self, stop: threading.Event, exit_when_idle: bool = False) -> dict:
        settings = self.settings
        self.changelog = Changelog(settings, f"{self.name}-state", self.partitions)
        cons = consumer(settings, settings.group(self.name))
        prod = producer(settings)
        errors = DeliveryErrors()
        dead = DeadLetters(settings, prod, self.name)
        cons.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        last_data = last_commit = self.clock()
        uncommitted = False
        try:
            while not stop.is_set():
                batch = cons.consume(settings.batch_size, timeout=POLL_S)
                self.before_batch()
                touched: dict[tuple[int, bytes], Any] = {}
                outputs: list[Output] = []
                messages = 0
                for msg in data_messages(batch, self.caught_up):
                    partition, offset = msg.partition(), msg.offset()
                    self.processed[partition] = offset + 1
                    messages += 1
                    try:
                        record = self.codec.decode_as(self.record, msg.value())
                    except DecodeError as exc:
                        dead.send(msg, "decode", exc.reason, errors)
                        continue
                    reason = self.reject(record)
                    if reason is not None:
                        dead.send(msg, "invalid", reason, errors)
                        continue
                    key = msg.key() or b""
                    state = self._state(partition, key)
                    produced = self.fold(state, key, record, offset)
                    if produced is None:
                        self.stats["replayed"] += 1
                        continue
                    self.stats["in"] += 1
                    outputs += produced
                    touched[(partition, key)] = state
                for (partition, key), state in touched.items():
                    outputs += self.finish(state, key)
                    self.dirty.add((partition, key))
                if outputs:
                    self._emit(prod, outputs, errors)
                if messages:
                    self.after_batch(messages)
                prod.poll(0)
                now = self.clock()
                if batch:
                    last_data = now
                idle = bool(self.assigned) and self.caught_up >= self.assigned and now - last_data >= settings.idle_close_s
                uncommitted = uncommitted or bool(batch)
                if uncommitted and (idle or now - last_commit >= COMMIT_EVERY_S):
                    self._commit(cons, prod, errors)
                    last_commit, uncommitted = now, False
                if idle and exit_when_idle and not uncommitted:
                    break
            if self.assigned and uncommitted:
                self._commit(cons, prod, errors)  # stopping: keep what was done
        finally:
            self.stats["dead_letters"] = dead.count
            close_clients(prod, cons)
        self.log.info("%s stopped: %s", self.name, self.stats)
        return self.stats
