"""ops/kafka.py refuses clearly when its tools are missing."""

import pytest

from opsloop.ops.kafka import KafkaSetupError, LocalKafka

pytestmark = pytest.mark.unit


def test_missing_java_or_maven_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither java nor mvn on it
    kafka = LocalKafka(tmp_path / "cache", tmp_path / "state", port=1)
    with pytest.raises(KafkaSetupError, match="`mvn` not found"):
        kafka.install()
    with pytest.raises(KafkaSetupError, match="`java` not found"):
        kafka.start()


def test_port_taken_by_something_else_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        kafka = LocalKafka(tmp_path / "cache", tmp_path / "state", port=server.getsockname()[1])
        with pytest.raises(KafkaSetupError, match="is taken"):
            kafka.start()
