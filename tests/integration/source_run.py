"""Shared by the live-source tests: end a source's run and read back what it published."""

from __future__ import annotations

import threading

from opsloop.schemas.codec import Codec

TOPICS = {"TelemetryPoint": "telemetry.raw", "Alarm": "alarms.raw", "SourceHealth": "sources.health",
          "DeadLetter": "deadletter"}


def finish_and_read(source, settings, read_topic) -> dict[str, list[dict]]:
    """Stop ``source`` (a SourceRun: it reports and flushes) and return its records by record name."""
    stopped = threading.Event()
    stopped.set()
    source.run(stopped)
    codec = Codec.default()
    return {record: [codec.decode_as(record, m.value()) for m in read_topic(settings, topic)]
            for record, topic in TOPICS.items()}
