"""`opsloop eval peaks-suite` and its curves: which series count as loads, BDEW profiles with holidays, MASE."""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import json
import math

import pytest

from opsloop.models.peak_forecast import PeakForecaster
from opsloop.models.peak_planner import Policy
from opsloop.ops.cli import main
from opsloop.ops.evals import peak_curves, peaks_suite

pytestmark = pytest.mark.unit
DAY_MS = 86_400_000


def test_a_daily_shape_is_told_from_noise_and_from_negative_series():
    times = [k * 900_000 for k in range(96 * 14)]
    daily = [100 + 50 * math.sin(2 * math.pi * k / 96) for k in range(len(times))]
    noise = [100 + ((k * 7919) % 97) for k in range(len(times))]
    assert peak_curves.has_daily_shape(times, daily, 900)
    assert not peak_curves.has_daily_shape(times, noise, 900)
    assert not peak_curves.has_daily_shape(times, [v - 120 for v in daily], 900)  # not a load
    assert not peak_curves.has_daily_shape(times[:96 * 5], daily[:96 * 5], 900)  # too short


def test_bdew_profiles_are_made_offline_and_bill_holidays_as_sundays():
    [(name, family, times, values, step_s)] = peak_curves.bdew_curves(("g0",))
    assert (name, family, step_s) == ("bdew/g0", "bdew", 900) and len(values) == peak_curves.BDEW_DAYS * 96

    def day(date: str) -> float:
        start = next(i for i, ts in enumerate(times) if ts >= _ms(date))
        return sum(values[start:start + 96])

    good_friday, friday_before, sunday = day("2023-04-07"), day("2023-03-31"), day("2023-04-02")
    assert good_friday == pytest.approx(sunday, rel=0.05)
    assert friday_before > 1.3 * good_friday


def test_forecaster_beats_seasonal_naive_on_taylor_at_1_4_and_24_hours():
    [(_, _, times, values, step_s)] = peak_curves.curves(("taylor",))
    scores = peaks_suite.mase(times[:48 * 35], values[:48 * 35], step_s, warmup_days=7)
    assert set(scores) == {"1h", "4h", "24h"} and all(v < 1 for v in scores.values()), scores


