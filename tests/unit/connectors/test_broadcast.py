"""The broadcast hint reader without a broker: where each partition starts, reading to the ends, never waiting after."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, KafkaException, TopicPartition

from opsloop.config.access import plan
from opsloop.config.settings import Settings
from opsloop.connectors import broadcast

from consumed import Msg  # the unit tier's consumed message

pytestmark = pytest.mark.unit
TOPIC = "t.actions.approved"


class FakeConsumer:
    """A topic's partitions with their records (offsets), found-by-time offsets and ends; hands out what is queued."""

    def __init__(self, partitions, found, ends):
        self.partitions, self.found, self.ends = partitions, found, ends
        self.queued, self.assigned, self.timeouts, self.closed = [], {}, [], False

    def list_topics(self, topic, timeout=None):
        meta = SimpleNamespace(error=None, partitions={p: None for p in self.partitions})
        return SimpleNamespace(topics={topic: meta})

    def offsets_for_times(self, tps, timeout=None):
        return [TopicPartition(tp.topic, tp.partition, self.found.get(tp.partition, -1)) for tp in tps]

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return 0, self.ends[tp.partition]

    def assign(self, tps):
        self.assigned = {tp.partition: tp.offset for tp in tps}

    def incremental_assign(self, tps):
        self.assigned.update({tp.partition: tp.offset for tp in tps})

    def consume(self, n, timeout=None):
        self.timeouts.append(timeout)
        out, self.queued = self.queued[:n], self.queued[n:]
        return out

    def position(self, tps):
        return [TopicPartition(tp.topic, tp.partition, -1001) for tp in tps]

    def close(self):
        self.closed = True


def reader(monkeypatch, cons, clock=lambda: 0.0):
    monkeypatch.setattr(broadcast, "consumer", lambda settings, group, **kw: cons)
    return broadcast.Broadcast(Settings(topic_prefix="t."), [TOPIC], "g", since_ms=1_000, clock=clock)


def test_every_partition_starts_at_its_first_record_that_recent_else_at_its_end(monkeypatch):
    cons = FakeConsumer([0, 1, 2, 3], found={0: 5, 2: 0}, ends={0: 9, 1: 4, 2: 2, 3: 0})
    hints = reader(monkeypatch, cons)
    assert cons.assigned == {0: 5, 1: OFFSET_END, 2: 0, 3: OFFSET_END}  # all four, whoever owns them in the group
    assert sorted(hints.pending.ends) == [(TOPIC, 0), (TOPIC, 2)]  # the ones with records to read first


def test_catch_up_reads_to_the_ends_and_poll_then_hands_over_what_came_without_waiting(monkeypatch):
    cons = FakeConsumer([0, 1], found={0: 5, 1: 0}, ends={0: 7, 1: 1})
    hints = reader(monkeypatch, cons)
    cons.queued = [Msg(TOPIC, 0, 5), Msg(TOPIC, 1, 0), Msg(TOPIC, 0, 6),
                   Msg(TOPIC, 1, 1, error=KafkaError._PARTITION_EOF)]
    seen = []
    assert hints.catch_up(lambda m: seen.append((m.partition(), m.offset())), timeout_s=5)
    assert seen == [(0, 5), (1, 0), (0, 6)] and hints.read == 3
    # a broker fault is the client's to wait out
    cons.queued = [Msg(TOPIC, 1, 1), Msg(TOPIC, 0, 7, error=KafkaError._TRANSPORT)]
    assert hints.poll(lambda m: seen.append((m.partition(), m.offset()))) == 1
    assert seen[-1] == (1, 1) and cons.timeouts[-1] == 0  # never blocks the loop


def test_catch_up_gives_up_after_its_timeout_and_reading_goes_on(monkeypatch):
    now = [0.0]
    cons = FakeConsumer([0], found={0: 0}, ends={0: 3})
    hints = reader(monkeypatch, cons, clock=lambda: now[0])

    def consume(n, timeout=None):
        now[0] += 1.0  # nothing comes (a slow broker)
        return []

    cons.consume = consume
    assert hints.catch_up(lambda m: None, timeout_s=3) is False


def test_a_refused_read_is_raised_never_skipped(monkeypatch):
    cons = FakeConsumer([0], found={}, ends={0: 0})
    hints = reader(monkeypatch, cons)
    cons.queued = [Msg(TOPIC, 0, 0, error=KafkaError.TOPIC_AUTHORIZATION_FAILED)]
    with pytest.raises(KafkaException):
        hints.poll(lambda m: None)


def test_a_partition_added_later_is_read_from_its_beginning(monkeypatch):
    now = [0.0]
    cons = FakeConsumer([0], found={}, ends={0: 0})
    hints = reader(monkeypatch, cons, clock=lambda: now[0])
    cons.partitions = [0, 1]
    hints.poll(lambda m: None)
    assert 1 not in cons.assigned  # looked for at most every refresh_s
    now[0] = 61.0
    hints.poll(lambda m: None)
    assert cons.assigned == {0: OFFSET_END, 1: OFFSET_BEGINNING}


@pytest.mark.parametrize("agent, hint_topic", [("anomaly", "actions.approved"), ("rul", "slurm.queue"),
                                              ("peaks", "slurm.queue")])
def test_the_agents_grants_cover_their_broadcast_reader(agent, hint_topic):
    """Secure mode: the reader needs READ on the hint topic and a group id the principal may use (the client asks
    for the group's coordinator though it never joins): both come from the agent's own grants, nothing more."""
    settings = Settings(app_id="site-a", topic_prefix="t1.")
    grants = plan(settings, [agent])
    group = broadcast.broadcast_group(settings, agent)
    assert any(g.resource == "topic" and g.name == settings.topic(hint_topic) and g.operation == "READ"
               for g in grants)
    assert any(g.resource == "group" and g.operation == "READ" and g.pattern == "prefixed" and group.startswith(g.name)
               for g in grants)
    assert group != settings.group(agent)  # never the group that shares out the telemetry partitions
