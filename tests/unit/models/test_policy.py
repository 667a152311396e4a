"""The policy file: the shipped one is valid; bad files get every problem with its path."""

from __future__ import annotations

import copy

import pytest
import yaml

from opsloop.config.policy import PolicyError, parse_policy
from opsloop.config.policy import load_policy
from opsloop.ops.policy import check
from opsloop.config.assets import POLICY_FILE

pytestmark = pytest.mark.unit


@pytest.fixture
def doc() -> dict:
    return yaml.safe_load((POLICY_FILE).read_text())


def test_shipped_policy_is_valid_and_keeps_inference_protected(doc):
    policy = load_policy(POLICY_FILE)
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
    assert problems({**doc, "version": 5}) == ["version: this opsloop reads policy versions 1, 2, 3 and 4, "
                                               "the file has 5"]


def test_check_command_reports_and_exits_non_zero(tmp_path, doc, capsys):
    assert check(POLICY_FILE) == 0
    assert "Slurm budgets per 3600 s per site" in capsys.readouterr().out
    bad = tmp_path / "policy.yaml"
    doc["pcs"]["max_kw"] = "lots"
    bad.write_text(yaml.safe_dump(doc))
    assert check(bad) == 1
    assert f"{bad}: pcs.max_kw: 'lots' is not of type 'number'" in capsys.readouterr().out
    assert check(tmp_path / "missing.yaml") == 1


def test_a_version_1_file_loads_with_per_action_slurm_budgets(doc):
    old = copy.deepcopy(doc)
    old["version"] = 1
    del old["slurm"]["budget_window_s"], old["llm"], old["cooling"], old["gpu"], old["levers"]
    assert parse_policy(old).slurm.budget_window_s == 0
    assert parse_policy(doc).slurm.budget_window_s == 3600
    old["slurm"]["budget_window_s"] = 3600
    assert problems(old) == ["slurm.budget_window_s: needs policy version 2"]


def test_a_budget_window_must_cover_the_longest_hold(doc):
    doc["slurm"]["budget_window_s"] = 600
    assert problems(doc) == ["slurm: budget_window_s 600 is shorter than max_hold_s 3600; the budget would forget "
                             "actions whose holds are still in force"]
    doc["slurm"]["budget_window_s"] = -1
    assert problems(doc) == ["slurm.budget_window_s: -1 is less than the minimum of 0"]
    doc["slurm"]["budget_window_s"] = 0
    assert parse_policy(doc).slurm.budget_window_s == 0


def test_the_llm_section_needs_version_3_and_without_it_there_are_no_llm_limits(doc):
    assert parse_policy(doc).llm.slo_ttfb_s > 0
    older = {**copy.deepcopy(doc), "version": 2}
    del older["cooling"], older["gpu"], older["levers"]
    assert problems(older) == ["llm: needs policy version 3"]
    del older["llm"]
    assert parse_policy(older).llm is None
    doc["llm"]["min_maxconn"] = 0
    assert problems(doc) == ["llm.min_maxconn: 0 is less than the minimum of 1"]


def test_the_cooling_section_needs_version_4_and_keeps_its_ranges_in_order(doc):
    limits = parse_policy(doc).cooling
    assert (limits.inlet_min_c, limits.inlet_max_c) == (18, 27)  # ASHRAE's recommended envelope
    assert parse_policy(doc).mode("cooling_setpoint") == "approve"  # advice an operator approves, by default
    older = {**copy.deepcopy(doc), "version": 3}
    del older["gpu"], older["levers"]
    assert problems(older) == ["cooling: needs policy version 4"]
    del older["cooling"]
    assert parse_policy(older).cooling is None
    doc["cooling"].update(inlet_max_c=17, setpoint_max_c=30, max_change_c_per_h=0.5)
    assert problems(doc) == ["cooling: inlet_max_c must be above inlet_min_c",
                             "cooling: setpoint_max_c above inlet_max_c would aim the supply air past the inlet limit",
                             "cooling: max_change_c_per_h is smaller than one max_step_c"]


def test_the_gpu_section_needs_version_4_and_without_it_there_are_no_gpu_limits(doc):
    gpu = parse_policy(doc).gpu
    assert gpu.min_sm_clock_mhz == 900 and gpu.min_power_limit_w == 300 and gpu.max_duration_s == 3600
    older = {**copy.deepcopy(doc), "version": 3}
    del older["cooling"], older["levers"]
    assert problems(older) == ["gpu: needs policy version 4"]
    del older["gpu"]
    assert parse_policy(older).gpu is None
    doc["gpu"]["min_sm_clock_mhz"] = 0
    assert problems(doc) == ["gpu.min_sm_clock_mhz: 0 is less than the minimum of 1"]


def test_the_levers_section_needs_version_4_and_without_it_the_planner_has_the_battery_alone(doc):
    costs = parse_policy(doc).levers
    assert costs.demand_charge_per_kw_month > 0 and costs.max_hours_per_day["llm_shift"] == 4
    older = {**copy.deepcopy(doc), "version": 3}
    del older["cooling"], older["gpu"]
    assert problems(older) == ["levers: needs policy version 4"]
    del older["levers"]
    assert parse_policy(older).levers is None
    doc["levers"]["max_hours_per_day"]["slurm_hold"] = 25
    doc["levers"]["gpu_hour"] = -1
    assert problems(doc) == ["levers.gpu_hour: -1 is less than the minimum of 0",
                             "levers.max_hours_per_day.slurm_hold: 25 is greater than the maximum of 24"]
