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
