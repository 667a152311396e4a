"""`opsloop eval peaks` on any timestamp,value CSV: a small real slice always, the full Taylor file when present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opsloop.ops.cli import main

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]
TAYLOR = ROOT.parent / "shared" / "data" / "taylor" / "demand_mw.csv"


def test_eval_on_a_plain_timestamp_value_csv_prints_json(tmp_path, capsys):
    rows = (ROOT / "ops" / "data" / "taylor_demand_mw.csv").read_text().splitlines()[1:48 * 10 + 1]
    data = tmp_path / "load.csv"
    data.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    assert main(["eval", "peaks", "--data", str(data), "--warmup-days", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input"]["column"] == "value" and report["input"]["step_s"] == 1800
    [month] = report["periods"]
    assert report["billing_period"] == "month" and month["period"] == "2000-06"
    s = month["strategies"]
    assert s["oracle"]["billed_peak_kw"] <= min(s["planner"]["billed_peak_kw"], s["reactive"]["billed_peak_kw"])
    assert all(v["violations"] == 0 for v in s.values())
    assert report["forecast"]["mape_1h_pct"] < report["forecast"]["mape_4h_pct"] < 10


def test_weekly_and_daily_billing_score_each_period(tmp_path, capsys):
    rows = (ROOT / "ops" / "data" / "taylor_demand_mw.csv").read_text().splitlines()[1:48 * 12 + 1]
    data = tmp_path / "load.csv"
    data.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    for billing, first, count in (("week", "2000-W23", 2), ("day", "2000-06-08", 9)):
        assert main(["eval", "peaks", "--data", str(data), "--warmup-days", "3", "--billing", billing, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["billing_period"] == billing
        assert [p["period"] for p in report["periods"]][:1] == [first] and len(report["periods"]) == count
        for period in report["periods"]:  # each period is scored against its own oracle
            s = period["strategies"]
            assert s["oracle"]["billed_peak_kw"] <= s["planner"]["billed_peak_kw"] + 1e-6
            assert s["planner"]["violations"] == 0
        assert report["targets"]["planner_periods_below_90pct"] <= count


def test_eval_rejects_a_file_without_numbers(tmp_path, capsys):
    data = tmp_path / "bad.csv"
    data.write_text("timestamp,value\n2020-01-01T00:00:00,n/a\n")
    assert main(["eval", "peaks", "--data", str(data)]) == 1
    assert "no numeric column" in capsys.readouterr().err


@pytest.mark.skipif(not TAYLOR.exists(), reason="../shared/data/taylor/demand_mw.csv is not here")
def test_taylor_planner_has_no_violations_and_beats_reactive(capsys):
    assert main(["eval", "peaks", "--data", str(TAYLOR), "--scale", "1", "--json"]) == 0
    targets = json.loads(capsys.readouterr().out)["targets"]
    assert targets["planner_violations"] == 0 and targets["planner_beats_reactive_every_period"]


def test_eval_help_prints(capsys):
    with pytest.raises(SystemExit) as done:
        main(["eval", "peaks", "--help"])
    assert done.value.code == 0 and "--battery-kwh" in capsys.readouterr().out


def test_the_reactive_floor_keeps_the_plan_from_losing_a_week_to_the_reactive_rule():
    """A one-hour 3 MW spike in the warm-up bounds the plan's target at 2 MW all the next week (its recent peak
    less the PCS's power), so the plan alone idles while the daily 1.6 MW peaks pass the reactive threshold and
    loses the week; with the floor it shaves as the rule does, and the report counts the steps the floor set."""
    from opsloop.models.battery import Battery
    from opsloop.models.peak_loop import LoopConfig
    from opsloop.ops.evals.peaks import evaluate

    hour = 3_600_000
    battery = Battery(capacity_kwh=2000, pcs_charge_kw=1000, pcs_discharge_kw=1000, round_trip_efficiency=0.81,
                      reserve_soc_pct=10)

    def load(h: int) -> float:
        if h == 2 * 24 + 12:
            return 3000.0
        return 1000.0 + (500.0 if 17 <= h % 24 < 20 else 0.0) + 37.0 * ((h * 7) % 5) + 150.0 * (h == 8 * 24 + 18)

    times = [h * hour for h in range(24 * 18)]  # day 4 is Monday 5 January 1970: two billing weeks after the warm-up
    loads = [load(h) for h in range(len(times))]
    weeks = {}
    for floor, skill_days in ((False, 0), (True, 0), (True, 7)):  # off; on; on until the plan alone measured more
        # the recent-peak bound uncapped, as it was: the case the floor is tested on
        config = LoopConfig(site="s", ess_id="e", battery=battery, step_s=3600, billing_period="week",
                            reactive_floor=floor, floor_skill_days=skill_days, bound_under_threshold=False)
        weeks[floor, skill_days] = evaluate(times, loads, 3600, config, 80.0, warmup_days=4)["periods"]
    # the bound held under the rule's threshold (the default) takes the spike's grip off the plan: the floor, standing,
    # never has to set the target
    capped = evaluate(times, loads, 3600, LoopConfig(site="s", ess_id="e", battery=battery, step_s=3600,
                                                     billing_period="week", floor_skill_days=0),
                      80.0, warmup_days=4)["periods"]
    assert all(w["strategies"]["planner"]["billed_peak_kw"] <= w["strategies"]["reactive"]["billed_peak_kw"] + 0.5
               for w in capped)
    assert capped[0]["strategies"]["planner"]["floor_steps"] == 0
    lost = [w["strategies"]["planner"]["billed_peak_kw"] > w["strategies"]["reactive"]["billed_peak_kw"] + 0.5
            for w in weeks[False, 0]]
    assert lost[0], "the plan alone should lose the first week (else the case tests nothing)"
    for judged in ((True, 0), (True, 7)):  # a floor judged by skill stands here: the plan alone never measured more
        for week in weeks[judged]:
            s = week["strategies"]
            assert s["planner"]["billed_peak_kw"] <= s["reactive"]["billed_peak_kw"] + 0.5
            assert s["planner"]["violations"] == 0
        assert weeks[judged][0]["strategies"]["planner"]["floor_steps"] > 0
