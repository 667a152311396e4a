"""ops/kafka.py: the local broker's lifecycle, for real."""

import time
import uuid

import pytest

from opsloop.ops.kafka import LocalKafka, broker_ready
from opsloop.config.settings import Settings

pytestmark = pytest.mark.integration


def test_up_and_down_are_idempotent_and_survive_a_dash_leading_cluster_id(tmp_path, monkeypatch, free_port_pair):
    # 0xfb... encodes to "-w..." in base64url: an id that looks like a command-line option.
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(bytes=bytes([0xFB]) + bytes(15)))
    kafka = LocalKafka(Settings.from_env().cache_dir, tmp_path / "kafka", port=free_port_pair)
    assert "ready" in kafka.start()
    try:
        assert "already running" in kafka.start()
        assert broker_ready(kafka.bootstrap, 5)
    finally:
        assert "stopped" in kafka.stop()
    assert kafka.stop() == "Kafka is not running"
    assert not broker_ready(kafka.bootstrap, 1)
    assert "ready" in kafka.start()  # restarts on the storage formatted before
    assert "stopped" in kafka.stop()


def test_prefixed_topics_delete_the_catalog_topics_and_the_processors_private_ones(kafka_settings):
    from opsloop.connectors.changelog import Changelog
    from opsloop.connectors.kafka import admin
    from opsloop.ops.kafka import prefixed_topics

    client = admin(kafka_settings)
    prefix = f"scratch-{uuid.uuid4().hex[:6]}."
    with prefixed_topics(kafka_settings, prefix, extra_topics=("bench.copy",)) as scratch:
        changelog = Changelog(scratch, "dedup", partitions=2).topic  # what a keyed processor creates
        expected = {scratch.topic("alarms.raw"), scratch.topic("bench.copy"), changelog}
        assert expected <= topics_containing(client, prefix, until=lambda found: expected <= found)
    assert topics_containing(client, prefix, until=lambda found: not found) == set()


def topics_containing(client, part: str, until, tries: int = 50) -> set[str]:
    """Topic names containing ``part``, polled until ``until(names)`` holds (topic metadata is eventual)."""
    for _ in range(tries):
        found = {t for t in client.list_topics(timeout=10).topics if part in t}
        if until(found):
            break
        time.sleep(0.2)
    return found
