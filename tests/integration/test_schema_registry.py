"""OPSLOOP_ENCODING=confluent against a real Apicurio Registry: our producer frames records in Confluent's wire
format and confluent-kafka's own AvroDeserializer, which we did not write, reads them back through the registry;
the registry holds the subject to BACKWARD compatibility and refuses a schema that breaks it."""

import json

import httpx
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from opsloop.connectors.kafka import producer, read_to_end, send_record
from opsloop.connectors.schema_registry import ConfluentEncoder, SchemaRegistryError
from opsloop.models.records import telemetry_point
from opsloop.ops.kafka import free_port_pair
from opsloop.ops.registry import LocalRegistry
from opsloop.schemas import confluent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from opsloop.config.settings import Settings

    local = LocalRegistry(Settings.from_env().cache_dir, tmp_path_factory.mktemp("registry"), port=free_port_pair())
    proc = local.start()
    try:
        yield local.url
    finally:
        LocalRegistry.stop(proc)


def test_confluent_encoding_read_by_confluents_deserializer(kafka_settings, registry):
    settings = kafka_settings.replace(encoding="confluent", schema_registry_url=registry)
    points = [telemetry_point(1_700_000_000_000 + i * 1000, "demo", "pdu-a1", "pdu", "it_kw", 40.0 + i, "kW", "test")
              for i in range(5)]
    prod = producer(settings)
    for point in points:
        send_record(prod, settings, "telemetry.raw", point)
    assert prod.flush(30) == 0

    topic = settings.topic("telemetry.raw")
    messages = read_to_end(settings, topic, 30)
    client = SchemaRegistryClient({"url": registry})
    registered = client.get_latest_version(confluent.value_subject(topic))
    assert {confluent.schema_id(m.value()) for m in messages} == {registered.schema_id}
    assert all(m.value()[0] == 0 for m in messages)

    deserialize = AvroDeserializer(client)
    context = SerializationContext(topic, MessageField.VALUE)
    read = sorted((deserialize(m.value(), context) for m in messages), key=lambda p: p["ts_ms"])
    assert read == points

    # The registry enforces BACKWARD on the subject: a new required field without a default is refused.
    subject = confluent.value_subject(topic)
    assert client.get_compatibility(subject) == "BACKWARD"
    broken = json.loads(registered.schema.schema_str)
    broken["fields"].append({"name": "rack", "type": "string"})
    response = httpx.post(f"{registry}/subjects/{subject}/versions", json={"schema": json.dumps(broken)},
                          headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
    assert response.status_code == 409, response.text


def test_our_own_check_refuses_a_subject_our_schema_cannot_read(registry):
    """A subject left at NONE holds a version without ``unit``; the registry would take ours, our check does not."""
    subject = confluent.value_subject("no-rules.telemetry")
    headers = {"Content-Type": "application/vnd.schemaregistry.v1+json"}
    encoder = ConfluentEncoder(registry, compatibility="NONE")
    try:
        current = encoder.codec.schema("TelemetryPoint").parsed
        older = {"type": "record", "name": current["name"], "fields": [{"name": "ts_ms", "type": "long"}]}
        assert httpx.post(f"{registry}/subjects/{subject}/versions", json={"schema": json.dumps(older)},
                          headers=headers).is_success
        assert httpx.put(f"{registry}/config/{subject}", json={"compatibility": "NONE"}, headers=headers).is_success
        with pytest.raises(SchemaRegistryError, match="cannot read"):
            encoder.register("no-rules.telemetry", "TelemetryPoint")
    finally:
        encoder.close()
