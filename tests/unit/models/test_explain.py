"""NOC one-liners for forecasts and actions: built from the record's own numbers."""

from __future__ import annotations

import pytest

from opsloop.models.explain import FORECAST_CODES, ActionAdvisor, ForecastInterpreter, duration, power

pytestmark = pytest.mark.unit


def action(**changes) -> dict:
    base = {"action_id": "a", "kind": "pcs_discharge", "target": "pcs-1", "site": "demo", "setpoint_kw": 800.0,
            "shed_kw": None, "job_ids": [], "params": {}, "reason": "Peak ahead.", "expected_effect": "",
            "expected_delta_kw": -800.0, "created_ms": 0, "expires_ms": 1_800_000, "risk": "low", "proposer": "peaks"}
    return {**base, **changes}


def test_units_and_durations():
    assert (power(850), power(31_400), power(-1200)) == ("850 kW", "31.4 MW", "-1.2 MW")
    assert (duration(45 * 60_000), duration(135 * 60_000), duration(-5)) == ("45 min", "2 h 15 min", "0 min")


def test_forecast_under_threshold_says_no_action():
    f = {"site": "s", "issued_ms": 0, "horizon_s": 3600, "step_s": 900, "predicted_peak_kw": 900.0,
         "predicted_peak_ms": 1_800_000, "threshold_kw": 1000.0, "points": [], "explanation": "", "model": "m"}
    line = ForecastInterpreter().run(f)
    assert line["text"] == (
        "s: peak of 900 kW expected at 00:30 UTC (in 30 min), 100 kW under the 1.0 MW threshold, no action needed.")
    assert line["reason_code"] == "peak_under_threshold" and line["reason_code"] in FORECAST_CODES


@pytest.mark.parametrize("changes, expected", [
    ({}, "Discharge battery pcs-1 at 800 kW until 00:30 UTC (30 min): grid import down 800 kW. Why: Peak ahead. "
         "Low risk, proposed by peaks."),
    ({"kind": "pcs_charge", "setpoint_kw": -500.0, "expected_delta_kw": 500.0, "risk": "medium"},
     "Charge battery pcs-1 at 500 kW until 00:30 UTC (30 min): grid import up 500 kW. Why: Peak ahead. "
     "Medium risk, proposed by peaks."),
    ({"kind": "slurm_hold", "target": "gpu-cluster", "setpoint_kw": None, "shed_kw": 1500.0,
      "job_ids": ["11", "12", "13", "14"], "expected_delta_kw": None, "risk": "high"},
     "Hold 4 job(s) (11, 12, 13 and 1 more) on gpu-cluster until 00:30 UTC (30 min): sheds 1.5 MW of GPU load. "
     "Why: Peak ahead. High risk, proposed by peaks."),
])
def test_action_lines(changes, expected):
    assert ActionAdvisor().run(action(**changes))["text"] == expected


def test_an_action_line_carries_its_proposers_reason_code():
    assert ActionAdvisor().run(action(reason_code="recharge_valley"))["reason_code"] == "recharge_valley"
    assert ActionAdvisor().run(action())["reason_code"] is None  # an older record, or a proposer without codes


def test_a_maintenance_reservation_reads_as_its_window_and_why():
    from opsloop.models.maintenance import HOUR_MS, Window, maintenance_action

    forecast = {"site": "demo", "device": "node7/gpu3", "device_type": "gpu", "metric": "ecc_dbe_count",
                "earliest_ms": 10 * 24 * HOUR_MS}
    action = maintenance_action(forecast, Window(2 * HOUR_MS, 6 * HOUR_MS, 12.5, 3.2, "maintenance_window"),
                                "slurm", ["node7"], [], 8, now_ms=0)
    text = ActionAdvisor().run(action)["text"]
    assert text.startswith("Reserve node7 on slurm for maintenance from 1970-01-01 02:00 UTC (4 h 0 min): no job is")
    assert "Why: Replace gpu node7/gpu3 between 1970-01-01 02:00 UTC and 1970-01-01 06:00 UTC" in text
    assert text.endswith("Low risk, proposed by rul.")


@pytest.mark.parametrize("changes, start", [
    ({"kind": "slurm_shrink", "target": "gpu-cluster", "setpoint_kw": None, "job_ids": ["42"],
      "params": {"nodes": "2", "job_nodes": "4", "comment": "opsloop:dp:min=2"}},
     "Shrink 1 job(s) (42) on gpu-cluster to 2 node(s) until 00:30 UTC"),
    ({"kind": "slurm_shrink", "target": "slurm", "setpoint_kw": None, "job_ids": [],
      "params": {"partitions": "batch", "gpus": "16"}},
     "Release up to 16 GPUs of opsloop:dp jobs in batch on slurm until 00:30 UTC"),
    ({"kind": "gpu_clock_lock", "setpoint_kw": None, "params": {"partition": "batch", "sm_mhz": "1200"}},
     "Lock the SM clocks of partition batch's GPUs at 1200 MHz until 00:30 UTC"),
    ({"kind": "gpu_power_limit", "setpoint_kw": None, "params": {"partition": "batch", "watts": "450"}},
     "Limit each GPU of partition batch to 450 W until 00:30 UTC"),
])
def test_the_elastic_and_gpu_kinds_read_as_what_they_do(changes, start):
    assert ActionAdvisor().run(action(**changes))["text"].startswith(start)
