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
    assert out["profiles"]["standard"]["total"]["score"] >= 60  # the target; fold 1 alone is lower (see the note)

    assert main(["eval", "anomaly", "--detector", "gaussian", "--data", str(NAB / "data"),
                 "--labels", str(NAB / "labels" / "combined_windows.json"), "--json"]) == 0
    baseline = json.loads(capsys.readouterr().out)
    for name, report in out["profiles"].items():
        assert report["total"]["score"] > baseline["profiles"][name]["total"]["score"] + 10
