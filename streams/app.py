"""Faust app factory: the stateful, lower-volume agents run on the app built here.

There is no module-level app: ``create_app(settings)`` builds one from the
frozen settings, so tests and workers choose the broker. Catalog topics carry
our single-object Avro bytes, so Faust moves raw bytes and agents decode with
``opsloop.schemas.codec`` through ``decode_or_dead_letter`` (bad input goes to
``deadletter`` and the agent goes on).
"""

from __future__ import annotations

import logging

import faust

from opsloop.config.access import faust_id
from opsloop.config.catalog import cached_catalog, load_catalog
from opsloop.config.settings import Settings
from opsloop.models.records import dead_letter
from opsloop.schemas.codec import Codec, DecodeError

log = logging.getLogger("opsloop.app")


def create_app(settings: Settings) -> faust.App:
    from aiokafka.codec import has_lz4

    if not has_lz4():  # our confluent-kafka producers write lz4 batches; without it every fetch crashes
        raise RuntimeError("aiokafka cannot read lz4-compressed messages: install aiokafka[lz4] (cramjam)")
    app = faust.App(
        faust_id(settings),
        broker=[f"kafka://{host}" for host in settings.broker.split(",")],
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",  # tables are rebuilt from their changelog topics on start
        topic_allow_declare=True,
        topic_disable_leader=True,
        web_enabled=False,
        producer_linger=0.005,  # seconds; measured faster than per-message sends
        producer_max_batch_size=262_144,
        broker_commit_every=1000,
        stream_wait_empty=False,
        datadir=str(settings.data_dir / "faust"),
        **broker_security(settings),
    )
    app.conf.opsloop = settings
    for name in load_catalog(settings.topics_file):
        catalog_topic(app, settings, name)
    return app


def broker_security(settings: Settings) -> dict:
    """Faust's (aiokafka's) broker credentials for ``settings``: TLS with the CA file, SASL/SCRAM."""
    protocol = settings.kafka_security_protocol.upper()
    if protocol == "PLAINTEXT":
        return {}
    import ssl

    from faust.auth import SASLCredentials, SSLCredentials

    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=str(settings.kafka_ca_file) if settings.kafka_ca_file else None)
    if protocol.startswith("SASL"):
        credentials = SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_password(),
                                      ssl_context=context, mechanism=settings.kafka_sasl_mechanism)
    else:
        credentials = SSLCredentials(context)
    return {"broker_credentials": credentials}


def catalog_topic(app: faust.App, settings: Settings, name: str) -> faust.TopicT:
    """The Faust topic of a catalog topic (created by `opsloop topics create`, never by Faust)."""
    return app.topic(settings.topic(name), key_type=bytes, value_type=bytes, internal=False)


async def send_record(app: faust.App, topic: str, record: dict, codec: Codec | None = None) -> None:
    """Send a record to catalog topic ``topic``, encoded and keyed as the catalog declares, and wait for the broker."""
    settings: Settings = app.conf.opsloop
    spec = cached_catalog(settings.topics_file)[topic]
    await app.producer.send_and_wait(settings.topic(topic), spec.key_of(record),
                                     (codec or Codec.default()).encode(spec.record, record),
                                     partition=None, timestamp=None, headers=None)


async def decode_or_dead_letter(app: faust.App, event, record: str, agent: str, codec: Codec | None = None) -> dict | None:
    """Decode an event's value as ``record``; on failure publish a DeadLetter and return None."""
    codec = codec or Codec.default()
    try:
        return codec.decode_as(record, event.value)
    except DecodeError as exc:
        msg = event.message
        dead = dead_letter(msg.topic, msg.partition, msg.offset, msg.key, msg.value, "decode", exc.reason, agent,
                           int(msg.timestamp * 1000) if msg.timestamp else None,
                           app.conf.opsloop.deadletter_max_bytes)
        await send_record(app, "deadletter", dead, codec)
        log.warning("%s: dead-lettered %s[%s]@%s: %s", agent, msg.topic, msg.partition, msg.offset, exc.reason)
        return None
