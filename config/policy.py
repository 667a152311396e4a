"""The guard-rail policy as typed, frozen data, parsed from the YAML document of ``config/policy.yaml``.

Pure: ``parse_policy`` takes the already-loaded document (a dict) and returns a
``Policy`` or raises ``PolicyError`` listing every problem with its path, so an
operator fixes a file in one go. The structural rules are a JSON Schema
(``POLICY_SCHEMA``, checked with the jsonschema library); the rules that span
fields (a partition both touchable and protected, a window ending before it
starts, a Slurm budget window shorter than a hold) are checked here.

Versions: 2 adds ``slurm.budget_window_s`` (Slurm budgets summed over a sliding
window per site). A version-1 file still loads, with budgets per action only
(``budget_window_s`` = 0), so an existing policy never tightens silently.
3 adds the optional ``llm`` section (the LLM-serving lever: ``llm_shift``,
``llm_cap``, their limits and the serving SLO); without it those kinds are rejected.
4 adds the optional ``cooling`` section (the supply-air setpoint lever, ``cooling_setpoint``: the rack
inlet range, setpoint bounds, ramp limits per change and per hour, the revert timeout and the energy
price the efficiency advice counts in when the site file has no tariff); without it that kind is rejected.
4 also adds the optional ``gpu`` section (NVML settings on a partition's GPUs: ``gpu_clock_lock``
and ``gpu_power_limit``, their floors and longest duration); without it those kinds are rejected.
``slurm_shrink`` (release nodes of a running data-parallel job) needs no new section: it is a
Slurm action under the ``slurm`` limits and budget.
4 also adds the optional ``levers`` section: what each flexible-load lever costs the
peak planner (``models.levers``), and how many hours a day each may be engaged;
without it the planner uses the battery alone.

>>> policy = parse_policy({"version": 2, "approval_expiry_s": 600,
...     "actions": {"pcs_discharge": {"mode": "auto"}, "slurm_requeue": {"mode": "approve"}},
...     "pcs": {"max_kw": 4000, "ramp_kw_per_min": 2000, "reserve_soc_pct": 15, "min_soh_pct": 80,
...             "max_duration_s": 3600},
...     "slurm": {"touchable_partitions": ["batch"], "protected_partitions": ["inference"],
...               "max_jobs_per_event": 10, "max_gpu_hours_per_event": 40, "max_hold_s": 3600,
...               "budget_window_s": 3600}})
>>> policy.mode("pcs_discharge"), policy.mode("pcs_charge"), policy.slurm.protected_partitions
('auto', 'advise', ('inference',))
>>> policy.slurm.budget_window_s
3600.0
>>> print(PolicyError(schema_problems({"version": 2, "approval_expiry_s": 60, "actions": {},
...     "pcs": {"max_kw": -5, "ramp_kw_per_min": 1, "reserve_soc_pct": 10, "min_soh_pct": 80,
...             "max_duration_s": 60}})))
invalid policy:
  (root): 'slurm' is a required property
  pcs.max_kw: -5 is less than or equal to the minimum of 0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import yaml

from opsloop.config import strict_yaml

SCHEMA_VERSION = 4  # the newest policy version (the shipped file)
READABLE_VERSIONS = (1, 2, 3, 4)
LEVER_KINDS = ("llm_shift", "llm_cap", "gpu_clock_lock", "slurm_shrink", "slurm_hold")  # models.levers
MODES = ("advise", "approve", "auto")
ACTION_KINDS = ("pcs_discharge", "pcs_charge", "pcs_idle", "slurm_hold", "slurm_release",
                "slurm_requeue", "slurm_suspend", "slurm_resume", "llm_shift", "llm_cap",
                "slurm_reserve", "slurm_shrink", "gpu_clock_lock", "gpu_power_limit", "cooling_setpoint")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$"

_positive = {"type": "number", "exclusiveMinimum": 0}
_percent = {"type": "number", "minimum": 0, "maximum": 100}
_names = {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True}
_window = {
    "type": "object", "additionalProperties": False, "required": ["start", "end"],
    "properties": {"days": {"type": "array", "items": {"enum": list(DAYS)}, "uniqueItems": True, "minItems": 1},
                   "start": {"type": "string", "pattern": _HHMM}, "end": {"type": "string", "pattern": _HHMM}},
}

#: JSON Schema of every readable policy version (structure, types, ranges). Cross-field rules live in ``parse_policy``.
POLICY_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "approval_expiry_s", "actions", "pcs", "slurm"],
    "properties": {
        "version": {"enum": list(READABLE_VERSIONS)},
        "name": {"type": "string"},
        "approval_expiry_s": _positive,
        "max_state_age_s": _positive,
        "actions": {
            "type": "object", "additionalProperties": False,
            "properties": {kind: {
                "type": "object", "additionalProperties": False, "required": ["mode"],
                "properties": {"mode": {"enum": list(MODES)}, "windows": {"type": "array", "items": _window}},
            } for kind in ACTION_KINDS},
        },
        "pcs": {
            "type": "object", "additionalProperties": False,
            "required": ["max_kw", "ramp_kw_per_min", "reserve_soc_pct", "min_soh_pct", "max_duration_s"],
            "properties": {"max_kw": _positive, "ramp_kw_per_min": _positive, "reserve_soc_pct": _percent,
                           "max_soc_pct": _percent, "min_soh_pct": _percent, "max_duration_s": _positive},
        },
        "slurm": {
            "type": "object", "additionalProperties": False,
            "required": ["touchable_partitions", "protected_partitions", "max_jobs_per_event",
                         "max_gpu_hours_per_event", "max_hold_s"],
            "properties": {"touchable_partitions": _names, "protected_partitions": _names,
                           "max_jobs_per_event": {"type": "integer", "minimum": 1},
                           "max_gpu_hours_per_event": _positive, "max_hold_s": _positive,
                           "kw_per_gpu": _positive, "budget_window_s": {"type": "number", "minimum": 0}},
        },
        "llm": {
            "type": "object", "additionalProperties": False,
            "required": ["max_shift_pct", "min_maxconn", "max_duration_s", "slo_ttfb_s", "slo_queue"],
            "properties": {"max_shift_pct": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                           "min_maxconn": {"type": "integer", "minimum": 1},
                           "max_duration_s": _positive, "slo_ttfb_s": _positive,
                           "slo_queue": {"type": "integer", "minimum": 0}},
        },
        "cooling": {
            "type": "object", "additionalProperties": False,
            "required": ["inlet_min_c", "inlet_max_c", "setpoint_min_c", "setpoint_max_c", "max_step_c",
                         "max_change_c_per_h", "revert_timeout_s"],
            "properties": {"inlet_min_c": {"type": "number"}, "inlet_max_c": {"type": "number"},
                           "setpoint_min_c": {"type": "number"}, "setpoint_max_c": {"type": "number"},
                           "max_step_c": _positive, "max_change_c_per_h": _positive, "revert_timeout_s": _positive,
                           "inlet_margin_c": {"type": "number", "minimum": 0},
                           "energy_price_per_kwh": {"type": "number", "minimum": 0}},
        },
        "gpu": {
            "type": "object", "additionalProperties": False,
            "required": ["min_sm_clock_mhz", "min_power_limit_w", "max_duration_s"],
            "properties": {"min_sm_clock_mhz": {"type": "integer", "minimum": 1},
                           "min_power_limit_w": _positive, "max_duration_s": _positive},
        },
        "levers": {
            "type": "object", "additionalProperties": False,
            "required": ["demand_charge_per_kw_month", "battery_wear_per_kwh", "gpu_hour", "hold_restart_share",
                         "llm_shift_per_kwh", "llm_cap_per_kwh", "max_hours_per_day"],
            "properties": {"demand_charge_per_kw_month": {"type": "number", "minimum": 0},
                           "battery_wear_per_kwh": {"type": "number", "minimum": 0},
                           "gpu_hour": {"type": "number", "minimum": 0},
                           "hold_restart_share": {"type": "number", "minimum": 0},
                           "llm_shift_per_kwh": {"type": "number", "minimum": 0},
                           "llm_cap_per_kwh": {"type": "number", "minimum": 0},
                           "max_hours_per_day": {
                               "type": "object", "additionalProperties": False,
                               "properties": {k: {"type": "number", "minimum": 0, "maximum": 24}
                                              for k in LEVER_KINDS}}},
        },
    },
}


MAX_PROBLEM_CHARS = 300


def clip(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out.

    >>> clip("x" * 400, 10)
    'xxxxxxxxxx… (390 more characters)'
    """
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


