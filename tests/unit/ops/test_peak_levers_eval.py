"""`opsloop eval peaks --levers` on a made-up curve: the levers shed within their limits and score against the oracle."""

from __future__ import annotations

import pytest

from opsloop.config.assets import POLICY_FILE, SITES_DIR
from opsloop.config.policy import load_policy
from opsloop.config.site import load_site
from opsloop.models.peak_loop import LoopConfig
from opsloop.ops.evals import peak_levers
from opsloop.ops.evals.peaks import planner_controller

pytestmark = pytest.mark.unit


def test_levers_shed_within_their_limits_and_are_scored_against_the_battery_alone():
    config = LoopConfig.from_site(load_site(SITES_DIR / "examples" / "flexible.yaml"), step_s=3600,
                                  lever_costs=load_policy(POLICY_FILE).levers)
    shape = [0.6] * 9 + [0.9, 1.0, 1.0, 0.95] + [0.75] * 11
    loads = [30_000 * s * (0.8 + 0.01 * day) for day in range(21) for s in shape]
    times = [i * 3_600_000 for i in range(len(loads))]
    report = peak_levers.evaluate_levers(times, loads, 3600, config, 80.0, 7, planner_controller)
    (row,) = report["periods"]
    peaks = row["billed_peak_kw"]
    assert peaks[peak_levers.LEVERS] < peaks["planner"] <= peaks["none"]
    assert row["closer"] > 0 and row["demand_charge_saved"] > 0
    by_kind = {lv["kind"]: lv for lv in report["levers"]}
    for kind, used in row["levers"].items():
        if kind != "battery":
            assert used["max_kw"] <= by_kind[kind]["share"] * max(loads) + 1e-6
            assert used["hours"] <= by_kind[kind]["max_hours_per_day"] * 14 + 1e-6
    assert row["violations"][peak_levers.LEVERS] == 0
    assert "closer to the oracle" in peak_levers.render(report)
