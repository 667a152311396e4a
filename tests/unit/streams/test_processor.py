"""The processors' loop without a broker: hook order, several sources, housekeeping, own offsets, dead letters."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from opsloop.config.settings import Settings
from opsloop.schemas.codec import Codec
from opsloop.streams import processor as loop

from consumed import Msg  # the unit tier's consumed message

pytestmark = pytest.mark.unit
PREFIX = "t."
EOF = KafkaError._PARTITION_EOF  # a partition's end, as the consumer reports it


class FakeProducer:
    def __init__(self, log):
        self.log, self.queued, self.sent = log, [], []

    def produce(self, topic, key=None, value=None, on_delivery=None, **where):
        self.queued.append((topic, key, value, on_delivery))

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        for topic, key, value, on_delivery in self.queued:
            self.sent.append((topic, key, value))
            self.log.append(f"delivered {topic}")
            if on_delivery is not None:
                on_delivery(None, None)
        self.queued = []
        return 0


class FakeConsumer:
    """Assigns partition 0 of every subscribed topic, then hands out ``batches`` one by one, then nothing."""

    def __init__(self, log, batches):
        self.log, self.batches, self.commits, self.assigned_offsets = log, list(batches), [], None
        self.refuse: list[int] = []  # error codes the next commits raise, one each
        self.positions: dict = {}  # (topic, partition) → position (none: not known yet)
        self.watermarks: dict = {}  # (topic, partition) → (low, high) as the last fetch response gave them

    def subscribe(self, topics, on_assign=None, on_revoke=None, on_lost=None):
        self.topics, self.on_assign, self.on_lost = topics, on_assign, on_lost

    def assign(self, partitions):
        self.assigned_offsets = {(tp.topic, tp.partition): tp.offset for tp in partitions}

    def consume(self, n, timeout=None):
        if self.on_assign is not None:
            on_assign, self.on_assign = self.on_assign, None
            on_assign(self, [TopicPartition(t, 0) for t in self.topics])
        return self.batches.pop(0) if self.batches else []

    def poll(self, timeout=None):
        batch = self.consume(1)
        return batch[0] if batch else None

    def commit(self, offsets=None, asynchronous=True):
        if self.refuse:
            self.log.append("commit refused")
            raise KafkaException(KafkaError(self.refuse.pop(0)))
        self.commits.append(({(tp.topic, tp.partition): tp.offset for tp in offsets}, asynchronous))
        self.log.append("commit")

    def position(self, partitions):
        return [TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), -1001))
                for tp in partitions]

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return self.watermarks.get((tp.topic, tp.partition), (-1001, -1001))

    def close(self):
        self.log.append("closed")


@pytest.fixture
def clients(monkeypatch):
    """Patch the loop's client factories; returns (event log, the producer, a setter for the batches)."""
    log, made = [], {}

    def with_batches(*batches):
        monkeypatch.setattr(loop, "consumer", lambda settings, group, **kw: made.setdefault(
            "cons", FakeConsumer(log, batches)))
        return made

    monkeypatch.setattr(loop, "producer", lambda settings, **kw: made.setdefault("prod", FakeProducer(log)))
    return log, with_batches


def settings(tmp_path) -> Settings:
    return Settings(topic_prefix=PREFIX, data_dir=tmp_path, idle_close_s=0.0)


class TwoSources(loop.BatchProcessor):
    """Reads two topics, sends an alarm from housekeeping once, settles after three housekeepings."""

    name = "test"
    sources = ("telemetry.site", "operator.feedback")
    commit_stat = "commits"

    def __init__(self, settings):
        super().__init__(settings)
        self.stats = {"commits": 0, "dead_letters": 0}
        self.seen, self.rounds, self.closed = [], 0, False

    def handle(self, msg):
        if msg.value() == b"junk":
            self.dead_letter(msg, "decode", "not avro")
        else:
            self.seen.append((self.catalog_name(msg.topic()), msg.offset()))

    def housekeeping(self):
        self.rounds += 1
        if self.rounds == 2:
            self.emit("alarms.raw", {"ts_ms": 1, "site": "demo", "device": "ups-1", "device_type": "ups",
                                     "source": "test", "code": "C", "severity": "info", "state": "raise",
                                     "text": "", "attributes": {}})
            return True
        return False

    def settled(self):
        return self.rounds >= 3

    def close(self):
        self.closed = True


