"""Follows every operator label on ``operator.feedback``, from the start, in every worker.

The labels topic is kept forever, so the noise model is rebuilt by reading it from the
beginning at start-up (no consumer group: each worker learns from all labels, whichever
partitions it owns). ``poll`` never blocks; a message that does not decode is logged and
skipped here, since the topic's own consumers dead-letter it.
"""

from __future__ import annotations

import logging

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from opsloop.connectors.kafka import consumer
from opsloop.config.settings import Settings
from opsloop.schemas.codec import Codec, DecodeError

log = logging.getLogger("opsloop.feedback")
ALARM_LABELS = {"alarm_noise": True, "alarm_actionable": False}


class LabelFollower:
    def __init__(self, settings: Settings, codec: Codec | None = None):
        self.codec = codec or Codec.default()
        self.topic = settings.topic("operator.feedback")
        self.consumer = consumer(settings, f"{settings.app_id}.labels", **{"enable.partition.eof": False})
        partitions = self.consumer.list_topics(self.topic, timeout=30).topics[self.topic].partitions
        self.consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        self.skipped = 0

    def poll(self, max_messages: int = 1000) -> list[tuple[str, bool]]:
        """New alarm labels as (fingerprint, is_noise), in topic order per partition."""
        labels = []
        for msg in self.consumer.consume(max_messages, timeout=0):
            if msg.error():
                continue
            try:
                feedback = self.codec.decode_as("Feedback", msg.value())
            except DecodeError as exc:
                self.skipped += 1
                log.warning("label at %s[%s]@%s skipped: %s", msg.topic(), msg.partition(), msg.offset(), exc.reason)
                continue
            if feedback["kind"] in ALARM_LABELS:
                labels.append((feedback["target_id"], ALARM_LABELS[feedback["kind"]]))
        return labels

    def close(self) -> None:
        self.consumer.close()
