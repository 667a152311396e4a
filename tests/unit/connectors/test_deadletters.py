"""Bounded dead letters and refused outputs (connectors/kafka.py), with a producer that refuses large records
the way the client (at produce) or the broker (at delivery) does."""

from __future__ import annotations

import hashlib

import pytest
from confluent_kafka import KafkaError, KafkaException

from opsloop.config.settings import Settings
from opsloop.connectors.kafka import DeadLetters, DeliveryErrors, send
from opsloop.schemas.codec import Codec

from consumed import Msg  # the unit tier's consumed message

pytestmark = pytest.mark.unit
TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)


class SmallProducer:
    """Takes records up to ``limit`` bytes; larger ones raise at produce (``at="produce"``) or fail delivery."""

    def __init__(self, limit: int, at: str = "produce"):
        self.limit, self.at, self.queued, self.sent = limit, at, [], []

    def produce(self, topic, key=None, value=None, on_delivery=None, **where):
        size = len(key or b"") + len(value or b"")
        if size > self.limit and self.at == "produce":
            raise KafkaException(TOO_LARGE)
        self.queued.append((topic, key, value, on_delivery, size > self.limit))

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        while self.queued:  # callbacks may produce again
            topic, key, value, on_delivery, refused = self.queued.pop(0)
            if not refused:
                self.sent.append((topic, key, value))
            if on_delivery is not None:
                on_delivery(TOO_LARGE if refused else None, Msg(topic, 0, len(self.sent), value, key))  # as delivered
        return 0


def decoded(prod) -> list[dict]:
    return [Codec.default().decode_as("DeadLetter", value) for _, _, value in prod.sent]


@pytest.mark.parametrize("at", ["produce", "delivery"])
def test_a_dead_letter_too_large_for_the_producer_or_the_topic_is_shrunk_not_raised(at):
    prod = SmallProducer(limit=20_000, at=at)
    dead = DeadLetters(Settings(deadletter_max_bytes=100_000), prod, "rollup")
    errors = DeliveryErrors()
    garbage = bytes(range(256)) * 4000  # ~1 MB
    dead.send(Msg("telemetry.raw", 2, 41, garbage, b"gm", ts=1_000), "decode", "not avro", errors)
    prod.flush()
    errors.raise_if_any()
    (letter,) = decoded(prod)
    assert dead.count == 1 and dead.shrunk >= 1
    assert letter["truncated"] and 0 < len(letter["value"]) <= 20_000 and letter["value"] == garbage[:len(letter["value"])]
    assert (letter["value_size"], letter["value_sha256"]) == (len(garbage), hashlib.sha256(garbage).hexdigest())
    assert (letter["topic"], letter["partition"], letter["offset"], letter["key"]) == ("telemetry.raw", 2, 41, b"gm")


@pytest.mark.parametrize("at", ["produce", "delivery"])
def test_a_refused_output_becomes_an_undeliverable_dead_letter(at):
    prod = SmallProducer(limit=5_000, at=at)
    dead = DeadLetters(Settings(), prod, "rollup")
    errors = DeliveryErrors(on_rejected=lambda topic, key, value, err: dead.undeliverable(topic, key, value, err, errors))
    send(prod, "telemetry.site", b"demo", b"s" * 10, errors, on_rejected=errors.on_rejected)  # fits
    send(prod, "telemetry.site", b"demo", b"S" * 9_000, errors, on_rejected=errors.on_rejected)
    prod.flush()
    errors.raise_if_any()  # nothing left to fail the batch
    assert [t for t, _, _ in prod.sent] == ["telemetry.site", "deadletter"]
    letter = Codec.default().decode_as("DeadLetter", prod.sent[1][2])
    assert (letter["error_kind"], letter["topic"], letter["partition"], letter["offset"]) == (
        "undeliverable", "telemetry.site", -1, -1)
    assert "9000 bytes" in letter["error"] and letter["value_size"] == 9_000 and letter["truncated"]


def test_without_a_handler_a_refused_record_still_raises_and_other_delivery_errors_fail_the_batch():
    with pytest.raises(KafkaException):
        send(SmallProducer(limit=1), "telemetry.site", None, b"xx")
    errors = DeliveryErrors(on_rejected=lambda *a: None)
    errors(KafkaError(KafkaError._MSG_TIMED_OUT), Msg("telemetry.site", 0, 0))
    with pytest.raises(KafkaException, match="telemetry.site"):
        errors.raise_if_any()
