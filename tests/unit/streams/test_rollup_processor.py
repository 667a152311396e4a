"""The rollup agent's commit metadata (streams/rollup.py), without a broker."""

import json

import pytest

from opsloop.config.settings import Settings
from opsloop.streams.rollup import METADATA_BYTES, RollupProcessor

pytestmark = pytest.mark.unit


def test_commit_metadata_carries_every_lane_and_stays_under_the_broker_limit():
    proc = RollupProcessor(Settings())
    proc.processed = {("telemetry.raw", 0): 5}
    proc.rollup.move_watermark(960_163_200_000, ("demo", "replay"))
    proc.rollup.move_watermark(1_780_000_000_000, ("demo", "pcs-sim"))
    [tp] = proc.offsets({("telemetry.raw", 0)})
    mark = json.loads(tp.metadata)
    assert mark["lanes"] == [["demo", "pcs-sim", 1_780_000_000_000], ["demo", "replay", 960_163_200_000]]
    assert (tp.offset, mark["processed_upto"]) == (5, 5)

    for i in range(500):  # far more lanes than fit: those furthest behind are left out
        proc.rollup.move_watermark(1_000_000 + i, (f"site-{i}", "replay"))
    [tp] = proc.offsets({("telemetry.raw", 0)})
    lanes = json.loads(tp.metadata)["lanes"]
    assert len(tp.metadata) <= METADATA_BYTES and lanes[:2] == mark["lanes"] and lanes[-1][2] > 1_000_000


def test_with_input_keyed_by_site_each_partition_carries_only_the_lanes_that_live_on_it():
    proc = RollupProcessor(Settings())
    assert proc.keyed  # the catalog keys telemetry.raw by site
    proc.processed = {("telemetry.raw", 0): 5, ("telemetry.raw", 1): 9}
    for partition, site in ((0, "a"), (1, "b")):
        point = {"site": site, "device": "gm", "metric": "grid_kw", "value": 1.0, "ts_ms": 960_163_200_000,
                 "source": "replay"}
        proc.handle(Point(point, partition, proc.codec))
    proc.end_batch(2, idle=False)
    marks = {tp.partition: json.loads(tp.metadata)["lanes"]
             for tp in proc.offsets({("telemetry.raw", 0), ("telemetry.raw", 1)})}
    assert {p: [lane[0] for lane in lanes] for p, lanes in marks.items()} == {0: ["a"], 1: ["b"]}


class Point:
    """A consumed TelemetryPoint: what ``handle`` reads of a message."""

    def __init__(self, point: dict, partition: int, codec):
        self._value, self._partition = codec.encode("TelemetryPoint", {"device_type": "grid_meter", "unit": "kW",
                                                                        **point}), partition

    def value(self):
        return self._value

    def partition(self):
        return self._partition

    def offset(self):
        return 0


class PositionsOnly:
    """The two local consumer calls ``_behind`` makes: positions and cached high watermarks."""

    def __init__(self, positions: dict[int, int], ends: dict[int, tuple[int, int]]):
        self.positions, self.ends = positions, ends

    def position(self, partitions):
        from confluent_kafka import TopicPartition

        return [TopicPartition(tp.topic, tp.partition, self.positions.get(tp.partition, -1001)) for tp in partitions]

    def get_watermark_offsets(self, tp, cached=False):
        return self.ends.get(tp.partition, (-1001, -1001))


def test_partitions_short_of_the_broker_end_are_behind_even_before_their_first_record():
    proc = RollupProcessor(Settings())
    proc.assigned = {("telemetry.raw", p) for p in range(4)}
    proc.start_offsets = {0: -1, 1: 7, 2: -1, 3: 5}  # 0 and 2 read from their beginning, 1 and 3 from a commit
    # 0: nothing read yet, data at the broker; 1: committed at its end; 2: read to its end; 3: read, more waiting
    proc.cons = PositionsOnly({2: 9, 3: 6}, {0: (0, 40), 1: (0, 7), 2: (0, 9), 3: (0, 8)})
    assert proc._behind() == [0, 3]
    proc.cons = None
    assert proc._behind() == []


def test_only_the_stateful_kafka_only_processors_take_exactly_once():
    from opsloop.streams.anomaly import AnomalyProcessor
    from opsloop.streams.keyed import KeyedProcessor
    from opsloop.streams.views import ViewsSink

    assert RollupProcessor(Settings(delivery="exactly-once")).exactly_once
    assert not RollupProcessor(Settings()).exactly_once
    assert AnomalyProcessor.transactional and KeyedProcessor.transactional
    assert not ViewsSink.transactional  # DuckDB keeps its own offsets: a Kafka transaction cannot cover it