def test_several_sources_housekeeping_and_dead_letters_are_delivered_before_commits(tmp_path, clients):
    log, with_batches = clients
    site, feedback = PREFIX + "telemetry.site", PREFIX + "operator.feedback"
    made = with_batches([Msg(site, 0, 7), Msg(feedback, 0, 3, b"junk"), Msg(feedback, 0, 4)],
                        [Msg(site, 0, 8, error=EOF), Msg(feedback, 0, 5, error=EOF)])
    proc = TwoSources(settings(tmp_path))
    stats = proc.run(threading.Event(), exit_when_idle=True)
    cons, prod = made["cons"], made["prod"]
    assert cons.topics == [site, feedback]
    assert proc.seen == [("telemetry.site", 7), ("operator.feedback", 4)]
    assert stats["dead_letters"] == 1 and proc.rounds >= 3 and proc.closed
    keys = {topic: key for topic, key, _ in prod.sent}
    assert keys == {PREFIX + "deadletter": feedback.encode(), PREFIX + "alarms.raw": b"ups-1"}  # catalog keys
    assert cons.commits[-1] == ({(site, 0): 8, (feedback, 0): 5}, False)
    assert log.index(f"delivered {PREFIX}deadletter") < log.index("commit")
    alarm_at = log.index(f"delivered {PREFIX}alarms.raw")
    assert "commit" in log[alarm_at:]  # housekeeping's output asked for a commit, which delivered it first
    assert log[-1] == "closed"


class OwnOffsets(loop.BatchProcessor):
    """Keeps its offsets itself, as the views agent does in DuckDB."""

    name = "own"
    source = "incidents"
    commit_stat = None

    def __init__(self, settings, stored):
        super().__init__(settings)
        self.stats = {"dead_letters": 0}
        self.stored = stored

    def handle(self, msg):
        self.stored[(msg.topic(), msg.partition())] = msg.offset() + 1

    def stored_offsets(self):
        return self.stored


def test_a_processor_that_stores_its_offsets_resumes_from_them_and_copies_them_to_kafka(tmp_path, clients):
    _, with_batches = clients
    topic = PREFIX + "incidents"
    made = with_batches([Msg(topic, 0, 5)], [Msg(topic, 0, 6, error=EOF)])
    proc = OwnOffsets(settings(tmp_path), {(topic, 0): 5})
    proc.run(threading.Event(), exit_when_idle=True)
    cons = made["cons"]
    assert cons.assigned_offsets == {(topic, 0): 5}  # resumed from the store, not from the group's commit
    assert cons.commits == [({(topic, 0): 6}, True)]  # a copy for lag dashboards: asynchronous


def test_emit_keys_by_the_catalog_and_encodes_the_catalog_record(tmp_path, clients):
    _, with_batches = clients
    made = with_batches()
    proc = OwnOffsets(settings(tmp_path), {})
    proc.prod = made.setdefault("prod", FakeProducer([]))
    clean = {"alarm": {"ts_ms": 1, "site": "demo", "device": "ups-1", "device_type": "ups", "source": "s",
                       "code": "C", "severity": "info", "state": "raise", "text": "", "attributes": {}},
             "fingerprint": "f", "duplicate_count": 0, "first_seen_ms": 1, "last_seen_ms": 1, "flapping": False,
             "noise_score": 0.0, "noise": False, "decision_reason": "new"}
    proc.emit("alarms.clean", clean)
    (topic, key, value, _), = proc.prod.queued
    assert (topic, key) == (PREFIX + "alarms.clean", b"demo")
    assert Codec.default().decode(value)[0] == "CleanAlarm"


class Counting(loop.BatchProcessor):
    """Counts what it handles; its assignment resets what it holds, as the keyed processors' does."""

    name = "counting"
    source = "incidents"

    def __init__(self, settings):
        super().__init__(settings)
        self.stats = {"commits": 0, "dead_letters": 0}
        self.seen, self.revoked = [], []

    def handle(self, msg):
        self.seen.append(msg.offset())

    def on_revoke(self, cons, partitions):
        self.revoked.append(self.commit(cons, {(tp.topic, tp.partition) for tp in partitions}))


def test_an_end_at_an_open_transaction_is_not_idle_until_it_is_aborted(tmp_path, clients, caplog):
    """Reading committed, the end event comes at the last stable offset (3) while the high watermark is past it (an
    open transaction, 3 and 4): an idle-ending processor waits, and ends once the abort moves its end to 6."""
    _, with_batches = clients
    topic = PREFIX + "incidents"
    made = with_batches([Msg(topic, 0, 2)], [Msg(topic, 0, 3, error=EOF)], *[[]] * 30, [Msg(topic, 0, 6, error=EOF)])
    proc = Counting(settings(tmp_path))
    now = [0.0]
    proc.clock = lambda: now[0]
    real_consume = loop.BatchProcessor._consume

    def consume(self, c):
        now[0] += 0.5
        batch = real_consume(self, c)
        c.watermarks[(topic, 0)] = (0, 6 if any(m.offset() == 6 for m in batch) or not c.batches else 5)
        c.positions[(topic, 0)] = 3 if c.positions or batch else -1001
        return batch

    proc._consume = consume.__get__(proc)
    with caplog.at_level("INFO"):
        proc.run(threading.Event(), exit_when_idle=True)
    cons = made["cons"]
    assert not cons.batches  # it waited for the abort's end event, 15 s later
    assert sum("open transaction" in r.getMessage() for r in caplog.records) == 1


