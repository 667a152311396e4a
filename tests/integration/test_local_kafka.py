"""ops/kafka.py: the local broker's lifecycle, for real."""

import uuid

import pytest

from ops.kafka import LocalKafka, broker_ready
from ops.settings import Settings

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