class PolicyError(ValueError):
    """The policy document is invalid; ``problems`` holds one line per problem (path: what is wrong)."""

    def __init__(self, problems: list[str]):
        self.problems = [clip(p) for p in problems]  # a hostile file's huge value is named, not echoed whole
        super().__init__("invalid policy:\n" + "\n".join(f"  {p}" for p in self.problems))


@dataclass(frozen=True)
class Window:
    """A daily time window in UTC, on the listed days; ``end`` may be ``24:00``."""

    days: tuple[str, ...]
    start_min: int
    end_min: int

    def contains(self, now_ms: int) -> bool:
        t = datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc)
        minute = t.hour * 60 + t.minute
        return DAYS[t.weekday()] in self.days and self.start_min <= minute < self.end_min


@dataclass(frozen=True)
class KindRule:
    mode: str = "advise"
    windows: tuple[Window, ...] = ()  # empty: any time


@dataclass(frozen=True)
class PcsLimits:
    max_kw: float
    ramp_kw_per_min: float
    reserve_soc_pct: float
    min_soh_pct: float
    max_duration_s: float
    max_soc_pct: float = 100.0


@dataclass(frozen=True)
class SlurmLimits:
    touchable_partitions: tuple[str, ...]
    protected_partitions: tuple[str, ...]
    max_jobs_per_event: int
    max_gpu_hours_per_event: float
    max_hold_s: float
    kw_per_gpu: float = 0.7  # estimated draw of one busy GPU with its share of the node
    # Jobs and GPU-hours of the shedding actions approved for a site within this many seconds count
    # together against the per-event limits; 0: each action on its own (policy version 1).
    budget_window_s: float = 0.0


