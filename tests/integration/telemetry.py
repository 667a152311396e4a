"""Helpers for integration tests that feed ``telemetry.raw`` directly (the series agents: anomaly, rul)."""

from __future__ import annotations

from opsloop.connectors.kafka import producer, send, wait_delivered
from opsloop.schemas.codec import Codec

CODEC = Codec.default()


def publish_points(settings, points, raw: list[bytes] = (), raw_key: bytes = b"pdu-a1") -> None:
    """Each TelemetryPoint keyed by its device, then each ``raw`` value as it is (bad input) under ``raw_key``."""
    prod = producer(settings)
    topic = settings.topic("telemetry.raw")
    for p in points:
        send(prod, topic, p["device"].encode(), CODEC.encode("TelemetryPoint", p))
    for r in raw:
        send(prod, topic, raw_key, r)
    wait_delivered(prod)
