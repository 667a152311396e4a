"""A processor's keyed state checkpointed to a compacted Kafka topic, partition by partition.

The state of source partition P is written to partition P of the state topic (it is
created with as many partitions as the source), so whoever owns P restores it by
reading that partition to its end. Values are pickles of the processor's own
objects: the topic is private to the processor that writes it (like a Faust
table's changelog), not a public contract, so it is not in the topic catalog.
"""

from __future__ import annotations

import pickle
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from connectors.kafka import admin, watermark_offsets
from ops.settings import Settings


def ensure_state_topic(settings: Settings, name: str, partitions: int, timeout_s: float = 30.0) -> None:
    """Create the compacted state topic if missing; fail if it has fewer partitions than the source."""
    client = admin(settings)
    topics = client.list_topics(timeout=timeout_s).topics
    if name in topics:
        have = len(topics[name].partitions)
        if have < partitions:
            raise RuntimeError(f"state topic {name} has {have} partitions; its source has {partitions}")
        return
    future = client.create_topics([NewTopic(name, partitions, 1, config={"cleanup.policy": "compact"})])[name]
    try:
        future.result(timeout_s)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    _wait_for_leaders(client, name, timeout_s)


def _wait_for_leaders(client, name: str, timeout_s: float) -> None:
    """A new topic answers only once each partition has a leader."""
    deadline = time.monotonic() + timeout_s
    while True:
        meta = client.list_topics(name, timeout=timeout_s).topics.get(name)
        if meta is not None and meta.error is None and meta.partitions and all(
                p.leader >= 0 and p.error is None for p in meta.partitions.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"state topic {name} has no leader for every partition after {timeout_s}s")
        time.sleep(0.1)


def write_state(prod: Producer, topic: str, partition: int, key: str, state: Any, on_delivery=None) -> None:
    value = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    while True:
        try:
            prod.produce(topic, key=key.encode(), value=value, partition=partition, on_delivery=on_delivery)
            return
        except BufferError:
            prod.poll(0.1)


def read_state(settings: Settings, topic: str, partitions: list[int], timeout_s: float = 30.0) -> dict[int, dict[str, Any]]:
    """Latest state per key of each partition (partition → key → state), read to the partitions' ends."""
    out: dict[int, dict[str, Any]] = {p: {} for p in partitions}
    if not partitions:
        return out
    cons = Consumer({"bootstrap.servers": settings.broker, "group.id": f"{topic}.restore",
                     "enable.auto.commit": False, "enable.partition.eof": True, "log_level": 3})
    try:
        ends = {}
        for p in partitions:
            low, high = watermark_offsets(cons, TopicPartition(topic, p), timeout_s)
            if high > low:
                ends[p] = high
        cons.assign([TopicPartition(topic, p, 0) for p in ends])
        while ends:
            msg = cons.poll(timeout_s)
            if msg is None:
                raise TimeoutError(f"state topic {topic} stopped answering while restoring")
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    ends.pop(msg.partition(), None)
                    continue
                raise KafkaException(msg.error())
            p = msg.partition()
            if msg.value() is None:
                out[p].pop(msg.key().decode(), None)
            else:
                out[p][msg.key().decode()] = pickle.loads(msg.value())
            if msg.offset() + 1 >= ends.get(p, 0):
                ends.pop(p, None)
    finally:
        cons.close()
    return out