def test_suite_prints_its_data_and_per_period_modes(capsys):
    assert main(["eval", "peaks-suite", "--families", "taylor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [d["curve"] for d in report["data"]] == ["taylor"]
    [row] = report["curves"]
    assert row["week"]["periods"] >= 2 and row["week"]["violations"] == 0
    assert all(set(m) <= {"forecast", "reactive"} for m in row["week"]["modes"])
    assert report["summary"]["curves"] == 1
    assert main(["eval", "peaks-suite", "--families", "taylor"]) == 0
    text = capsys.readouterr().out
    assert "judged on:" in text and "taylor" in text


@functools.cache
def _taylor_report(*given: str) -> dict:
    """The suite's JSON report on Taylor alone, without MASE, with ``given`` options (each set run once)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["eval", "peaks-suite", "--families", "taylor", "--mase", "off", "--json", *given]) == 0
    return json.loads(out.getvalue())


def _weekly_share_by(config_key: str, *given: str) -> dict:
    """Taylor's weekly share of the oracle by the report's ``config_key``, with the defaults and with ``given``."""
    return {r["config"][config_key]: r["curves"][0]["week"]["planner_mean_share"]
            for r in (_taylor_report(), _taylor_report(*given))}


def test_band_weight_reaches_the_plan_and_the_report_says_which_was_used():
    shares = _weekly_share_by("band_weight", "--band-weight", "0")
    assert set(shares) == {Policy().band_weight, 0.0}
    assert shares[0.0] != shares[Policy().band_weight]  # sized on the point forecast alone, the plan spends otherwise


def test_band_memory_reaches_the_forecaster_and_the_report_says_which_was_used():
    shares = _weekly_share_by("band_memory_steps", "--band-memory", "0.7")
    assert set(shares) == {PeakForecaster().error_halflife, 0.7}
    assert shares[0.7] != shares[PeakForecaster().error_halflife]  # a band of the latest error hedges otherwise


def _ms(date: str) -> int:
    import datetime as dt
    return int(dt.datetime.fromisoformat(date).replace(tzinfo=dt.timezone.utc).timestamp() * 1000)


def test_leave_one_out_scores_each_curve_with_the_candidate_best_on_the_others():
    def report(shares):
        return {"curves": [{"curve": c, "week": {"beats_or_ties_share": 1.0, "planner_mean_share": s,
                                                 "reactive_mean_share": 0.1, "violations": 0, "periods": 4,
                                                 "beats_or_ties": 4},
                            "month": {"periods": 1, "beats_or_ties": 1, "violations": 0, "planner_mean_share": s}}
                           for c, s in shares.items()]}
    result = peaks_suite.leave_one_out({"a": report({"x": 0.9, "y": 0.2, "z": 0.2}),
                                        "b": report({"x": 0.1, "y": 0.5, "z": 0.5})})
    # x is judged by the candidate best on y and z (b), which is worse on x itself: no peeking
    assert result["curves"]["x"]["candidate"] == "b" and result["curves"]["x"]["week"]["planner_mean_share"] == 0.1
    assert result["curves"]["y"]["candidate"] == "a"


def test_the_countrys_holidays_lower_the_forecasters_error_around_easter_on_a_bdew_profile():
    import holidays

    [(_, _, times, values, step_s)] = peak_curves.bdew_curves(("g0",))
    first, last = _ms("2023-03-27"), _ms("2023-04-22")  # a week to learn, then Good Friday to the week after Easter
    kept = [(t, v) for t, v in zip(times, values) if first <= t < last]
    times, values = [t for t, _ in kept], [v for _, v in kept]
    blind = peaks_suite.mase(times, values, step_s, warmup_days=7)
    aware = peaks_suite.mase(times, values, step_s, warmup_days=7, holidays=holidays.country_holidays("DE"))
    assert aware["24h"] < 0.8 * blind["24h"] and aware["4h"] < blind["4h"], (aware, blind)


def test_a_perfectly_periodic_curve_reports_naive_exact_with_the_forecasters_own_error_not_a_silent_failure():
    """Seasonal naive is exact on a curve that repeats every day: MASE has no value, so the report gives the
    forecaster's MAE as a share of the mean load and counts a small one as a tie, apart from MASE < 1."""
    times = [h * 3_600_000 for h in range(24 * 8)]
    loads = [1000.0 + (300.0 if 9 <= h % 24 < 18 else 0.0) for h in range(len(times))]
    scores = peaks_suite.forecast_scores(times, loads, 3600, warmup_days=4)
    assert scores["mase"] == {"1h": None, "4h": None, "24h": None}
    assert set(scores["naive_exact"]) == {"1h", "4h", "24h"}
    assert all(0 <= v <= peaks_suite.NAIVE_EXACT_TIE for v in scores["naive_exact"].values()), scores
    assert peaks_suite.mase(times, loads, 3600, warmup_days=4) == scores["mase"]

    def row(curve, mase, exact):
        period = {"periods": 1, "beats_or_ties": 1, "beats_or_ties_share": 1.0, "planner_mean_share": 0.8,
                  "reactive_mean_share": 0.2, "violations": 0, "modes": []}
        return {"curve": curve, "family": "x", "week": period, "month": period, "mase": mase, "naive_exact": exact}

    rows = [row("periodic", scores["mase"], scores["naive_exact"]), row("beaten", {"1h": 0.5, "4h": 0.6, "24h": 0.7}, {}),
            row("lost", {"1h": 0.5, "4h": 1.2, "24h": 0.7}, {}),
            row("periodic but off", {"1h": None, "4h": None, "24h": None}, {"1h": 0.2, "4h": 0.2, "24h": 0.2})]
    summary = peaks_suite.summarise(rows)
    assert summary["mase_under_1"] == 1  # an undefined MASE is not under 1
    assert (summary["mase_naive_exact"], summary["mase_naive_exact_ties"]) == (2, 1)
    assert summary["mase_naive_exact_worst_mae_share"] == 0.2
    text = peaks_suite.render({"site": "s", "data": [], "curves": rows, "summary": summary})
    assert "MASE < 1 at 1 h, 4 h and 24 h: 1/4 (seasonal naive exact" in text and "a tie on 1 within 1%" in text
    assert "=20.0%/=20.0%/=20.0%" in text


def _fake_curves(families):
    names = {"taylor": ["taylor"], "nab": ["nab/realAWSCloudwatch/rds_cpu_utilization_e47b3b", "nab/realTraffic/occupancy_6005"],
             "bdew": ["bdew/g1", "bdew/g3"]}
    return [(name, family, [], [], 900) for family in families for name in names[family]]


def test_curve_names_pick_their_families_and_a_bare_name_looks_in_every_family():
    families = ("taylor", "nab", "bdew")
    chosen = peaks_suite.select_curves(families, ["bdew/g3", "rds_cpu_utilization_e47b3b"], _fake_curves)
    assert [c[0] for c in chosen] == ["nab/realAWSCloudwatch/rds_cpu_utilization_e47b3b", "bdew/g3"]
    assert peaks_suite.families_for(families, ["bdew/g3", "nab/realTraffic"]) == ("nab", "bdew")
    assert len(peaks_suite.select_curves(families, None, _fake_curves)) == 5


def test_a_curve_name_that_matches_nothing_is_an_error_not_a_shorter_report():
    with pytest.raises(ValueError, match="--curve rds_typo: no curve"):
        peaks_suite.select_curves(("taylor", "nab", "bdew"), ["bdew/g3", "rds_typo"], _fake_curves)


def _simbench_wheel(path, days: int = 130):
    """A wheel holding a SimBench-shaped load table: a reactive-power column, a daily shape in every active-power
    column but BL-H's, which is flat."""
    import zipfile

    profiles = peak_curves.SIMBENCH_PROFILES
    rows = [";".join(["time", "hv_mixed1_qload", *(f"{p}_pload" for p in profiles)])]
    start = datetime.datetime(2016, 9, 1)
    for i in range(days * 96):
        t = start + datetime.timedelta(minutes=15 * i)
        daily = 1.0 + math.sin(2 * math.pi * (i % 96) / 96)
        rows.append(";".join([f"{t:%d.%m.%Y %H:%M}", "0.1", *("0.5" if p == "BL-H" else f"{daily:.5f}"
                                                               for p in profiles)]))
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(peak_curves.SIMBENCH_TABLE, "\n".join(rows) + "\n")
    return path


def test_simbench_profiles_are_read_from_the_wheel_over_the_fixed_window_and_flat_ones_left_out(tmp_path):
    wheel = _simbench_wheel(tmp_path / "simbench.whl")
    got = peak_curves.simbench_curves(wheel, profiles=("hv_mixed1", "BL-H"))
    assert [c[0] for c in got] == ["simbench/hv_mixed1"]  # the flat profile has no daily shape
    name, family, times, values, step_s = got[0]
    assert (family, step_s) == ("simbench", 900)
    first = int(peak_curves.SIMBENCH_FIRST.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)
    assert times[0] == first and len(times) == len(values) == 97 * 96  # 26 September to the end of December
    assert values[0] == pytest.approx(1.0) and values[24] == pytest.approx(2.0)  # the active power column


def test_the_simbench_family_without_its_wheel_says_how_to_fetch_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make simbench-data"):
        peak_curves.curves(("simbench",), cache_dir=tmp_path)
    peak_curves.simbench_wheel(tmp_path).parent.mkdir(parents=True)
    _simbench_wheel(peak_curves.simbench_wheel(tmp_path))
    got = peak_curves.curves(("simbench",), cache_dir=tmp_path)  # read where the make target puts it
    assert len(got) == len(peak_curves.SIMBENCH_PROFILES) - 1
