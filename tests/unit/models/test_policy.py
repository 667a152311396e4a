"""The policy file: the shipped one is valid; bad files get every problem with its path."""

from __future__ import annotations

import copy

import pytest
import yaml

from models.policy import PolicyError, parse_policy
from ops.policy import check, load_policy
from ops.settings import OPS_DIR

pytestmark = pytest.mark.unit


@pytest.fixture
def doc() -> dict:
    return yaml.safe_load((OPS_DIR / "policy.yaml").read_text())


def test_shipped_policy_is_valid_and_keeps_inference_protected(doc):
    policy = load_policy(OPS_DIR / "policy.yaml")
    assert policy.mode("pcs_discharge") == "auto" and policy.mode("slurm_requeue") == "approve"
    assert "inference" in policy.slurm.protected_partitions
    assert not set(policy.slurm.protected_partitions) & set(policy.slurm.touchable_partitions)


def problems(doc) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    return info.value.problems


def test_a_partition_both_touchable_and_protected_is_an_error(doc):
    doc["slurm"]["touchable_partitions"].append("inference")
    assert problems(doc) == ["slurm: partition(s) inference are both touchable and protected"]


def test_every_structural_problem_is_listed_with_its_path(doc):
    bad = copy.deepcopy(doc)
    bad["actions"]["pcs_discharge"]["mode"] = "yolo"
    bad["pcs"]["reserve_soc_pct"] = 140
    bad["slurm"]["max_jobs_per_event"] = 2.5
    bad["surprise"] = 1
    found = problems(bad)
    assert any(p.startswith("actions.pcs_discharge.mode: 'yolo' is not one of") for p in found)
    assert "pcs.reserve_soc_pct: 140 is greater than the maximum of 100" in found
    assert "slurm.max_jobs_per_event: 2.5 is not of type 'integer'" in found
    assert any(p.startswith("(root): Additional properties are not allowed ('surprise'") for p in found)


def test_windows_and_versions_are_checked(doc):
    bad = copy.deepcopy(doc)
    bad["actions"]["pcs_charge"]["windows"] = [{"start": "18:00", "end": "06:00"}]
    assert problems(bad) == ["actions.pcs_charge.windows.0: end 06:00 is not after start 18:00"]
    assert problems({**doc, "version": 2}) == ["version: this opsloop reads policy version 1, the file has 2"]


def test_check_command_reports_and_exits_non_zero(tmp_path, doc, capsys):
    assert check(OPS_DIR / "policy.yaml") == 0
    bad = tmp_path / "policy.yaml"
    doc["pcs"]["max_kw"] = "lots"
    bad.write_text(yaml.safe_dump(doc))
    assert check(bad) == 1
    assert f"{bad}: pcs.max_kw: 'lots' is not of type 'number'" in capsys.readouterr().out
    assert check(tmp_path / "missing.yaml") == 1
