"""Topics read whole by every process: all their partitions assigned directly, no group joined, nothing committed.

The series agents read their hint topics this way (streams/series.py ``stateless``): each instance sees every
hint, whatever share of its group's partitions it holds. ``Broadcast`` starts each partition at its first record
at or after ``since_ms`` (Kafka's time; at its end when it has none that recent), ``catch_up`` reads to the ends
the partitions had when it was called, and ``poll`` hands over what the client has fetched since, without waiting.
A partition added to a topic later is read from its beginning, once ``refresh_s`` has passed.

The consumer is built by ``connectors.kafka.consumer`` (the same security settings as every client) with the
group id ``broadcast_group``: the client needs one, but never joins it, fetches no committed offset (every start
is explicit) and commits nothing; the name falls under the agent's own prefixed grants (config/access.py).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, Message, TopicPartition

from opsloop.config.settings import Settings
from opsloop.connectors.kafka import consumer, transient

Partition = tuple[str, int]  # (physical topic, partition)
log = logging.getLogger("opsloop.broadcast")


def broadcast_group(settings: Settings, agent: str) -> str:
    """The group id of an agent's broadcast reader: inside the agent's own prefix, never joined."""
    return settings.group(f"{agent}-hints")


def start_offsets(partitions: Iterable[Partition], found: dict[Partition, int]) -> dict[Partition, int]:
    """Where each partition starts: the offset ``offsets_for_times`` found (its first record at or after the time),
    else its end (no record that recent, or none at all: -1).

    >>> start_offsets([("h", 0), ("h", 1)], {("h", 0): 7, ("h", 1): -1})
    {('h', 0): 7, ('h', 1): -1}
    """
    return {p: found[p] if found.get(p, -1) >= 0 else OFFSET_END for p in partitions}


class Pending:
    """Partitions not yet read to the end they had when reading began (``ends``: their high watermarks then).

    >>> left = Pending({("h", 0): 10, ("h", 1): 4, ("h", 2): 9}, {("h", 0): 7, ("h", 1): OFFSET_END, ("h", 2): 9})
    >>> sorted(left.ends)  # h/1 starts at its end, h/2 has nothing past its start
    [('h', 0)]
    >>> left.reached(("h", 0), 9), left.done()
    (None, False)
    >>> left.reached(("h", 0), 10), left.done()
    (None, True)
    """

    def __init__(self, ends: dict[Partition, int], starts: dict[Partition, int]):
        self.ends = {p: end for p, end in ends.items() if 0 <= starts.get(p, OFFSET_END) < end}

    def reached(self, partition: Partition, next_offset: int) -> None:
        if next_offset >= self.ends.get(partition, next_offset):
            self.ends.pop(partition, None)

    def done(self) -> bool:
        return not self.ends


class Broadcast:
    """Every partition of ``topics`` (physical names), for this process alone."""

    def __init__(self, settings: Settings, topics: list[str], group: str, since_ms: int, error_cb=None,
                 refresh_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.topics, self.refresh_s, self.clock = list(topics), refresh_s, clock
        self.cons = consumer(settings, group, **({"error_cb": error_cb} if error_cb else {}))
        try:
            partitions = self._partitions(timeout_s=30.0)
            found = self.cons.offsets_for_times([TopicPartition(t, p, since_ms) for t, p in partitions], 30)
            starts = start_offsets(partitions, {(f.topic, f.partition): f.offset for f in found})
            ends = {p: self.cons.get_watermark_offsets(TopicPartition(*p), timeout=30)[1] for p in partitions}
            self.pending = Pending(ends, starts)
            self.cons.assign([TopicPartition(t, p, starts[(t, p)]) for t, p in partitions])
        except BaseException:
            self.cons.close()
            raise
        self.known = set(partitions)
        self.next_refresh = self.clock() + refresh_s
        self.read = 0  # hints handed over

    def _partitions(self, timeout_s: float) -> list[Partition]:
        found = []
        for topic in self.topics:
            meta = self.cons.list_topics(topic, timeout=timeout_s).topics[topic]
            if meta.error is not None:
                raise KafkaException(meta.error)
            found += [(topic, p) for p in sorted(meta.partitions)]
        return found

    def catch_up(self, handle: Callable[[Message], None], timeout_s: float = 60.0) -> bool:
        """Hand every record up to the ends the partitions had at the start to ``handle``; False (logged) when that
        took longer than ``timeout_s``: the rest then comes through ``poll``."""
        deadline = self.clock() + timeout_s
        while not self.pending.done():
            if self.clock() > deadline:
                log.warning("hints of %s not read to their end within %.0f s (%s left); reading on as they come",
                            self.topics, timeout_s, sorted(self.pending.ends))
                return False
            for msg in self.cons.consume(1000, timeout=0.2):
                self._take(msg, handle)
            # past a transaction marker the position moves on without a message
            left = [TopicPartition(t, p) for t, p in self.pending.ends]
            for tp in self.cons.position(left) if left else ():
                self.pending.reached((tp.topic, tp.partition), tp.offset)
        return True

    def poll(self, handle: Callable[[Message], None], most: int = 1000) -> int:
        """Hand what has been fetched so far to ``handle``, never waiting; returns how many records."""
        self._refresh()
        taken = 0
        for msg in self.cons.consume(most, timeout=0):
            taken += self._take(msg, handle)
        return taken

    def _take(self, msg: Message, handle: Callable[[Message], None]) -> int:
        err = msg.error()
        if err is None:
            handle(msg)
            self.pending.reached((msg.topic(), msg.partition()), msg.offset() + 1)
            self.read += 1
            return 1
        if err.code() == KafkaError._PARTITION_EOF:  # at its end, even when that stops short of the one taken
            self.pending.ends.pop((msg.topic(), msg.partition()), None)
        elif not transient(err):  # refused (an ACL missing), or a fatal client error: never read hints silently
            raise KafkaException(err)
        return 0  # a broker fault: the client reconnects by itself (error_cb tells the agent)

    def _refresh(self) -> None:
        """Partitions added since the last look, read from their beginning (at most every ``refresh_s``)."""
        if self.clock() < self.next_refresh:
            return
        self.next_refresh = self.clock() + self.refresh_s
        try:
            new = [p for p in self._partitions(timeout_s=1.0) if p not in self.known]
        except KafkaException:
            return  # the broker is away: look again next time
        if new:
            log.info("hint partitions %s added: reading them from their beginning", new)
            self.cons.incremental_assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in new])
            self.known |= set(new)

    def close(self) -> None:
        self.cons.close()