def test_a_broker_outage_is_waited_out_and_a_lost_assignment_is_neither_written_nor_committed(tmp_path, clients,
                                                                                           caplog):
    """A consumer transport error and commits refused because the group moved on (the broker was away longer
    than the session) do not end the loop: the commit is retried after a backoff; partitions the group took
    away are dropped unwritten; once reassigned the loop resumes and commits."""
    log, with_batches = clients
    topic = PREFIX + "incidents"
    made = with_batches([Msg(topic, 0, 0), Msg(topic, 0, -1, error=KafkaError._ALL_BROKERS_DOWN)], [Msg(topic, 0, 1)],
                        [Msg(topic, 0, 0), Msg(topic, 0, 1)], [Msg(topic, 0, 2, error=EOF)])
    proc = Counting(settings(tmp_path))
    proc.commit_every_s = 0.0
    proc.broker.first_s = 0.0  # no backoff in a unit test
    proc.settle_s = 0.0
    real_consume = loop.BatchProcessor._consume
    rounds = {"n": 0}

    def consume(self, c):
        rounds["n"] += 1
        if rounds["n"] == 1:
            c.refuse = [KafkaError.UNKNOWN_MEMBER_ID, KafkaError._TRANSPORT]
        if rounds["n"] == 3:  # the group dropped this member: librdkafka calls on_lost, then assigns again
            c.on_lost(c, [TopicPartition(topic, 0)])
            c.on_assign = lambda cc, parts: proc._assigned(cc, parts)
        return real_consume(self, c)

    with caplog.at_level("WARNING"):
        proc._consume = consume.__get__(proc)
        stats = proc.run(threading.Event(), exit_when_idle=True)
    cons = made["cons"]
    assert proc.seen == [0, 1, 0, 1]  # nothing was committed: the next owner (this process) repeats both
    assert proc.revoked == [False]  # the lost partition was not committed from the revoke hook
    assert log.count("commit refused") == 2
    assert cons.commits and cons.commits[-1] == ({(topic, 0): 2}, False)
    assert stats["commits"] == len(cons.commits)
    waits = [r for r in caplog.records if "broker unavailable" in r.getMessage()]
    assert len(waits) == 1  # one line for the outage, however many faults
    assert any("broker back after" in r.getMessage() for r in caplog.records)


def test_broker_wait_backs_off_and_logs_once_a_minute(caplog):
    from opsloop.connectors.kafka import BrokerWait, ClientLog

    now = [0.0]
    wait = BrokerWait(loop.logging.getLogger("t"), "agent", clock=lambda: now[0], first_s=0.5, max_s=4.0)
    with caplog.at_level("WARNING"):
        for _ in range(120):  # two minutes of faults, one a second
            wait.fault("Connection refused")
            assert not wait.ready() or wait.retry_at <= now[0]
            now[0] += 1.0
        assert wait._delay == 4.0
        wait.ok()
        assert wait.ready()
        client = ClientLog(every_s=60.0)
        client.throttle.clock = lambda: now[0]
        for _ in range(1000):
            client.log(40, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connection refused")
    lines = [r.getMessage() for r in caplog.records]
    assert sum("broker unavailable" in line for line in lines) == 2
    assert sum("broker back after 120.0 s" in line for line in lines) == 1
    assert sum("Connection refused" in line and "FAIL" in line for line in lines) == 1


def test_handoff_lets_agents_end_only_together_and_a_quiet_time_after_the_last_write_between_them():
    from opsloop.streams.processor import Handoff

    handoff = Handoff({"p.telemetry.site"}, {"rollup", "peaks"})
    handoff.idle("peaks", True)
    assert not handoff.may_end(0.0, 1.5)  # the rollup has not caught up yet (it may not even have joined)
    handoff.idle("rollup", True)
    assert handoff.may_end(0.0, 1.5)
    handoff.wrote("p.forecasts.peak", 10.0)  # no agent of the worker reads it
    assert handoff.may_end(10.0, 1.5)
    handoff.wrote("p.telemetry.site", 10.0)  # the rollup's idle flush, on its way to the peaks agent
    assert not handoff.may_end(11.0, 1.5) and handoff.may_end(11.5, 1.5)
    handoff.idle("peaks", False)  # it got the flush
    assert not handoff.may_end(20.0, 1.5)
