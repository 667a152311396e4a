"""The source publisher's bound, with a real producer whose broker is unreachable (everything queues)."""

from __future__ import annotations

import time

import pytest

from opsloop.config.settings import Settings
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources.base import Readings
from opsloop.connectors.sources.publisher import Publisher
from opsloop.models.records import telemetry_point
from opsloop.models.source_health import SourceHealth

pytestmark = pytest.mark.unit


def test_a_full_buffer_drops_counts_and_alarms_at_once_without_waiting_for_the_broker(free_port_pair, monkeypatch):
    from opsloop.connectors.sources import publisher as module

    sent = []  # what the publisher queued besides points (len(producer) also counts librdkafka's own requests)
    real_send = module.send
    monkeypatch.setattr(module, "send", lambda prod, topic, *rest: (sent.append(topic), real_send(prod, topic, *rest)))
    settings = Settings(broker=f"127.0.0.1:{free_port_pair}")  # nothing listens there
    config = parse_sources({"site": "lab", "sources": [{"kind": "k", "name": "meter-reader", "buffer_max": 100,
                                                         "block_s": 0.2}]}, "s.yaml")[0]
    health = SourceHealth(config.name, config.kind, config.site)
    publisher = Publisher(settings, config, health, clock=lambda: 1.0)
    points = [telemetry_point(i, "lab", "meter-1", "grid_meter", "grid_kw", 1.0, "kW", "test") for i in range(150)]
    began = time.monotonic()
    assert publisher.publish(Readings(points=points)) is False
    assert time.monotonic() - began < 3.0  # the alarm had room: it did not wait for the broker
    assert health.dropped == 50 and publisher.in_flight == 100
    assert len(publisher.prod) >= 101 and sent == [settings.topic("alarms.raw")]  # the points and one alarm
    assert health.record(1_000)["status"] == "degraded"
