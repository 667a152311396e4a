"""An idle-ending agent on the real broker, behind a killed writer's open transaction: it waits for the broker to
abort it and reads what was committed after it, instead of taking the last stable offset for the end."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
from opsloop.connectors.kafka import producer
from opsloop.streams.processor import BatchProcessor

pytestmark = pytest.mark.integration

TIMEOUT_MS = 2_000  # the killed writer's transaction timeout (the broker aborts it up to 10 s later: its sweep)


class Counting(BatchProcessor):
    name = "counting"
    source = "incidents"

    def __init__(self, settings):
        super().__init__(settings)
        self.stats = {"commits": 0, "dead_letters": 0}
        self.seen: list[bytes] = []

    def handle(self, msg):
        self.seen.append(msg.value())


def test_an_idle_ending_agent_waits_for_an_open_transaction_and_reads_past_it(kafka_settings):
    topic = kafka_settings.topic("incidents")
    plain = producer(kafka_settings)
    plain.produce(topic, b"before", partition=0)
    plain.flush(30)
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from confluent_kafka import Producer
        p = Producer({{"bootstrap.servers": {kafka_settings.broker!r}, "transactional.id": "killed-{topic}",
                      "transaction.timeout.ms": {TIMEOUT_MS}}})
        p.init_transactions(30)
        p.begin_transaction()
        p.produce({topic!r}, b"never committed", partition=0)
        p.flush(30)
        print("open", flush=True)
        input()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
    finally:
        writer.kill()  # as a SIGKILLed worker: its transaction stays open until the broker aborts it
        writer.wait(10)
    for value in (b"after-1", b"after-2"):
        plain.produce(topic, value, partition=0)
    plain.flush(30)

    agent = Counting(kafka_settings.replace(idle_close_s=0.5))
    began = time.monotonic()
    agent.run(threading.Event(), exit_when_idle=True)
    waited = time.monotonic() - began
    assert agent.seen == [b"before", b"after-1", b"after-2"], agent.seen  # the aborted record is never read
    assert waited >= TIMEOUT_MS / 1000  # it waited for the abort (the broker aborts after the timeout)
