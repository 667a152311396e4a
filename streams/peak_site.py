"""The peaks loop's configuration from a site file (config/sites/*.yaml): battery, import cap, relocatable jobs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from opsloop.models.peak_battery import Battery
from opsloop.models.peak_loop import LoopConfig
from opsloop.models.peak_planner import PERIOD_DAYS, Policy, Tariff


def load_loop_config(site_file: Path, step_s: int = 900, **overrides) -> LoopConfig:
    """Site id, first ESS, import cap and the preemptible Slurm partition of a site file.

    ``overrides`` replace LoopConfig fields; ``battery_kwh`` / ``pcs_kw`` resize the battery.
    """
    doc = yaml.safe_load(Path(site_file).read_text(encoding="utf-8"))
    try:
        site, ess = doc["site"], doc["ess"][0]
        battery = Battery(capacity_kwh=float(ess["capacity_kwh"]), charge_kw=float(ess["pcs_charge_kw"]),
                          discharge_kw=float(ess["pcs_discharge_kw"]),
                          efficiency=float(ess.get("round_trip_efficiency", 0.9)),
                          reserve_pct=float(ess.get("reserve_soc_pct", 10)), soh_pct=float(ess.get("soh_pct", 100)))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{site_file}: needs site.id and an ess entry with capacity_kwh, pcs_charge_kw, "
                         f"pcs_discharge_kw: {exc!r}") from exc
    kwh, kw = overrides.pop("battery_kwh", None), overrides.pop("pcs_kw", None)
    if kwh is not None:
        battery = replace(battery, capacity_kwh=float(kwh))
    if kw is not None:
        battery = replace(battery, charge_kw=float(kw), discharge_kw=float(kw))
    pods = doc.get("gpu_pods") or []
    relocatable = next((p for p in pods if "preemptible" in str(p.get("description", ""))), None)
    prices = site.get("tariff_by_hour")
    cap = site.get("grid_import_cap_kw")
    # What relocating the preemptible pod's jobs can give at most: its share of IT at the import cap.
    shed = float(relocatable.get("it_share", 0.0)) * cap if relocatable and cap else float("inf")
    gpus = int(relocatable.get("nodes", 0)) * int(relocatable.get("gpus_per_node", 0)) if relocatable else 0
    kw_per_gpu = shed / gpus if gpus and shed != float("inf") else None  # the pod's IT at the cap, per GPU
    period = str(site.get("demand_billing_period", "month"))
    if period not in PERIOD_DAYS:
        raise ValueError(f"{site_file}: site.demand_billing_period is {period!r}; expected one of "
                         f"{', '.join(PERIOD_DAYS)}")
    config = LoopConfig(site=str(site["id"]), ess_id=str(ess["id"]), battery=battery, step_s=step_s,
                        tariff=Tariff(tuple(float(p) for p in prices)) if prices else Tariff(),
                        policy=Policy(import_cap_kw=cap, max_shed_kw=shed),
                        slurm_partition=relocatable["slurm_partition"] if relocatable else "batch",
                        billing_period=period, kw_per_gpu=kw_per_gpu)
    return replace(config, **overrides)
