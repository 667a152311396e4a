"""A confluent-kafka batch processor with keyed, restart-safe state (the base of the alarm and peaks processors).

The loop of streams/processor.py, with state per message key kept the way a Faust table keeps
it, in a compacted changelog (connectors/changelog.py), restored for the partitions this
process is assigned. Per batch: decode (undecodable records, those ``reject`` or ``unknown``
finds a reason against, and those whose event time ``refuse`` finds out of bounds for the key's
state → ``deadletter``), ``fold`` each record into its key's state, ``finish``
each touched key once, send what they return (then ``after_batch``). When the loop commits,
the touched keys' states go to the changelog after the outputs are delivered and before the
offsets are committed. A crash therefore repeats at most the uncommitted events, and states
carry the last offset they folded in, so repeated events are recognised and skipped (see
``fold`` in the subclasses).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from opsloop.connectors.changelog import Changelog
from opsloop.config.settings import Settings
from opsloop.models.event_time import EventTimeBounds
from opsloop.streams.processor import BatchProcessor

Output = tuple[str, dict]  # (catalog topic, record): keyed and encoded as the catalog says


class KeyedProcessor(BatchProcessor):
    transactional = True  # its effects are Kafka records only: exactly-once is an option
    name = "keyed"
    source = ""  # catalog topic read
    record = ""  # its record
    poll_s = 0.005  # the longest a record waits for its batch to fill (latency at low rates)
    wall_clock: Callable[[], float] = staticmethod(time.time)  # processing time that bounds event times

    def __init__(self, settings: Settings, wall_clock: Callable[[], float] | None = None, **kwargs):
        super().__init__(settings, **kwargs)
        if wall_clock is not None:  # the run's one clock (config/clock.py)
            self.wall_clock = wall_clock
        self.partitions = self.catalog[self.source].partitions
        self.bounds = EventTimeBounds.from_settings(settings)
        self.stats = {"in": 0, "out": 0, "replayed": 0, "dead_letters": 0, "commits": 0}
        self._reset()
        self.touched: dict[tuple[int, bytes], Any] = {}  # this batch's keys
        self.outputs: list[Output] = []  # this batch's outputs

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

    def reject(self, record: dict) -> str | None:
        """Why a decoded record is invalid (it is dead-lettered as ``invalid``), or None to fold it."""
        return None

    def unknown(self, record: dict) -> str | None:
        """Why a decoded record names something the site files do not declare (dead-lettered as
        ``unknown``), or None to fold it."""
        return None

    def refuse(self, state: Any, record: dict) -> str | None:
        """Why a record cannot be folded into its key's state (its event time is out of bounds, see
        models/event_time.py): it is dead-lettered as ``invalid``. None to fold it."""
        return None

    def now_ms(self) -> int:
        return int(self.wall_clock() * 1000)

    def after_batch(self, messages: int) -> None:
        """Called once a batch's outputs are handed to the producer; ``messages``: records it held."""

    # (``before_batch`` is streams/processor.py's)

    # -- plumbing -------------------------------------------------------------------------

    def _reset(self) -> None:
        self.stored: dict[int, dict[bytes, bytes]] = {}
        self.live: dict[tuple[int, bytes], Any] = {}
        self.dirty: set[tuple[int, bytes]] = set()

    def setup(self, cons) -> None:
        self.changelog = Changelog(self.settings, f"{self.name}-state", self.partitions)

    def on_assign(self, cons, partitions) -> None:
        self._reset()
        owned = sorted(p for _, p in self.assigned)
        self.stored = self.changelog.restore(owned)
        self.log.info("%s assigned partitions %s of %s; restored %d keys", self.name, owned,
                      self.topic, sum(len(keys) for keys in self.stored.values()))

    def on_revoke(self, cons, partitions) -> None:
        self._reset()  # uncommitted work is redone by the next owner, from the changelog

    def _state(self, partition: int, key: bytes) -> Any:
        found = self.live.get((partition, key))
        if found is None:
            found = self.live[(partition, key)] = self.load_state(key, self.stored.get(partition, {}).get(key))
        return found

    def handle(self, msg) -> None:
        record = self.decoded(msg, self.record)
        if record is None:
            return
        reason = self.reject(record)
        if reason is not None:
            self.dead_letter(msg, "invalid", reason)
            return
        reason = self.unknown(record)
        if reason is not None:
            self.dead_letter(msg, "unknown", reason)
            return
        partition, key = msg.partition(), msg.key() or b""
        state = self._state(partition, key)
        reason = self.refuse(state, record)
        if reason is not None:
            self.dead_letter(msg, "invalid", reason)
            return
        produced = self.fold(state, key, record, msg.offset())
        if produced is None:
            self.stats["replayed"] += 1
            return
        self.stats["in"] += 1
        self.outputs += produced
        self.touched[(partition, key)] = state

    def end_batch(self, messages: int, idle: bool) -> bool:
        outputs, self.outputs = self.outputs, []
        for (partition, key), state in self.touched.items():
            outputs += self.finish(state, key)
            self.dirty.add((partition, key))
        self.touched = {}
        for topic, record in outputs:
            self.emit(topic, record)
        self.stats["out"] += len(outputs)
        if messages:
            self.after_batch(messages)
        return False

    def checkpoint(self, partitions) -> None:
        for partition, key in self.dirty:
            if (self.topic, partition) in partitions:
                self.changelog.write(self.prod, partition, key, self.dump_state(self.live[(partition, key)]),
                                     self.errors)
        self.dirty.clear()
