"""Keyed state of a batch processor, kept in a compacted changelog topic (what a Faust table does).

Each key's state lives in the changelog partition with the number of the source partition it
came from, so a processor that is assigned source partition p restores exactly the keys of
p. ``restore`` reads the assigned changelog partitions to their end (latest value per key
wins; an empty value deletes). Processors write a key's latest state when they commit, after
the outputs of the same events are delivered, so the stored state never runs behind what
downstream has seen.
"""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from opsloop.connectors.kafka import admin, consumer, send, watermark_offsets
from opsloop.config.settings import Settings


def changelog_replication(brokers: int) -> int:
    """Replicas of a new changelog: as many as the cluster has brokers, up to 3, so that a processor's state
    survives one broker's restart or a leader change (a single replica goes offline with its broker)."""
    return max(1, min(3, brokers))


class Changelog:
    """The changelog ``<app id>.<prefix><name>-changelog``, created (compacted, one partition per source
    partition, ``changelog_replication`` replicas) unless it exists; one with fewer partitions than the source
    is an error."""

    def __init__(self, settings: Settings, name: str, partitions: int, timeout_s: float = 30.0):
        self.settings = settings
        self.topic = f"{settings.app_id}.{settings.topic_prefix}{name}-changelog"
        self.partitions = partitions
        self.timeout_s = timeout_s
        client = admin(settings)
        meta = client.list_topics(timeout=timeout_s)
        existing = meta.topics.get(self.topic)
        if existing is not None:
            if len(existing.partitions) < partitions:
                raise RuntimeError(f"changelog {self.topic} has {len(existing.partitions)} partitions; "
                                   f"its source has {partitions}")
            return
        future = client.create_topics([NewTopic(self.topic, partitions, changelog_replication(len(meta.brokers)),
                                                config={"cleanup.policy": "compact"})])
        try:
            future[self.topic].result(timeout_s)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a second worker got there first
                raise
        _wait_for_leaders(client, self.topic, timeout_s)

    def restore(self, partitions: list[int]) -> dict[int, dict[bytes, bytes]]:
        """partition → key → latest state, read to the end of each assigned changelog partition."""
        state: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}
        # partition ends come as events: under exactly-once the last offset is a transaction marker, never a message
        cons = consumer(self.settings, f"{self.topic}-restore", **{"enable.partition.eof": True})
        try:
            ends = {}
            for p in partitions:
                low, high = watermark_offsets(cons, TopicPartition(self.topic, p), self.timeout_s)
                if high > low:
                    ends[p] = high
            if not ends:
                return state
            cons.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
            deadline = time.monotonic() + self.timeout_s * 4
            while ends:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.topic}: restore did not reach the end of partitions {sorted(ends)}")
                for msg in cons.consume(5000, timeout=0.5):
                    if msg.error():
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            ends.pop(msg.partition(), None)
                        continue
                    p = msg.partition()
                    if msg.value():
                        state[p][msg.key()] = msg.value()
                    else:
                        state[p].pop(msg.key(), None)
                    if p in ends and msg.offset() + 1 >= ends[p]:
                        del ends[p]
            return state
        finally:
            cons.close()

    def write(self, prod, partition: int, key: bytes, value: bytes | None, on_delivery=None) -> None:
        send(prod, self.topic, key, value, on_delivery, partition=partition)


def _wait_for_leaders(client, topic: str, timeout_s: float) -> None:
    """A new topic answers only once each partition has a leader."""
    deadline = time.monotonic() + timeout_s
    while True:
        meta = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions and all(
                p.leader >= 0 and p.error is None for p in meta.partitions.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"changelog {topic} has no leader for every partition after {timeout_s}s")
        time.sleep(0.1)

