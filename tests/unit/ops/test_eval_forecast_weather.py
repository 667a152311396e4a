"""`opsloop eval forecast-weather` on a short run: where the weather moves the load, its forecast must pay."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site
from opsloop.ops.evals import forecast_weather

pytestmark = pytest.mark.unit

SITE = load_site(DEMO_SITE)
FLAT = [(0, 30_000.0), (86_400_000, 30_000.0)]  # all that moves the load is the weather's cooling


def test_a_forecast_that_sees_the_temperature_forecast_beats_one_that_does_not():
    row = forecast_weather.evaluate_seed(SITE, FLAT, seed=1, days=16, warmup_days=6, day_sd_c=4.0,
                                         forecast_sd_c=0.5, forecast_sd_per_day_c=1.5)
    assert row["cooling_kw_mean_change"]["24h"] > 100  # the spells move the cooling from one day to the next
    seeing, blind = row["with_weather"]["forecast"], row["without_weather"]["forecast"]
    for k in ("1h", "4h"):  # the regression learns the cooling's move within the day best
        assert seeing["mae_kw"][k] < 0.9 * blind["mae_kw"][k], (k, seeing, blind)
    assert seeing["mae_kw"]["24h"] < blind["mae_kw"]["24h"]
    for arm in forecast_weather.ARMS:
        billed = row[arm]["billed"]
        assert billed["week"]["periods"] >= 1 and billed["week"]["violations"] == 0
        assert billed["week"]["planner_billed_kw"] <= billed["week"]["none_billed_kw"]


def test_the_json_report_says_what_it_was_judged_on(tmp_path, capsys):
    curve = tmp_path / "flat.csv"
    curve.write_text("timestamp,demand_mw\n" + "".join(f"2000-06-{d:02d}T00:00:00,30000\n" for d in range(1, 8)))
    args = Namespace(data=curve, site=DEMO_SITE, days=3, warmup_days=1.0, seeds="1,2", day_sd=3.0, forecast_sd=0.5,
                     forecast_sd_per_day=1.5, json=True)
    assert forecast_weather.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input"]["data"] == str(curve) and report["input"]["day_sd_c"] == 3.0
    assert [r["seed"] for r in report["seeds"]] == [1, 2]
    assert set(report["summary"]["billed_kw"]["month"]) == {"without_weather", "with_weather", "weather_better_seeds"}
