from pathlib import Path

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.policy import load_policy
from opsloop.config.settings import Settings
from opsloop.config.site import load_site
from opsloop.ops.twin_demo import daily_site_file, demo_policy_file, settings_env

pytestmark = pytest.mark.unit


def test_the_demo_site_bills_daily_and_is_otherwise_the_same(tmp_path):
    site = load_site(daily_site_file(Path(DEMO_SITE), tmp_path / "demo.yaml"))
    original = load_site(DEMO_SITE)
    assert site.demand_billing_period == "day" and original.demand_billing_period == "month"
    assert site.ess == original.ess and site.pdus == original.pdus


def test_a_site_without_monthly_billing_is_refused_not_silently_kept(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(Path(DEMO_SITE).read_text().replace("demand_billing_period: month", "demand_billing_period: week"))
    with pytest.raises(ValueError, match="bill daily"):
        daily_site_file(other, tmp_path / "out.yaml")


def test_the_demo_policy_changes_only_the_ess_state_age(tmp_path):
    original = load_policy(Settings().policy)
    widened = load_policy(demo_policy_file(Path(Settings().policy), tmp_path / "policy.yaml", 1440.0))
    assert widened.max_state_age_s == 1440.0 and original.max_state_age_s == 300.0
    assert widened.pcs == original.pcs and widened.slurm == original.slurm and widened.rules == original.rules


def test_a_child_gets_every_setting_that_differs_from_the_defaults():
    settings = Settings().replace(topic_prefix="x.", clock_speed=1440.0, peaks_control="grid_limit")
    env = settings_env(settings)
    assert env == {"OPSLOOP_TOPIC_PREFIX": "x.", "OPSLOOP_CLOCK_SPEED": "1440.0", "OPSLOOP_PEAKS_CONTROL": "grid_limit"}
    assert Settings.from_env(env) == settings
