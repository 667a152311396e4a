"""The efficiency agent's logic without a broker: twin points in, EfficiencyAdvice records out."""

import pytest

from opsloop.config.assets import DEMO_SITE, POLICY_FILE
from opsloop.config.policy import load_policy
from opsloop.config.settings import Settings
from opsloop.config.site import load_site
from opsloop.models.twin import SiteTwin
from opsloop.ops.twin import DEFAULT_DATA, read_curve
from opsloop.schemas.codec import Codec
from opsloop.streams.efficiency import EfficiencyProcessor

pytestmark = pytest.mark.unit


def test_twin_points_become_samples_and_a_low_setpoint_becomes_advice_records_that_encode():
    site = load_site(DEMO_SITE)
    processor = EfficiencyProcessor(Settings(topology=DEMO_SITE), site, load_policy(POLICY_FILE).cooling)
    curve = read_curve(DEFAULT_DATA)
    twin, records = SiteTwin(site, curve), []
    for step in range(4):
        ts = curve[0][0] + step * 300_000
        for point in twin.points(twin.measure(ts)):
            records += processor.on_point(point)
    assert processor.stats["samples"] == 3  # the fourth time is still open
    assert [r["reason_code"] for r in records] == ["setpoint_low"]  # once: repeated only after repeat_s
    record = records[0]
    assert record["setpoint_c"] == 18.0 and record["optimal_setpoint_c"] > 20
    assert record["kw_at_stake"] > 0 and record["cost_per_day"] == pytest.approx(record["kw_at_stake"] * 24 * 0.15)
    assert "raise it in steps of 1 degC" in record["text"]
    codec = Codec()
    assert codec.decode_as("EfficiencyAdvice", codec.encode("EfficiencyAdvice", record)) == record
