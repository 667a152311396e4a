"""`opsloop eval forecast-queue` on a short run: where load follows the queue, the queue must pay."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site
from opsloop.ops.evals import forecast_queue

pytestmark = pytest.mark.unit

SITE = load_site(DEMO_SITE)
FLAT = [(0, 30_000.0), (86_400_000, 30_000.0)]  # all that moves the load is the weather and the jobs


def test_a_forecast_that_sees_the_twins_queue_beats_one_that_does_not():
    row = forecast_queue.evaluate_seed(SITE, FLAT, seed=1, days=9, warmup_days=5, jobs_per_day=20)
    assert row["jobs"] > 0 and row["job_kw_max"] > row["job_kw_mean"] > 0
    seeing, blind = row["with_queue"]["forecast"], row["without_queue"]["forecast"]
    for k in ("1h", "4h"):
        assert seeing["mae_kw"][k] < 0.9 * blind["mae_kw"][k], (k, seeing, blind)
        assert seeing["mase"][k] < blind["mase"][k]
    for arm in forecast_queue.ARMS:
        billed = row[arm]["billed"]
        assert billed["week"]["periods"] >= 1 and billed["week"]["violations"] == 0
        assert billed["week"]["planner_billed_kw"] <= billed["week"]["none_billed_kw"]


def test_the_json_report_says_what_it_was_judged_on(tmp_path, capsys):
    curve = tmp_path / "flat.csv"
    curve.write_text("timestamp,demand_mw\n" + "".join(f"2000-06-{d:02d}T00:00:00,30000\n" for d in range(1, 8)))
    args = Namespace(data=curve, site=DEMO_SITE, days=3, warmup_days=1.0, seeds="1,2", jobs_per_day=20.0, json=True)
    assert forecast_queue.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input"]["data"] == str(curve) and report["input"]["days"] == 3
    assert [r["seed"] for r in report["seeds"]] == [1, 2]
    assert set(report["summary"]["mae_kw"]) == {"1h", "4h", "24h"}
    assert set(report["summary"]["billed_kw"]["week"]) == {"without_queue", "with_queue", "queue_better_seeds"}