@dataclass(frozen=True)
class LlmLimits:
    """The LLM-serving lever: how far it may go and the serving SLO it must keep while it holds."""

    max_shift_pct: float  # most of the large model's traffic one llm_shift moves to the small one
    min_maxconn: int  # an llm_cap never leaves a server fewer concurrent requests than this
    max_duration_s: float  # one shift or cap lasts at most this long, then it is reverted
    slo_ttfb_s: float  # the balancer's response time (time to first byte) above this breaches the SLO
    slo_queue: int  # requests waiting in the balancer's queue above this breach the SLO


@dataclass(frozen=True)
class CoolingLimits:
    """The supply-air setpoint lever (``cooling_setpoint``): what the rack inlets and the plant must keep."""

    inlet_min_c: float  # every rack inlet stays within [inlet_min_c, inlet_max_c] (ASHRAE recommended: 18-27 degC)
    inlet_max_c: float
    setpoint_min_c: float  # the supply-air setpoint itself stays within these bounds
    setpoint_max_c: float
    max_step_c: float  # largest change of one action
    max_change_c_per_h: float  # changes of the last hour, summed in either direction, the new one included
    revert_timeout_s: float  # a change not verified (read back, inlets in range) within this is reverted
    inlet_margin_c: float = 1.5  # the loop aims this far below inlet_max_c, for load that rises before it acts again
    energy_price_per_kwh: float = 0.15  # what advice counts a kWh at when the site file has no tariff_by_hour


#: What efficiency advice assumes when a policy has no cooling section: ASHRAE's recommended inlet range
#: (18-27 degC), the shipped file's setpoint bounds, ramps and revert timeout. Never used to act.
ASHRAE_COOLING = CoolingLimits(inlet_min_c=18.0, inlet_max_c=27.0, setpoint_min_c=16.0, setpoint_max_c=25.0,
                               max_step_c=1.0, max_change_c_per_h=3.0, revert_timeout_s=1800.0)


