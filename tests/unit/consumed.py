"""A consumed message without a broker: test data with the confluent_kafka Message interface."""

from __future__ import annotations

from confluent_kafka import KafkaError


class Msg:
    """What the consumer hands over: ``error`` a KafkaError code (``KafkaError._PARTITION_EOF`` for a partition's
    end), ``ts`` the record's create time in ms (None: no timestamp)."""

    def __init__(self, topic: str, partition: int, offset: int, value: bytes = b"", key: bytes | None = None,
                 ts: int | None = None, error: int | None = None):
        self._t, self._p, self._o, self._v, self._k, self._ts, self._e = topic, partition, offset, value, key, ts, error

    def error(self):
        return None if self._e is None else KafkaError(self._e)

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v

    def key(self):
        return self._k

    def timestamp(self):
        return (1, self._ts) if self._ts is not None else (0, -1)

