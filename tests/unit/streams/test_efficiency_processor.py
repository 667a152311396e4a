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


def test_with_the_cooling_loop_on_it_proposes_a_raise_carrying_its_readings_once_per_revert_timeout():
    site = load_site(DEMO_SITE)
    processor = EfficiencyProcessor(Settings(topology=DEMO_SITE, cooling_loop=True), site,
                                    load_policy(POLICY_FILE).cooling)
    curve = read_curve(DEFAULT_DATA)
    twin, actions = SiteTwin(site, curve), []
    for step in range(8):  # 35 minutes of samples: the revert timeout (30 min) allows a second proposal
        ts = curve[0][0] + step * 300_000
        actions += [r for r in (r for p in twin.points(twin.measure(ts)) for r in processor.on_point(p))
                    if "action_id" in r]
    assert [(a["kind"], a["params"]["from_c"], a["params"]["setpoint_c"]) for a in actions] == [
        ("cooling_setpoint", "18.0", "19.0"), ("cooling_setpoint", "18.0", "19.0")]
    assert float(actions[0]["params"]["hottest_c"]) < 25.5 and actions[0]["proposer"] == "efficiency"
    codec = Codec()
    assert codec.decode_as("Action", codec.encode("Action", actions[0])) == actions[0]
