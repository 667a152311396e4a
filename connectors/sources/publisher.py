"""Hands a source's readings to Kafka, bounded: points to ``telemetry.raw``, alarms to ``alarms.raw``,
bad readings to ``deadletter``, a kind's own records to their topic (``slurm.queue``) and the
source's health to ``sources.health``.

The buffer is the producer's own queue: at most ``buffer_max`` points are in flight (handed
over, not yet acknowledged), and the queue keeps ``HEADROOM`` messages more for alarms, dead
letters and health, so a full buffer never holds up the alarm that reports it. A broker outage
fills it and nothing is lost while it has room (the producer retries until its
``message.timeout.ms``). When it is full, ``publish`` waits up to ``block_s`` for room
(back-pressure: the poll loop slows down, a receiver answers "busy"), then drops what is left
of the batch, counts it and raises ``TELEMETRY_GAP``. Points the producer gave up on are
counted and alarmed the same way. Alarms, dead letters and health records wait for room as
long as it takes: they are few, and they are how a loss is seen.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from confluent_kafka import KafkaError, Producer

from opsloop.config.catalog import cached_catalog
from opsloop.config.settings import Settings
from opsloop.config.sources import SourceConfig
from opsloop.connectors.kafka import DeadLetters, producer, send
from opsloop.connectors.sources.base import Readings
from opsloop.models.source_health import SourceHealth
from opsloop.schemas.codec import Codec
from opsloop.schemas.point_encoder import PointEncoder

log = logging.getLogger("opsloop.source")

HEADROOM = 10_000  # queue places kept for alarms, dead letters and health records


class Publisher:
    def __init__(self, settings: Settings, config: SourceConfig, health: SourceHealth,
                 clock: Callable[[], float] = time.time, prod: Producer | None = None):
        self.settings = settings
        self.config = config
        self.health = health
        self.clock = clock
        self.codec = Codec.default()
        self.catalog = cached_catalog(settings.topics_file)
        self.points = PointEncoder(self.codec)  # telemetry.raw: the constant parts of a series encoded once
        self.points_topic = settings.topic("telemetry.raw")
        self.point_key = self.catalog["telemetry.raw"].key  # the hot path reads it straight from the record
        if "." in self.point_key:
            raise ValueError(f"telemetry.raw is keyed by a nested field ({self.point_key}): update Publisher.publish")
        self.prod = prod or producer(settings, **{"queue.buffering.max.messages": config.buffer_max + HEADROOM,
                                                  "queue.buffering.max.kbytes": 2_097_151})
        self.dead = DeadLetters(settings, self.prod, f"source.{config.name}", self.codec)
        self.undelivered = 0  # points the producer gave up on, not yet alarmed
        self.delivered = 0
        self.in_flight = 0  # points handed to the producer, not yet acknowledged or given up

    def _encode(self, topic: str, record: dict) -> tuple[str, bytes | None, bytes]:
        spec = self.catalog[topic]
        return self.settings.topic(topic), spec.key_of(record), self.codec.encode(spec.record, record)

    def _point_delivered(self, err: KafkaError | None, _msg) -> None:
        self.in_flight -= 1
        if err is None:
            self.delivered += 1
        else:
            self.undelivered += 1

    def publish(self, readings: Readings) -> bool:
        """Send one poll's readings; False when some points were dropped for want of room."""
        for reject in readings.rejects:
            self.dead.write(f"source:{self.config.name}", -1, -1, None, reject.raw, reject.kind, reject.reason)
        self.alarms(readings.alarms)
        for topic, record in readings.records:  # few per poll (a queue snapshot), in order
            self._send_waiting(topic, record)
        deadline = time.monotonic() + self.config.block_s
        points = readings.points
        topic, encode, produce, delivered = self.points_topic, self.points.encode, self.prod.produce, self._point_delivered
        key_field = self.point_key
        for i, record in enumerate(points):
            key, value = record[key_field].encode(), encode(record)
            while True:
                if self.in_flight < self.config.buffer_max:
                    try:
                        produce(topic, value, key, on_delivery=delivered)
                        self.in_flight += 1
                        break
                    except BufferError:  # the queue's byte bound: the same as full
                        pass
                if time.monotonic() >= deadline:
                    self.lost(len(points) - i, f"buffer full ({self.config.buffer_max} points) for "
                                               f"{self.config.block_s:.0f} s: is the broker reachable?")
                    return False
                self.prod.poll(0.05)
        self.prod.poll(0)
        self._alarm_undelivered()
        return True

    def alarms(self, alarms: list[dict]) -> None:
        for record in alarms:
            self._send_waiting("alarms.raw", record)

    def lost(self, count: int, why: str) -> None:
        log.warning("%s: %d point(s) dropped: %s", self.config.name, count, why)
        self.alarms(self.health.lost(int(self.clock() * 1000), count, why))

    def report(self, record: dict) -> None:
        """Publish a SourceHealth record."""
        self._alarm_undelivered()
        self._send_waiting("sources.health", record)
        self.prod.poll(0)

    def _alarm_undelivered(self) -> None:
        if self.undelivered:
            count, self.undelivered = self.undelivered, 0
            self.lost(count, "the producer gave up delivering them (broker unreachable past message.timeout.ms)")

    def _send_waiting(self, topic: str, record: dict) -> None:
        send(self.prod, *self._encode(topic, record))  # waits for room: rare, and how a loss is seen

    def flush(self, timeout_s: float = 30.0) -> int:
        """Deliver what is queued; returns how many messages are still waiting."""
        left = self.prod.flush(timeout_s)
        self._alarm_undelivered()
        return left