@dataclass(frozen=True)
class GpuLimits:
    """NVML settings on a partition's GPUs: how low they may go and how long they may last."""

    min_sm_clock_mhz: int  # a gpu_clock_lock never locks the SM clock below this
    min_power_limit_w: float  # a gpu_power_limit never sets a GPU's limit below this
    max_duration_s: float  # each lasts at most this long, then the GPUs' defaults are restored


@dataclass(frozen=True)
class LeverCosts:
    """What the peak planner's levers cost, in one currency (``models.levers``), and their daily budgets."""

    demand_charge_per_kw_month: float  # a kW off a month's billed peak saves this (other periods pro rata)
    battery_wear_per_kwh: float  # per kWh the battery discharges
    gpu_hour: float  # a GPU-hour of training lost or deferred
    hold_restart_share: float  # a held job loses this share again on top (checkpoint, requeue, warm-up)
    llm_shift_per_kwh: float  # the serving SLO risk of a shift to the small model, per kWh it saves
    llm_cap_per_kwh: float  # the serving SLO risk of a concurrency cap, per kWh it saves
    max_hours_per_day: Mapping[str, float] = field(default_factory=dict)  # a lever not listed: no limit


@dataclass(frozen=True)
class Policy:
    version: int
    approval_expiry_s: float
    pcs: PcsLimits
    slurm: SlurmLimits
    rules: Mapping[str, KindRule] = field(default_factory=dict)
    max_state_age_s: float = 300.0  # older ESS telemetry is not trusted for a decision
    name: str = ""
    llm: LlmLimits | None = None  # policy version 3; None: llm_* actions are rejected
    cooling: CoolingLimits | None = None  # policy version 4; None: cooling_setpoint actions are rejected
    gpu: GpuLimits | None = None  # policy version 4; None: gpu_* actions are rejected
    levers: LeverCosts | None = None  # policy version 4; None: the peak planner uses the battery alone

    def rule(self, kind: str) -> KindRule:
        """A kind the policy does not list is advise-only: nothing acts unless the policy says so."""
        return self.rules.get(kind, KindRule())

    def mode(self, kind: str) -> str:
        return self.rule(kind).mode

    @property
    def label(self) -> str:
        """What verdicts carry as ``policy_version``."""
        return f"v{self.version}" + (f" {self.name}" if self.name else "")


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def schema_problems(doc: Any) -> list[str]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(POLICY_SCHEMA)
    problems = []
    for error in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        path = ".".join(str(p) for p in error.absolute_path) or "(root)"
        problems.append(f"{path}: {error.message}")
    return problems


