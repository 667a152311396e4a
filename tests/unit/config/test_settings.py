"""Settings from the environment: the local broker's port names the broker unless one is named."""

import pytest

from opsloop.config.settings import Settings

pytestmark = pytest.mark.unit


def test_the_local_broker_port_is_the_broker_when_none_is_named():
    """`opsloop up` tells a user whose port 9092 is taken to set OPSLOOP_KAFKA_PORT; every other command (topic
    creation in `up` itself, the simulator, the worker, the replay, the NOC) must then reach that broker."""
    assert Settings.from_env({"OPSLOOP_KAFKA_PORT": "19092"}).broker == "127.0.0.1:19092"
    assert Settings.from_env({}).broker == "127.0.0.1:9092"


def test_a_named_broker_wins_over_the_local_port():
    env = {"OPSLOOP_KAFKA_PORT": "19092", "OPSLOOP_BROKER": "kafka:9092"}
    assert Settings.from_env(env).broker == "kafka:9092"
    assert Settings.from_env({"OPSLOOP_KAFKA_PORT": "19092"}, broker="b:1").broker == "b:1"


def test_delivery_is_at_least_once_unless_exactly_once_is_asked_and_nothing_else_is_taken():
    assert Settings.from_env({}).delivery == "at-least-once"
    assert Settings.from_env({"OPSLOOP_DELIVERY": "exactly-once"}).delivery == "exactly-once"
    with pytest.raises(ValueError, match="OPSLOOP_DELIVERY"):
        Settings.from_env({"OPSLOOP_DELIVERY": "exactly_once"})


def test_encoding_is_single_object_unless_confluent_is_asked_with_a_registry():
    assert Settings.from_env({}).encoding == "single-object"
    chosen = Settings.from_env({"OPSLOOP_ENCODING": "confluent", "OPSLOOP_SCHEMA_REGISTRY_URL": "http://r:8080"})
    assert (chosen.encoding, chosen.schema_registry_url) == ("confluent", "http://r:8080")
    with pytest.raises(ValueError, match="OPSLOOP_SCHEMA_REGISTRY_URL"):
        Settings.from_env({"OPSLOOP_ENCODING": "confluent"})
    with pytest.raises(ValueError, match="OPSLOOP_ENCODING"):
        Settings.from_env({"OPSLOOP_ENCODING": "avro"})
