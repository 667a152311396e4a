"""`opsloop eval anomaly` on a NAB-layout folder: a tiny one written here, and the shared NAB subset."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from opsloop.ops.cli import main

pytestmark = pytest.mark.unit

NAB = Path("../shared/data/nab")
PROFILES = {"standard": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.11, "tnWeight": 1.0}}}


def write_series(path: Path, values, start=datetime(2020, 1, 1)) -> list[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    stamps = [(start + timedelta(minutes=5 * i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(len(values))]
    path.write_text("timestamp,value\n" + "".join(f"{t},{v}\n" for t, v in zip(stamps, values)))
    return stamps


def test_tiny_corpus_per_family_and_total(tmp_path, capsys):
    rng = random.Random(0)
    spike = [50 + rng.gauss(0, 1) for _ in range(1000)]
    spike[800] = 90.0
    stamps = write_series(tmp_path / "data" / "fam_a" / "spike.csv", spike)
    write_series(tmp_path / "data" / "fam_b" / "quiet.csv", [50 + rng.gauss(0, 1) for _ in range(1000)])
    labels = {"fam_a/spike.csv": [[stamps[760], stamps[840]]], "fam_b/quiet.csv": []}
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "windows.json").write_text(json.dumps(labels))
    (tmp_path / "profiles.json").write_text(json.dumps(PROFILES))

    assert main(["eval", "anomaly", "--data", str(tmp_path / "data"),
                 "--labels", str(tmp_path / "labels" / "windows.json"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["profiles"]["standard"]
    assert set(report["families"]) == {"fam_a", "fam_b"}
    assert report["families"]["fam_a"]["tp"] == 1 and report["families"]["fam_b"]["score"] is None
    assert report["total"]["score"] > 80  # the spike is found in the window's middle, nothing else fires


def write_two_families(root: Path) -> tuple[Path, Path]:
    """fam_a: a spike far out of range (scores 1.0); fam_b: a burst of jumps inside the range (a low score)."""
    rng = random.Random(0)
    spike = [50 + rng.gauss(0, 1) for _ in range(1000)]
    spike[800] = 90.0
    jumps = [50 + rng.gauss(0, 1) for _ in range(1000)]
    jumps[700:720] = [47.5 if i % 2 else 52.5 for i in range(20)]
    a = write_series(root / "data" / "fam_a" / "spike.csv", spike)
    b = write_series(root / "data" / "fam_b" / "jumps.csv", jumps)
    labels = root / "labels" / "windows.json"
    labels.parent.mkdir()
    labels.write_text(json.dumps({"fam_a/spike.csv": [[a[760], a[840]]], "fam_b/jumps.csv": [[b[680], b[720]]]}))
    (root / "profiles.json").write_text(json.dumps(PROFILES))
    return root / "data", labels


def test_lofo_scores_each_family_at_the_threshold_chosen_on_the_others(tmp_path, capsys):
    data, labels = write_two_families(tmp_path)
    assert main(["eval", "anomaly", "--data", str(data), "--labels", str(labels), "--lofo", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    all_in, lofo = out["profiles"]["standard"], out["lofo"]["standard"]
    assert all_in["total"]["tp"] == 2  # one threshold that has seen both families finds both anomalies
    # fam_a alone only needs its 1.0 spike; held out, fam_b gets that threshold and its jumps are missed
    assert lofo["families"]["fam_a"]["threshold"] == pytest.approx(all_in["threshold"])
    assert lofo["families"]["fam_b"]["threshold"] == 1.0
    assert (lofo["families"]["fam_a"]["tp"], lofo["families"]["fam_b"]["fn"]) == (1, 1)
    assert lofo["total"]["windows"] == all_in["total"]["windows"] == 2
    assert lofo["total"]["score"] < all_in["total"]["score"]
    assert out["judged_on"]["families"] == {"fam_a": 1, "fam_b": 1} and out["judged_on"]["labels"] == str(labels)


def test_text_report_names_its_data_and_puts_lofo_beside_all_in(tmp_path, capsys):
    data, labels = write_two_families(tmp_path)
    assert main(["eval", "anomaly", "--data", str(data), "--labels", str(labels), "--lofo"]) == 0
    text = capsys.readouterr().out
    assert f"judged on {data} with labels {labels}: fam_a (1), fam_b (1)" in text
    assert "standard: leave-one-family-out 43.9, all-in" in text


def test_without_a_profiles_file_nabs_published_profiles_are_used(tmp_path, capsys):
    write_series(tmp_path / "data" / "fam" / "flat.csv", [1.0] * 500)
    (tmp_path / "windows.json").write_text(json.dumps({"fam/flat.csv": []}))
    assert main(["eval", "anomaly", "--data", str(tmp_path / "data"), "--labels", str(tmp_path / "windows.json"),
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert set(json.loads(captured.out)["profiles"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    assert "published profiles" in captured.err


def test_missing_labels_file_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "anomaly", "--data", str(tmp_path), "--labels", str(tmp_path / "nope.json")]) == 2
    assert "not found" in capsys.readouterr().out


@pytest.mark.skipif(not (NAB / "labels" / "combined_windows.json").exists(), reason="../shared/data/nab is absent")
def test_bundled_nab_subset_scores_every_profile(capsys):
    assert main(["eval", "anomaly", "--data", str(NAB / "data"),
                 "--labels", str(NAB / "labels" / "combined_windows.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["profiles"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    for report in out["profiles"].values():
        assert report["total"]["windows"] == 50
        assert 0 < report["total"]["score"] < 100  # better than no detector, worse than perfect
    assert out["profiles"]["standard"]["total"]["score"] >= 70  # the all-in target

    assert main(["eval", "anomaly", "--detector", "gaussian", "--data", str(NAB / "data"),
                 "--labels", str(NAB / "labels" / "combined_windows.json"), "--json"]) == 0
    baseline = json.loads(capsys.readouterr().out)
    for name, report in out["profiles"].items():
        assert report["total"]["score"] > baseline["profiles"][name]["total"]["score"] + 10


@pytest.mark.skipif(not (NAB / "labels" / "combined_windows.json").exists(), reason="../shared/data/nab is absent")
def test_bundled_nab_leave_one_family_out_estimate(capsys):
    assert main(["eval", "anomaly", "--data", str(NAB / "data"), "--labels", str(NAB / "labels" / "combined_windows.json"),
                 "--lofo", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    lofo = out["lofo"]["standard"]
    assert set(lofo["families"]) == set(out["judged_on"]["families"]) == {
        "artificialNoAnomaly", "artificialWithAnomaly", "realAWSCloudwatch", "realTraffic"}
    assert lofo["total"]["windows"] == 50
    # the defaults' estimate for families never seen (69.6 when chosen; the target on the hold-out is 65)
    assert lofo["total"]["score"] >= 68
    assert lofo["families"]["artificialNoAnomaly"]["fp"] == 0  # series without anomalies stay quiet


def test_the_live_agent_runs_the_configuration_the_eval_scores():
    import inspect

    from opsloop.models.anomaly import DEFAULT_RAISE_AT, EarlyWarning
    from opsloop.ops.evals.anomaly import DETECTORS
    from opsloop.streams.anomaly import AnomalyProcessor

    assert inspect.signature(AnomalyProcessor).parameters["new_warning"].default is EarlyWarning
    warning = EarlyWarning()
    assert warning.detector._get_params() == DETECTORS["series"]()._get_params()
    assert warning.raise_at == DEFAULT_RAISE_AT
