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


def _properties(path) -> dict:
    lines = [line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {k: v for k, v in lines}


def test_single_node_is_its_own_controller_quorum(tmp_path):
    props = _properties(LocalKafka(tmp_path / "cache", tmp_path / "state", port=9100)._config())
    assert props["process.roles"] == "broker,controller" and props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9101"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9100,CONTROLLER://127.0.0.1:9101"
    assert props["offsets.topic.replication.factor"] == "1"


def test_cluster_nodes_share_one_quorum_and_cluster_id(tmp_path):
    from opsloop.ops.kafka import LocalKafkaCluster

    cluster = LocalKafkaCluster(tmp_path / "cache", tmp_path / "state", size=3)
    first, *brokers = [_properties(node._config()) for node in cluster.nodes]
    voters = f"1@127.0.0.1:{cluster.node(1).port + 1}"
    assert first["process.roles"] == "broker,controller" and first["controller.quorum.voters"] == voters
    for node_id, props in enumerate(brokers, start=2):
        assert props["process.roles"] == "broker" and props["node.id"] == str(node_id)
        assert props["controller.quorum.voters"] == voters and "CONTROLLER" not in props["listeners"]
        assert props["offsets.topic.replication.factor"] == "3"
    assert len({node.cluster_id for node in cluster.nodes}) == 1 and cluster.nodes[0].cluster_id
    assert len({node.port for node in cluster.nodes}) == 3
    assert cluster.bootstrap.count(",") == 2 and len({node.state_dir for node in cluster.nodes}) == 3


def test_a_changelog_is_replicated_as_the_cluster_allows_up_to_three():
    from opsloop.connectors.changelog import changelog_replication

    assert [changelog_replication(n) for n in (0, 1, 2, 3, 5)] == [1, 1, 2, 3, 3]
