"""The twin bench's show path (what the demo runs) without a broker: points are measured, none published."""

from __future__ import annotations

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.settings import Settings
from opsloop.config.site import load_site
from opsloop.ops.bench import twin as bench_twin

pytestmark = pytest.mark.unit


def test_the_show_path_measures_points_and_publishes_none(tmp_path):
    settings = Settings(data_dir=tmp_path, broker="127.0.0.1:9")  # nothing listens: nothing may be sent
    rate, undelivered = bench_twin.twin_rate(settings, load_site(DEMO_SITE), 0.3, 30.0, publish=False)
    assert rate > 1_000 and undelivered == 0