def parse_policy(doc: Any) -> Policy:
    """Validate a loaded policy document and build the ``Policy``; raises ``PolicyError``."""
    if not isinstance(doc, dict):
        raise PolicyError([f"(root): expected a mapping, got {type(doc).__name__}"])
    if "version" in doc and doc["version"] not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS[:-1]) + f" and {READABLE_VERSIONS[-1]}"
        raise PolicyError([f"version: this opsloop reads policy versions {readable}, the file has {doc['version']!r}"])
    problems = schema_problems(doc)
    if problems:
        raise PolicyError(problems)
    slurm = doc["slurm"]
    both = sorted(set(slurm["touchable_partitions"]) & set(slurm["protected_partitions"]))
    if both:
        problems.append(f"slurm: partition(s) {', '.join(both)} are both touchable and protected")
    window = slurm.get("budget_window_s")
    if window is not None and doc["version"] < 2:
        problems.append("slurm.budget_window_s: needs policy version 2")
    elif window and window < slurm["max_hold_s"]:
        problems.append(f"slurm: budget_window_s {window:g} is shorter than max_hold_s {slurm['max_hold_s']:g}; "
                        "the budget would forget actions whose holds are still in force")
    if "llm" in doc and doc["version"] < 3:
        problems.append("llm: needs policy version 3")
    problems += _cooling_problems(doc)
    if "gpu" in doc and doc["version"] < 4:
        problems.append("gpu: needs policy version 4")
    if "levers" in doc and doc["version"] < 4:
        problems.append("levers: needs policy version 4")
    pcs = doc["pcs"]
    if pcs.get("max_soc_pct", 100.0) <= pcs["reserve_soc_pct"]:
        problems.append("pcs: max_soc_pct must be above reserve_soc_pct")
    rules = {}
    for kind, rule in doc["actions"].items():
        windows = []
        for i, w in enumerate(rule.get("windows", [])):
            start, end = _minutes(w["start"]), _minutes(w["end"])
            if end <= start:
                problems.append(f"actions.{kind}.windows.{i}: end {w['end']} is not after start {w['start']}")
            windows.append(Window(tuple(w.get("days", DAYS)), start, end))
        rules[kind] = KindRule(rule["mode"], tuple(windows))
    if problems:
        raise PolicyError(problems)
    return Policy(
        version=doc["version"], approval_expiry_s=float(doc["approval_expiry_s"]),
        pcs=PcsLimits(**{k: float(v) for k, v in pcs.items()}),
        slurm=SlurmLimits(touchable_partitions=tuple(slurm["touchable_partitions"]),
                          protected_partitions=tuple(slurm["protected_partitions"]),
                          max_jobs_per_event=int(slurm["max_jobs_per_event"]),
                          max_gpu_hours_per_event=float(slurm["max_gpu_hours_per_event"]),
                          max_hold_s=float(slurm["max_hold_s"]),
                          kw_per_gpu=float(slurm.get("kw_per_gpu", 0.7)),
                          budget_window_s=float(slurm.get("budget_window_s", 0.0))),
        rules=rules, max_state_age_s=float(doc.get("max_state_age_s", 300.0)), name=doc.get("name", ""),
        llm=_llm_limits(doc.get("llm")),
        cooling=None if "cooling" not in doc else CoolingLimits(**{k: float(v) for k, v in doc["cooling"].items()}),
        gpu=GpuLimits(int(doc["gpu"]["min_sm_clock_mhz"]), float(doc["gpu"]["min_power_limit_w"]),
                      float(doc["gpu"]["max_duration_s"])) if "gpu" in doc else None,
        levers=_lever_costs(doc.get("levers")),
    )


def _cooling_problems(doc: Mapping) -> list[str]:
    cooling = doc.get("cooling")
    if cooling is None:
        return []
    if doc["version"] < 4:
        return ["cooling: needs policy version 4"]
    problems = []
    if cooling["inlet_max_c"] <= cooling["inlet_min_c"]:
        problems.append("cooling: inlet_max_c must be above inlet_min_c")
    if cooling["setpoint_max_c"] <= cooling["setpoint_min_c"]:
        problems.append("cooling: setpoint_max_c must be above setpoint_min_c")
    if cooling["setpoint_max_c"] > cooling["inlet_max_c"]:
        problems.append("cooling: setpoint_max_c above inlet_max_c would aim the supply air past the inlet limit")
    if cooling["max_change_c_per_h"] < cooling["max_step_c"]:
        problems.append("cooling: max_change_c_per_h is smaller than one max_step_c")
    return problems


def _lever_costs(section: Mapping | None) -> LeverCosts | None:
    if section is None:
        return None
    return LeverCosts(**{k: float(v) for k, v in section.items() if k != "max_hours_per_day"},
                      max_hours_per_day={k: float(v) for k, v in section["max_hours_per_day"].items()})


def _llm_limits(section: Mapping | None) -> LlmLimits | None:
    if section is None:
        return None
    return LlmLimits(max_shift_pct=float(section["max_shift_pct"]), min_maxconn=int(section["min_maxconn"]),
                     max_duration_s=float(section["max_duration_s"]), slo_ttfb_s=float(section["slo_ttfb_s"]),
                     slo_queue=int(section["slo_queue"]))


def load_policy(path: Path | str) -> Policy:
    """Read and validate a policy file; raises ``PolicyError`` naming the file and every problem."""
    path = Path(path)
    try:
        doc = strict_yaml.load(path.read_text())
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([f"{path}: not valid YAML: {exc}"]) from None
    try:
        return parse_policy(doc)
    except PolicyError as exc:
        raise PolicyError([f"{path}: {p}" for p in exc.problems]) from None
