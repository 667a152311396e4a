"""The guard: a pure decision on one proposed action, given the plant's state, the policy and the time.

``decide(action, state, policy, now_ms)`` returns a ``Decision``: ``approved``,
``needs_approval`` or ``rejected``, always with the reasons: a sentence for an
operator and, beside it, a machine-readable code from ``REASON_CODES`` (so
verdicts can be counted by reason, as Alertmanager does). Every limit is
checked first; only an action within every limit gets the mode of its kind
(auto → approved, approve → needs_approval until an operator approves it,
advise → rejected as "advice only"). ``operator`` marks an operator's approval:
the limits are checked again with the state at that moment.

PCS actions (``setpoint_kw`` > 0 discharges, < 0 charges): power within
``max_kw``, the step from the present power within the ramp rate, duration
(expiry - now) within ``max_duration_s``, state of health above the minimum,
and the energy of the whole duration keeps the state of charge between the
reserve and ``max_soc_pct``. ESS telemetry must be fresh. A grid-limit action
(``params.control`` = ``grid_limit``: the PCS follows the site meter to hold
``params.grid_limit_kw``) has its ``setpoint_kw`` as the most it may discharge
(or charge): power, duration and state of charge are checked on that worst case,
the ramp on the power it expects (``params.expected_kw``), as the PCS then moves
with the load. Slurm actions declare
the partitions they may touch (``params["partitions"]``); none may be protected
and all must be touchable; jobs per event, hold time and declared GPU-hours are
bounded. The Slurm sink enforces the same limits again on the jobs it picks,
within what the action declared (``action_limits``).

Slurm budgets across actions: with ``budget_window_s`` > 0, the jobs and
GPU-hours charged to the shedding actions approved for the same site in the
last ``budget_window_s`` (``PlantState.slurm_spent``, kept by the caller) count
together with this action's against the per-event limits. The action's own
earlier record never counts (an operator's approval re-checks it). Releases and
resumes spend nothing and give nothing back: the budget bounds the disruption
approved per window, and an early release does not undo a requeue or the time
a job already lost.

Early undos: a ``slurm_release`` / ``slurm_resume`` naming ``params.undo_of`` is
rejected unless it undoes a shedding action the guard approved, of the kind it
undoes, proposed by the same proposer for the same target and site
(``undo_problems``; ``PlantState.approved`` holds the guard's approved actions).
LLM-serving actions (``llm_shift``, ``llm_cap``; ``models.llm_lever``) need the policy's ``llm``
section: a shift names the balancer's backend (``target``) and moves ``params.shift_pct`` % of the
large server's traffic (``params.large``, ``params.small``, default ``large`` and ``small``) within
``max_shift_pct``; a cap names ``params.servers`` and ``params.maxconn``, at least ``min_maxconn``;
both last at most ``max_duration_s``. One shift and one cap per backend at a time
(``PlantState.llm_holding``: the LLM actions the guard approved that have not expired), so each
revert restores what was there before it.

Cooling setpoint actions (``cooling_setpoint``; models/cooling.py) need the policy's ``cooling``
section and fresh readings of the plant (``PlantState.cooling``: the setpoint's present value and the
rack inlets): ``params.setpoint_c`` within the setpoint bounds, the step within ``max_step_c``, the
last hour's changes and this one within ``max_change_c_per_h``, every inlet predicted to stay inside
``[inlet_min_c, inlet_max_c]`` (each moves with the supply air, degree for degree), and the action no
longer than ``revert_timeout_s``.

``slurm_shrink`` releases nodes from one running job (``job_ids``: exactly one) down to
``params.nodes``; the proposal says what it read of the job (``params.job_nodes``, its node count,
and ``params.comment``, its Slurm comment). Only a job declaring ``opsloop:dp`` is shrunk and never
below its ``min`` (``models.parallelism``); ``ep``/``tp``/``pp`` jobs are refused (``not_elastic``).
It is a shedding Slurm action: partitions, hold time and the budget apply, ``params.gpus`` being the
GPUs it releases. The Slurm sink checks the job's live comment and node count again before acting.
A shrink may name no job instead (``job_ids`` empty, no ``nodes``/``job_nodes``/``comment``): "release
up to ``params.gpus`` GPUs from opsloop:dp jobs in ``params.partitions``"; the guard checks the
partitions, hold time and budget on those GPUs, and the sink picks the jobs from Slurm when it acts
(``parallelism.choose_releases``: declared dp, never below ``min``).

GPU actions (``gpu_clock_lock``: ``params.sm_mhz``; ``gpu_power_limit``: ``params.watts``) act on
the GPUs of one partition (``params.partition``, touchable and not protected) and need the policy's
``gpu`` section: no lower than its floors, no longer than its ``max_duration_s``.

``feedback_problem`` is the guard's pure check on an operator's answer: signed by
the NOC, for an action waiting now (never kept for later), given after it was
proposed and before the request lapsed, the first answer only.

>>> from opsloop.config.policy import Policy, PcsLimits, SlurmLimits, KindRule
>>> policy = Policy(1, 600, PcsLimits(4000, 2500, 15, 80, 3600, 95),
...                 SlurmLimits(("batch",), ("inference",), 10, 40, 3600), {"pcs_discharge": KindRule("auto")})
>>> from opsloop.models.battery import Battery
>>> ess = EssState(soc_pct=80, soh_pct=97, power_kw=0, battery=Battery(10_000, 5000, 5000), ts_ms=0)
>>> action = {"action_id": "a1", "kind": "pcs_discharge", "setpoint_kw": 2000.0, "expires_ms": 1_800_000,
...           "job_ids": [], "params": {}}
>>> approved = decide(action, PlantState(ess), policy, now_ms=0)
>>> approved.verdict, approved.reason_codes
('approved', ('within_limits',))
>>> approved.reasons
('within every limit; pcs_discharge runs in auto mode',)
>>> too_big = decide({**action, "setpoint_kw": 4500.0}, PlantState(ess), policy, now_ms=0)
>>> too_big.reasons
('setpoint 4500 kW exceeds the policy limit of 4000 kW', 'step of 4500 kW from 0 kW exceeds the ramp limit of 2500 kW')
>>> too_big.reason_codes
('over_power_limit', 'over_ramp_limit')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, NamedTuple

from opsloop.config.policy import CoolingLimits, LlmLimits, Policy, SlurmLimits
from opsloop.models import parallelism
from opsloop.models.battery import Battery
from opsloop.models.cooling import KIND as COOLING_KIND
from opsloop.models.cooling import CoolingState

APPROVED, NEEDS_APPROVAL, REJECTED = "approved", "needs_approval", "rejected"
PCS_KINDS = ("pcs_discharge", "pcs_charge", "pcs_idle")
SHRINK = "slurm_shrink"
SLURM_SHEDDING = ("slurm_hold", "slurm_requeue", "slurm_suspend", SHRINK)  # the ones that take capacity away
SLURM_UNDO = ("slurm_release", "slurm_resume")
LLM_KINDS = ("llm_shift", "llm_cap")
GPU_KINDS = ("gpu_clock_lock", "gpu_power_limit")

# Reason codes: one per reason sentence, stable, so verdicts can be counted by why.
# Within every limit, the kind's mode decides:
WITHIN_LIMITS = "within_limits"  # approved: the kind runs in auto mode
OPERATOR_APPROVED = "operator_approved"  # approved: an operator approved it and it is still within every limit
AWAITS_OPERATOR = "needs_approval"  # the kind needs an operator's approval
ADVISE_ONLY = "advise_only"  # rejected: the kind is shown, never executed
# Decided by the agent on an operator's answer or a failed verification (operator_rejection, revert_approval):
OPERATOR_REJECTED = "operator_rejected"
REVERT = "revert_failed_verification"  # approved: the guard's own pcs_idle after a failed verification
# Problems (each rejects):
EXPIRED = "expired"
UNKNOWN_KIND = "unknown_kind"
OUTSIDE_WINDOW = "outside_window"
INVALID_SETPOINT = "invalid_setpoint"
OVER_POWER_LIMIT = "over_power_limit"
OVER_MAX_DURATION = "over_max_duration"
NO_ESS_STATE = "no_ess_state"
STALE_ESS_STATE = "stale_ess_state"
INVALID_ESS_STATE = "invalid_ess_state"
OVER_RAMP_LIMIT = "over_ramp_limit"
SOH_BELOW_MINIMUM = "soh_below_minimum"
SOC_BELOW_RESERVE = "soc_below_reserve"
SOC_ABOVE_MAXIMUM = "soc_above_maximum"
NO_PARTITIONS = "no_partitions"
PROTECTED_PARTITION = "protected_partition"
UNTOUCHABLE_PARTITION = "untouchable_partition"
INVALID_PARAMS = "invalid_params"
TOO_MANY_JOBS = "too_many_jobs"
OVER_MAX_HOLD = "over_max_hold"
OVER_GPU_HOURS = "over_gpu_hours"
OVER_BUDGET = "over_budget"  # this action and the window's approvals together exceed a per-event limit
UNDO_NOT_APPROVED = "undo_not_approved"  # params.undo_of names no action the guard approved
UNDO_NOT_OWNER = "undo_not_owner"  # the action undone was proposed by another proposer, or for another target
UNDO_KIND_MISMATCH = "undo_kind_mismatch"  # a release undoes a hold or requeue, a resume a suspend; nothing else
NO_LLM_POLICY = "no_llm_policy"  # the policy has no llm section: the LLM lever is off
OVER_SHIFT_LIMIT = "over_shift_limit"  # llm_shift moves more of the large model's traffic than the policy allows
UNDER_MIN_MAXCONN = "under_min_maxconn"  # llm_cap leaves a server fewer concurrent requests than the policy allows
LLM_LEVER_BUSY = "llm_lever_busy"  # an approved action of the same kind still holds on the same backend
OVER_MAX_WINDOW = "over_max_window"  # a maintenance reservation longer than MAX_MAINTENANCE_S
NO_COOLING_POLICY = "no_cooling_policy"  # the policy has no cooling section: the setpoint lever is off
NO_COOLING_STATE = "no_cooling_state"  # no reading of the setpoint and inlets yet
STALE_COOLING_STATE = "stale_cooling_state"
OUT_OF_SETPOINT_RANGE = "out_of_setpoint_range"  # outside setpoint_min_c..setpoint_max_c
OVER_HOURLY_RAMP = "over_hourly_ramp"  # the last hour's changes and this one exceed max_change_c_per_h
INLET_LIMIT = "inlet_limit"  # an inlet would leave the policy's range (ASHRAE recommended)
NO_GPU_POLICY = "no_gpu_policy"  # the policy has no gpu section: the NVML lever is off
UNDER_MIN_CLOCK = "under_min_clock"  # gpu_clock_lock below the policy's SM clock floor
UNDER_MIN_POWER_LIMIT = "under_min_power_limit"  # gpu_power_limit below the policy's floor
# slurm_shrink, decided in models/parallelism.py: parallelism_not_declared, not_elastic, below_min_replicas,
# nothing_to_release; and by the Slurm sink for a shrink naming a partition: no_elastic_job, node_over_gpus
REASON_CODES = parallelism.CODES | frozenset({NO_COOLING_POLICY, NO_COOLING_STATE, STALE_COOLING_STATE,
    OUT_OF_SETPOINT_RANGE, OVER_HOURLY_RAMP, INLET_LIMIT, NO_GPU_POLICY, UNDER_MIN_CLOCK, UNDER_MIN_POWER_LIMIT,
    OVER_MAX_WINDOW, NO_LLM_POLICY, OVER_SHIFT_LIMIT, UNDER_MIN_MAXCONN, LLM_LEVER_BUSY,
    WITHIN_LIMITS, OPERATOR_APPROVED, AWAITS_OPERATOR, ADVISE_ONLY, OPERATOR_REJECTED, REVERT, EXPIRED, UNKNOWN_KIND,
    OUTSIDE_WINDOW, INVALID_SETPOINT, OVER_POWER_LIMIT, OVER_MAX_DURATION, NO_ESS_STATE, STALE_ESS_STATE,
    INVALID_ESS_STATE, OVER_RAMP_LIMIT, SOH_BELOW_MINIMUM, SOC_BELOW_RESERVE, SOC_ABOVE_MAXIMUM, NO_PARTITIONS,
    PROTECTED_PARTITION, UNTOUCHABLE_PARTITION, INVALID_PARAMS, TOO_MANY_JOBS, OVER_MAX_HOLD, OVER_GPU_HOURS,
    OVER_BUDGET, UNDO_NOT_APPROVED, UNDO_NOT_OWNER, UNDO_KIND_MISMATCH})

# Why the guard ignores an operator's answer (logged and counted; no verdict changes):
FEEDBACK_UNAUTHENTIC = "feedback_unauthentic"  # not signed with the NOC's key
FEEDBACK_UNKNOWN_ACTION = "feedback_unknown_action"  # no such action yet: never kept for later
FEEDBACK_REPLAY = "feedback_replay"  # the action was already answered (or decided without asking)
FEEDBACK_BEFORE_ACTION = "feedback_before_action"  # given before the action was proposed
FEEDBACK_LATE = "feedback_late"  # after the approval request lapsed or the action expired
FEEDBACK_CODES = frozenset({FEEDBACK_UNAUTHENTIC, FEEDBACK_UNKNOWN_ACTION, FEEDBACK_REPLAY, FEEDBACK_BEFORE_ACTION,
                            FEEDBACK_LATE})
MAINTENANCE = "slurm_reserve"  # reserves nodes for a window ahead: it displaces no running job
MAX_MAINTENANCE_S = 12 * 3600  # one replacement, burn-in included; longer work is planned by people
UNDOES = {"slurm_release": ("slurm_hold", "slurm_requeue"), "slurm_resume": ("slurm_suspend",)}


class Reason(NamedTuple):
    """Why, twice: a code to count by and a sentence for an operator."""

    code: str
    text: str


@dataclass(frozen=True)
class EssState:
    """What the guard knows of the battery: the latest telemetry and its ratings (from the site's ESS entry)."""

    soc_pct: float
    soh_pct: float
    power_kw: float  # present PCS power, + discharge
    battery: Battery  # capacity and efficiency; the telemetry's state of health replaces the nameplate's
    ts_ms: int  # event time of the telemetry
    last_change_ms: int | None = None  # when the setpoint last changed (ramp); None: long ago

    def soc_after(self, setpoint_kw: float, duration_s: float) -> float:
        """State of charge after holding ``setpoint_kw`` for ``duration_s``, unbounded.

        >>> EssState(50, 100, 0, Battery(1000, 500, 500, round_trip_efficiency=1.0), 0).soc_after(500, 3600)
        0.0
        """
        return replace(self.battery, soh_pct=self.soh_pct).soc_after(self.soc_pct, setpoint_kw, duration_s)


@dataclass(frozen=True)
class SlurmSpend:
    """A shedding Slurm action the guard approved, and what it was charged against the budget."""

    action_id: str
    site: str
    approved_ms: int
    jobs: int
    gpu_hours: float


@dataclass(frozen=True)
class PlantState:
    ess: EssState | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    slurm_spent: tuple[SlurmSpend, ...] = ()  # recent approvals; the caller may pass more than the window
    approved: Mapping[str, Mapping] = field(default_factory=dict)  # actions the guard approved, by id (at least
    # the one a release or resume names in params.undo_of)
    llm_holding: tuple[Mapping, ...] = ()  # approved llm_* actions not yet expired (the caller may pass more)
    cooling: CoolingState | None = None  # the setpoint's present value, the inlets, the changes of the last hour


@dataclass(frozen=True)
class Decision:
    verdict: str
    reasons: tuple[str, ...]  # sentences for an operator
    reason_codes: tuple[str, ...]  # one code from REASON_CODES per sentence, in the same order

    @classmethod
    def of(cls, verdict: str, reasons: Iterable[Reason]) -> "Decision":
        reasons = tuple(reasons)
        return cls(verdict, tuple(r.text for r in reasons), tuple(r.code for r in reasons))


def ramp_allowance_kw(ess: EssState, ramp_kw_per_min: float, now_ms: int) -> float:
    """Largest setpoint step allowed now: the ramp rate times the minutes since the last change (at least one)."""
    minutes = 1.0 if ess.last_change_ms is None else max(1.0, (now_ms - ess.last_change_ms) / 60_000)
    return ramp_kw_per_min * minutes


def seconds_to_expiry(action: Mapping, now_ms: int) -> float:
    """How long an action lasts if executed now: until its ``expires_ms``."""
    return (action["expires_ms"] - now_ms) / 1000


def duration_problems(duration_s: float, max_duration_s: float) -> list[Reason]:
    """``over_max_duration`` when an action lasts longer than its policy section's ``max_duration_s``."""
    if duration_s > max_duration_s:
        return [Reason(OVER_MAX_DURATION, f"lasts {duration_s:g} s, longer than the policy's {max_duration_s:g} s")]
    return []


def pcs_problems(action: Mapping, ess: EssState | None, policy: Policy, now_ms: int) -> list[Reason]:
    kind, limits = action["kind"], policy.pcs
    setpoint = action.get("setpoint_kw")
    if kind == "pcs_idle":
        return [] if setpoint in (None, 0, 0.0) else [
            Reason(INVALID_SETPOINT, f"pcs_idle must have setpoint 0, not {setpoint:g} kW")]
    if setpoint is None or not math.isfinite(setpoint):
        return [Reason(INVALID_SETPOINT, f"{kind} needs a finite setpoint_kw, got {setpoint!r}")]
    if kind == "pcs_discharge" and setpoint <= 0:
        return [Reason(INVALID_SETPOINT, f"pcs_discharge needs a positive setpoint, got {setpoint:g} kW")]
    if kind == "pcs_charge" and setpoint >= 0:
        return [Reason(INVALID_SETPOINT, f"pcs_charge needs a negative setpoint, got {setpoint:g} kW")]
    problems, ramp_from = [], setpoint
    params = action.get("params") or {}
    if params.get("control") == "grid_limit":
        try:
            limit, ramp_from = float(params["grid_limit_kw"]), float(params.get("expected_kw", setpoint))
        except (KeyError, TypeError, ValueError):
            limit = math.nan
        if not (math.isfinite(limit) and math.isfinite(ramp_from)):
            return [Reason(INVALID_SETPOINT, f"a grid-limit {kind} needs finite params grid_limit_kw and expected_kw, "
                                             f"got {params.get('grid_limit_kw')!r}, {params.get('expected_kw')!r}")]
    if abs(setpoint) > limits.max_kw:
        problems.append(Reason(OVER_POWER_LIMIT, f"setpoint {abs(setpoint):g} kW exceeds the policy limit of "
                                                 f"{limits.max_kw:g} kW"))
    duration_s = seconds_to_expiry(action, now_ms)
    problems += duration_problems(duration_s, limits.max_duration_s)
    if ess is None:
        return problems + [Reason(NO_ESS_STATE, "no ESS telemetry yet: state of charge and health unknown")]
    age_s = (now_ms - ess.ts_ms) / 1000
    if age_s > policy.max_state_age_s:
        problems.append(Reason(STALE_ESS_STATE,
                               f"ESS telemetry is {age_s:g} s old, older than {policy.max_state_age_s:g} s"))
    if not all(math.isfinite(v) for v in (ess.soc_pct, ess.soh_pct, ess.power_kw)):
        return problems + [Reason(INVALID_ESS_STATE, "ESS telemetry has non-finite values")]
    step, allowance = abs(ramp_from - ess.power_kw), ramp_allowance_kw(ess, limits.ramp_kw_per_min, now_ms)
    if step > allowance:
        problems.append(Reason(OVER_RAMP_LIMIT, f"step of {step:g} kW from {ess.power_kw:g} kW exceeds the ramp "
                                                f"limit of {allowance:g} kW"))
    if ess.soh_pct < limits.min_soh_pct:
        problems.append(Reason(SOH_BELOW_MINIMUM, f"state of health {ess.soh_pct:g}% is below the policy minimum "
                                                  f"of {limits.min_soh_pct:g}%"))
    end_soc = ess.soc_after(setpoint, max(duration_s, 0.0))
    if setpoint > 0 and end_soc < limits.reserve_soc_pct:
        problems.append(Reason(SOC_BELOW_RESERVE, f"discharging {setpoint:g} kW for {duration_s:g} s takes the state "
                                                  f"of charge from {ess.soc_pct:g}% to {end_soc:.1f}%, below the "
                                                  f"{limits.reserve_soc_pct:g}% reserve"))
    if setpoint < 0 and end_soc > limits.max_soc_pct:
        problems.append(Reason(SOC_ABOVE_MAXIMUM, f"charging {-setpoint:g} kW for {duration_s:g} s takes the state "
                                                  f"of charge from {ess.soc_pct:g}% to {end_soc:.1f}%, above the "
                                                  f"{limits.max_soc_pct:g}% maximum"))
    return problems


def declared_partitions(action: Mapping) -> list[str]:
    return [p.strip() for p in action.get("params", {}).get("partitions", "").split(",") if p.strip()]


def slurm_charge(action: Mapping, limits: SlurmLimits, now_ms: int) -> tuple[int, float]:
    """Jobs and GPU-hours a shedding action may use at most; raises ``ValueError`` on non-numeric params.

    What it declares (``params.max_jobs`` or its ``job_ids``; ``params.gpus`` over the hold), or
    the per-event limit where it declares nothing: the Slurm sink may use that much.

    >>> limits = SlurmLimits(("batch",), (), max_jobs_per_event=20, max_gpu_hours_per_event=256, max_hold_s=3600)
    >>> act = {"kind": "slurm_hold", "expires_ms": 1_800_000, "job_ids": [], "params": {"max_jobs": "4", "gpus": "8"}}
    >>> slurm_charge(act, limits, now_ms=0)
    (4, 4.0)
    >>> slurm_charge({**act, "params": {}}, limits, now_ms=0)
    (20, 256.0)
    """
    params = action.get("params", {})
    if "gpus" not in params:
        return declared_jobs(action, limits), float(limits.max_gpu_hours_per_event)
    return declared_jobs(action, limits), declared_gpu_hours(params, seconds_to_expiry(action, now_ms))


def declared_gpu_hours(params: Mapping, hold_s: float) -> float:
    """``params.gpus`` over the hold (a hold already over counts nothing)."""
    return float(params["gpus"]) * max(hold_s, 0) / 3600


def declared_jobs(action: Mapping, limits: SlurmLimits) -> int:
    """``params.max_jobs``, the number of ``job_ids`` if more, or the per-event limit if neither is given."""
    job_ids = action.get("job_ids", [])
    return max(int(action.get("params", {}).get("max_jobs", len(job_ids) or limits.max_jobs_per_event)), len(job_ids))


def action_limits(action: Mapping, limits: SlurmLimits, hold_s: float) -> SlurmLimits:
    """The policy's per-event limits narrowed to what ``action`` declared: the sink stays within its charge.

    >>> limits = SlurmLimits(("batch",), (), max_jobs_per_event=20, max_gpu_hours_per_event=256, max_hold_s=3600)
    >>> narrowed = action_limits({"job_ids": [], "params": {"max_jobs": "4", "gpus": "8"}}, limits, hold_s=1800)
    >>> narrowed.max_jobs_per_event, round(narrowed.max_gpu_hours_per_event, 6)
    (4, 4.0)
    """
    params = action.get("params", {})
    jobs = min(limits.max_jobs_per_event, declared_jobs(action, limits))
    gpu_hours = limits.max_gpu_hours_per_event
    if "gpus" in params:  # a hair of slack: job GPUs summing exactly to the declared count must fit
        gpu_hours = min(gpu_hours, declared_gpu_hours(params, hold_s) * (1 + 1e-9))
    return replace(limits, max_jobs_per_event=jobs, max_gpu_hours_per_event=gpu_hours)


def recent_spend(spent: Iterable[SlurmSpend], site: str, action_id: str, window_s: float,
                 now_ms: int) -> tuple[int, float]:
    """Jobs and GPU-hours approved for ``site`` in the last ``window_s`` (exclusive of its far end), but not
    those of ``action_id`` itself.

    >>> spent = [SlurmSpend("a", "s1", 0, 5, 1.0), SlurmSpend("b", "s1", 3_000_000, 7, 2.0),
    ...          SlurmSpend("c", "s2", 3_000_000, 9, 4.0)]
    >>> recent_spend(spent, "s1", "x", 3600, now_ms=3_600_000)  # "a" is exactly one window old: out
    (7, 2.0)
    """
    window_start_ms = now_ms - window_s * 1000
    recent = [s for s in spent if s.site == site and s.action_id != action_id and s.approved_ms > window_start_ms]
    return sum(s.jobs for s in recent), sum(s.gpu_hours for s in recent)


def budget_problems(action: Mapping, jobs: int, gpu_hours: float, spent: Iterable[SlurmSpend], limits: SlurmLimits,
                    now_ms: int) -> list[Reason]:
    """What this action's charge and the window's approvals together spend beyond the per-event limits."""
    window = limits.budget_window_s
    if window <= 0:
        return []
    spent_jobs, spent_gpu_hours = recent_spend(spent, action.get("site", ""), action["action_id"], window, now_ms)
    problems = []
    if spent_jobs and jobs + spent_jobs > limits.max_jobs_per_event:
        problems.append(Reason(OVER_BUDGET, f"affects up to {jobs} jobs; with the {spent_jobs} approved in the last "
                                            f"{window:g} s that is {jobs + spent_jobs}, more than the policy's "
                                            f"{limits.max_jobs_per_event} per {window:g} s"))
    if spent_gpu_hours and gpu_hours + spent_gpu_hours > limits.max_gpu_hours_per_event:
        problems.append(Reason(OVER_BUDGET, f"{gpu_hours:g} GPU-hours; with the {spent_gpu_hours:g} approved in the "
                                            f"last {window:g} s that is {gpu_hours + spent_gpu_hours:g}, more than the "
                                            f"policy's {limits.max_gpu_hours_per_event:g} per {window:g} s"))
    return problems


def slurm_problems(action: Mapping, policy: Policy, now_ms: int, spent: Iterable[SlurmSpend] = ()) -> list[Reason]:
    limits = policy.slurm
    partitions = declared_partitions(action)
    if not partitions:
        return [Reason(NO_PARTITIONS, "a Slurm action must list the partitions it may touch (params.partitions)")]
    problems = []
    protected = [p for p in partitions if p in limits.protected_partitions]
    if protected:
        problems.append(Reason(PROTECTED_PARTITION, f"partition(s) {', '.join(protected)} are protected and never "
                                                    f"touched"))
    untouchable = [p for p in partitions if p not in limits.touchable_partitions and p not in protected]
    if untouchable:
        problems.append(Reason(UNTOUCHABLE_PARTITION, f"partition(s) {', '.join(untouchable)} are not in the "
                                                      f"policy's touchable partitions"))
    if action["kind"] in SLURM_UNDO:
        return problems  # giving capacity back needs no budget
    try:
        jobs, gpu_hours = slurm_charge(action, limits, now_ms)
    except ValueError:
        return problems + [Reason(INVALID_PARAMS, "params.max_jobs and params.gpus must be numbers")]
    if jobs > limits.max_jobs_per_event:
        problems.append(Reason(TOO_MANY_JOBS, f"affects up to {jobs} jobs, more than the policy's "
                                              f"{limits.max_jobs_per_event} per event"))
    hold_s = seconds_to_expiry(action, now_ms)
    if hold_s > limits.max_hold_s:
        problems.append(Reason(OVER_MAX_HOLD, f"holds for {hold_s:g} s, longer than the policy's "
                                              f"{limits.max_hold_s:g} s"))
    if gpu_hours < 0:
        problems.append(Reason(INVALID_PARAMS, "params.gpus must not be negative"))
    elif not math.isfinite(gpu_hours) or gpu_hours > limits.max_gpu_hours_per_event:
        problems.append(Reason(OVER_GPU_HOURS, f"{gpu_hours:g} GPU-hours exceed the policy's "
                                               f"{limits.max_gpu_hours_per_event:g} per event"))
    if not problems:
        problems = budget_problems(action, jobs, gpu_hours, spent, limits, now_ms)
    return problems


def llm_servers(action: Mapping) -> list[str]:
    """The servers an action names: a shift's large and small one, a cap's ``params.servers``."""
    params = action.get("params") or {}
    if action["kind"] == "llm_shift":
        return [params.get("large", "large"), params.get("small", "small")]
    return [s.strip() for s in params.get("servers", "").split(",") if s.strip()]


def llm_problems(action: Mapping, limits: LlmLimits | None, now_ms: int, holding: Iterable[Mapping] = ()) -> list[Reason]:
    """What is wrong with an ``llm_shift`` or ``llm_cap`` under the policy's ``llm`` limits.

    >>> limits = LlmLimits(max_shift_pct=60, min_maxconn=2, max_duration_s=3600, slo_ttfb_s=2, slo_queue=8)
    >>> shift = {"action_id": "s1", "kind": "llm_shift", "target": "llm", "expires_ms": 600_000,
    ...          "params": {"shift_pct": "50"}}
    >>> llm_problems(shift, limits, now_ms=0)
    []
    >>> [print(r.code, r.text) for r in llm_problems({**shift, "params": {"shift_pct": "80"}}, limits, now_ms=0)]
    over_shift_limit shifts 80% of the large model's traffic, more than the policy's 60%
    [None]
    >>> [r.code for r in llm_problems(shift, limits, 0, holding=[{**shift, "action_id": "s0"}])]
    ['llm_lever_busy']
    """
    if limits is None:
        return [Reason(NO_LLM_POLICY, "the policy has no llm section: LLM-serving actions are off")]
    params, kind, problems = action.get("params") or {}, action["kind"], []
    problems += duration_problems(seconds_to_expiry(action, now_ms), limits.max_duration_s)
    servers = llm_servers(action)
    if kind == "llm_shift":
        try:
            pct = float(params["shift_pct"])
        except (KeyError, TypeError, ValueError):
            pct = math.nan
        if not 0 < pct <= 100:
            problems.append(Reason(INVALID_PARAMS, f"llm_shift needs params.shift_pct above 0 and at most 100, got "
                                                   f"{str(params.get('shift_pct'))[:40]!r}"))
        elif pct > limits.max_shift_pct:
            problems.append(Reason(OVER_SHIFT_LIMIT, f"shifts {pct:g}% of the large model's traffic, more than the "
                                                     f"policy's {limits.max_shift_pct:g}%"))
        if servers[0] == servers[1]:
            problems.append(Reason(INVALID_PARAMS, f"llm_shift moves traffic between two servers, not from "
                                                   f"{servers[0][:40]!r} to itself"))
    else:
        try:
            maxconn = int(params["maxconn"])
        except (KeyError, TypeError, ValueError):
            maxconn = None
        if maxconn is None or not servers:
            problems.append(Reason(INVALID_PARAMS, "llm_cap needs params.servers and an integer params.maxconn"))
        elif maxconn < limits.min_maxconn:
            problems.append(Reason(UNDER_MIN_MAXCONN, f"caps at {maxconn} concurrent requests per server, fewer than "
                                                      f"the policy's {limits.min_maxconn}"))
    busy = [h["action_id"] for h in holding if h["kind"] == kind and h.get("target") == action.get("target")
            and h["action_id"] != action["action_id"] and h["expires_ms"] > now_ms]
    if busy:
        problems.append(Reason(LLM_LEVER_BUSY, f"{kind} {busy[0][:80]} still holds on {str(action.get('target'))[:40]}; "
                                               f"one at a time, so each revert restores what was before it"))
    return problems


def cooling_problems(action: Mapping, state: CoolingState | None, limits: CoolingLimits | None, now_ms: int,
                     max_state_age_s: float = 300.0) -> list[Reason]:
    """What is wrong with a ``cooling_setpoint`` under the policy's ``cooling`` limits.

    >>> limits = CoolingLimits(18, 27, 16, 25, 1.0, 3.0, 1800)
    >>> state = CoolingState(20.0, {"zone-a1": 25.0}, ts_ms=0, changes=((0, 1.0), (600_000, 1.0)))
    >>> act = {"kind": "cooling_setpoint", "expires_ms": 1_800_000, "params": {"setpoint_c": "21"}}
    >>> cooling_problems(act, state, limits, now_ms=60_000)
    []
    >>> [r.code for r in cooling_problems({**act, "params": {"setpoint_c": "22.5"}}, state, limits, 60_000)]
    ['over_ramp_limit', 'over_hourly_ramp', 'inlet_limit']
    """
    if limits is None:
        return [Reason(NO_COOLING_POLICY, "the policy has no cooling section: setpoint actions are off")]
    try:
        new = float((action.get("params") or {})["setpoint_c"])
    except (KeyError, TypeError, ValueError):
        new = math.nan
    if not math.isfinite(new):
        return [Reason(INVALID_SETPOINT, "cooling_setpoint needs a finite params.setpoint_c")]
    problems = []
    if not limits.setpoint_min_c <= new <= limits.setpoint_max_c:
        problems.append(Reason(OUT_OF_SETPOINT_RANGE, f"setpoint {new:g} degC is outside the policy's "
                                                      f"{limits.setpoint_min_c:g}-{limits.setpoint_max_c:g} degC"))
    duration_s = seconds_to_expiry(action, now_ms)
    if duration_s > limits.revert_timeout_s:
        problems.append(Reason(OVER_MAX_DURATION, f"lasts {duration_s:g} s unverified, longer than the policy's "
                                                  f"revert timeout of {limits.revert_timeout_s:g} s"))
    if state is None or not state.inlet_c:
        return problems + [Reason(NO_COOLING_STATE, "no reading of the setpoint and the rack inlets yet")]
    age_s = (now_ms - state.ts_ms) / 1000
    if age_s > max_state_age_s:
        problems.append(Reason(STALE_COOLING_STATE, f"the inlet readings are {age_s:g} s old, older than "
                                                    f"{max_state_age_s:g} s"))
    step = new - state.setpoint_c
    if abs(step) > limits.max_step_c + 1e-9:
        problems.append(Reason(OVER_RAMP_LIMIT, f"step of {abs(step):g} degC from {state.setpoint_c:g} degC exceeds "
                                                f"the policy's {limits.max_step_c:g} degC per change"))
    moved = state.changed_last_hour_c(now_ms)
    if moved + abs(step) > limits.max_change_c_per_h + 1e-9:
        problems.append(Reason(OVER_HOURLY_RAMP, f"{moved:g} degC moved in the last hour and {abs(step):g} now exceed "
                                                 f"the policy's {limits.max_change_c_per_h:g} degC per hour"))
    hot, cold = max(state.inlet_c.values()) + step, min(state.inlet_c.values()) + step
    if hot > limits.inlet_max_c or cold < limits.inlet_min_c:
        problems.append(Reason(INLET_LIMIT, f"inlets would read {cold:.1f}-{hot:.1f} degC, outside the policy's "
                                            f"{limits.inlet_min_c:g}-{limits.inlet_max_c:g} degC"))
    return problems


def shrink_problems(action: Mapping) -> list[Reason]:
    """A shrink names one job, how many nodes it has and keeps, and what its comment declares.

    >>> act = {"job_ids": ["42"], "params": {"nodes": "2", "job_nodes": "4", "comment": "opsloop:dp:min=2"}}
    >>> shrink_problems(act)
    []
    >>> [r.code for r in shrink_problems({**act, "params": {**act["params"], "comment": "opsloop:pp"}})]
    ['not_elastic']
    """
    params = action.get("params") or {}
    if not action.get("job_ids"):
        return partition_shrink_problems(params)
    if len(action["job_ids"]) != 1:
        return [Reason(INVALID_PARAMS, "slurm_shrink names exactly one job (job_ids), or none and a partition")]
    try:
        keep, nodes_now = int(params["nodes"]), int(params["job_nodes"])
    except (KeyError, TypeError, ValueError):
        return [Reason(INVALID_PARAMS, "slurm_shrink needs whole numbers params.nodes (to keep) and params.job_nodes")]
    if keep < 1:
        return [Reason(INVALID_PARAMS, f"slurm_shrink keeps at least one node, not {keep}")]
    found = parallelism.shrink_problems(parallelism.declared(params.get("comment")), nodes_now, keep)
    return [Reason(code, text) for code, text in found]


def partition_shrink_problems(params: Mapping) -> list[Reason]:
    """A shrink naming no job releases ``params.gpus`` (a whole number, at least one) and says nothing of a job:
    the sink picks the jobs, so a node count or comment here would describe a job nobody named.

    >>> partition_shrink_problems({"partitions": "batch", "gpus": "16"})
    []
    >>> [r.text for r in partition_shrink_problems({"partitions": "batch", "gpus": "16", "nodes": "2"})]
    ['a slurm_shrink naming no job (job_ids empty) takes no params.nodes: the sink picks the jobs and their sizes']
    """
    described = [name for name in ("nodes", "job_nodes", "comment") if name in params]
    if described:
        return [Reason(INVALID_PARAMS, f"a slurm_shrink naming no job (job_ids empty) takes no "
                                       f"{', '.join('params.' + n for n in described)}: the sink picks the jobs and "
                                       f"their sizes")]
    try:
        gpus = int(params["gpus"])
    except (KeyError, TypeError, ValueError):
        return [Reason(INVALID_PARAMS, "a slurm_shrink naming no job needs params.gpus, a whole number of GPUs to "
                                       "release at most")]
    if gpus < 1:
        return [Reason(INVALID_PARAMS, f"a slurm_shrink naming no job releases at least one GPU, not {gpus}")]
    return []


def gpu_problems(action: Mapping, policy: Policy, now_ms: int) -> list[Reason]:
    """What is wrong with a ``gpu_clock_lock`` or ``gpu_power_limit`` under the policy's ``gpu`` section.

    >>> from opsloop.config.policy import GpuLimits, PcsLimits, SlurmLimits
    >>> policy = Policy(4, 600, PcsLimits(1, 1, 1, 1, 1), SlurmLimits(("batch",), ("inference",), 1, 1, 1),
    ...                 gpu=GpuLimits(900, 300, 3600))
    >>> lock = {"kind": "gpu_clock_lock", "expires_ms": 600_000, "params": {"partition": "batch", "sm_mhz": "1200"}}
    >>> gpu_problems(lock, policy, now_ms=0)
    []
    >>> [print(r.code, r.text) for r in gpu_problems({**lock, "params": {"partition": "batch", "sm_mhz": "600"}},
    ...                                             policy, now_ms=0)]
    under_min_clock locks the SM clock at 600 MHz, below the policy's 900 MHz
    [None]
    """
    limits, params, kind = policy.gpu, action.get("params") or {}, action["kind"]
    if limits is None:
        return [Reason(NO_GPU_POLICY, "the policy has no gpu section: GPU clock and power actions are off")]
    problems = []
    partition = str(params.get("partition", ""))
    if not partition:
        problems.append(Reason(NO_PARTITIONS, f"{kind} names the partition whose GPUs it sets (params.partition)"))
    elif partition in policy.slurm.protected_partitions:
        problems.append(Reason(PROTECTED_PARTITION, f"partition {partition[:40]} is protected and never touched"))
    elif partition not in policy.slurm.touchable_partitions:
        problems.append(Reason(UNTOUCHABLE_PARTITION, f"partition {partition[:40]} is not in the policy's touchable "
                                                      f"partitions"))
    problems += duration_problems(seconds_to_expiry(action, now_ms), limits.max_duration_s)
    field, floor = ("sm_mhz", limits.min_sm_clock_mhz) if kind == "gpu_clock_lock" else \
        ("watts", limits.min_power_limit_w)
    try:
        value = float(params[field])
    except (KeyError, TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        problems.append(Reason(INVALID_PARAMS, f"{kind} needs a positive number params.{field}, got "
                                               f"{str(params.get(field))[:40]!r}"))
    elif value < floor and kind == "gpu_clock_lock":
        problems.append(Reason(UNDER_MIN_CLOCK, f"locks the SM clock at {value:g} MHz, below the policy's {floor:g} MHz"))
    elif value < floor:
        problems.append(Reason(UNDER_MIN_POWER_LIMIT, f"limits each GPU to {value:g} W, below the policy's {floor:g} W"))
    return problems


def maintenance_problems(action: Mapping, now_ms: int) -> list[Reason]:
    """A maintenance reservation names its nodes and a window that starts ahead and is not too long.

    It takes no job away (Slurm schedules nothing into a reservation; jobs running at its start were
    started knowing of it), so the partitions' protection and the shedding budgets do not apply.

    >>> act = {"params": {"nodes": "gpu-a1", "start_ms": "7200000", "end_ms": "21600000"}}
    >>> maintenance_problems(act, now_ms=0)
    []
    >>> [r.code for r in maintenance_problems({"params": {"nodes": "gpu-a1", "start_ms": "0", "end_ms": "1"}}, 5)]
    ['invalid_params']
    """
    params = action.get("params", {})
    if not [n for n in params.get("nodes", "").split(",") if n.strip()]:
        return [Reason(INVALID_PARAMS, "a maintenance reservation must name its nodes (params.nodes)")]
    try:
        start_ms, end_ms = int(params["start_ms"]), int(params["end_ms"])
    except (KeyError, ValueError):
        return [Reason(INVALID_PARAMS, "params.start_ms and params.end_ms must be whole milliseconds")]
    if not now_ms < start_ms < end_ms:
        return [Reason(INVALID_PARAMS, "the window must start ahead of now and end after it starts")]
    if (end_ms - start_ms) / 1000 > MAX_MAINTENANCE_S:
        return [Reason(OVER_MAX_WINDOW, f"the window lasts {(end_ms - start_ms) / 3_600_000:g} h, longer than "
                                        f"{MAX_MAINTENANCE_S / 3600:g} h")]
    return []


def undo_problems(action: Mapping, approved: Mapping[str, Mapping]) -> list[Reason]:
    """A release or resume naming ``params.undo_of`` may only undo a shedding action the guard approved, proposed
    by the same proposer for the same target and site.

    >>> hold = {"action_id": "h1", "kind": "slurm_hold", "target": "c1", "site": "s", "proposer": "peaks"}
    >>> release = {"action_id": "r1", "kind": "slurm_release", "target": "c1", "site": "s", "proposer": "peaks",
    ...            "params": {"undo_of": "h1"}}
    >>> undo_problems(release, {"h1": hold})
    []
    >>> [r.code for r in undo_problems({**release, "proposer": "mallory"}, {"h1": hold})]
    ['undo_not_owner']
    >>> [r.code for r in undo_problems(release, {})]
    ['undo_not_approved']
    """
    undo_of = action.get("params", {}).get("undo_of")
    if action["kind"] not in SLURM_UNDO or undo_of is None:
        return []
    original = approved.get(undo_of)
    if original is None:
        return [Reason(UNDO_NOT_APPROVED, f"undo_of names {str(undo_of)[:80]!r}, not an action the guard approved")]
    problems = []
    if any(original.get(k) != action.get(k) for k in ("proposer", "target", "site")):
        problems.append(Reason(UNDO_NOT_OWNER, f"undo_of {original['action_id']} belongs to another proposer or "
                                               f"target; only its own proposer may undo it early"))
    if original.get("kind") not in UNDOES[action["kind"]]:
        problems.append(Reason(UNDO_KIND_MISMATCH, f"{action['kind']} cannot undo a {original.get('kind')}"))
    return problems


def feedback_problem(feedback: Mapping, pending: Mapping | None, deadline_ms: int | None, decided: bool,
                     authentic: bool, now_ms: int) -> Reason | None:
    """Why the guard must ignore an operator's answer; None when it answers ``pending`` with it.

    ``pending``: the action waiting for this answer (None if none waits); ``decided``: the guard has a verdict
    on that id; ``authentic``: the record carries the NOC's valid signature.

    >>> act = {"action_id": "a1", "created_ms": 1000, "expires_ms": 9000}
    >>> fb = {"target_id": "a1", "kind": "approve_action", "ts_ms": 2000}
    >>> feedback_problem(fb, act, 5000, True, True, now_ms=3000) is None
    True
    >>> feedback_problem(fb, None, None, False, True, now_ms=3000).code
    'feedback_unknown_action'
    >>> feedback_problem(fb, None, None, True, True, now_ms=3000).code
    'feedback_replay'
    >>> feedback_problem(fb, act, 5000, True, False, now_ms=3000).code
    'feedback_unauthentic'
    >>> feedback_problem(fb, act, 5000, True, True, now_ms=5000).code
    'feedback_late'
    """
    if not authentic:
        return Reason(FEEDBACK_UNAUTHENTIC, "not signed with the NOC's feedback key")
    if pending is None:
        if decided:
            return Reason(FEEDBACK_REPLAY, "the action was already answered or needs no approval")
        return Reason(FEEDBACK_UNKNOWN_ACTION, "no such action is waiting; feedback is never kept for later")
    if feedback["ts_ms"] < pending["created_ms"]:
        return Reason(FEEDBACK_BEFORE_ACTION, "given before the action was proposed")
    deadline = pending["expires_ms"] if deadline_ms is None else min(deadline_ms, pending["expires_ms"])
    if now_ms >= deadline or feedback["ts_ms"] >= deadline:
        return Reason(FEEDBACK_LATE, "given after the approval request lapsed or the action expired")
    return None


def decide(action: Mapping, state: PlantState, policy: Policy, now_ms: int, operator: str | None = None) -> Decision:
    """The verdict on ``action`` now; ``operator`` is set when an operator has approved it."""
    kind = action["kind"]
    rule = policy.rule(kind)
    if now_ms >= action["expires_ms"]:
        return Decision.of(REJECTED, [Reason(EXPIRED, f"expired {(now_ms - action['expires_ms']) / 1000:g} s ago")])
    if kind in PCS_KINDS:
        problems = pcs_problems(action, state.ess, policy, now_ms)
    elif kind == MAINTENANCE:
        problems = maintenance_problems(action, now_ms)
    elif kind == SHRINK:  # the job's own declaration first: an ep job is refused for what it is
        problems = shrink_problems(action) + slurm_problems(action, policy, now_ms, state.slurm_spent)
    elif kind.startswith("slurm_"):
        problems = slurm_problems(action, policy, now_ms, state.slurm_spent) + undo_problems(action, state.approved)
    elif kind in LLM_KINDS:
        problems = llm_problems(action, policy.llm, now_ms, state.llm_holding)
    elif kind == COOLING_KIND:
        problems = cooling_problems(action, state.cooling, policy.cooling, now_ms, policy.max_state_age_s)
    elif kind in GPU_KINDS:
        problems = gpu_problems(action, policy, now_ms)
    else:
        problems = [Reason(UNKNOWN_KIND, f"unknown action kind {kind!r}")]
    if rule.windows and not any(w.contains(now_ms) for w in rule.windows):
        problems.append(Reason(OUTSIDE_WINDOW, f"{kind} is outside the time windows the policy allows"))
    if problems:
        return Decision.of(REJECTED, problems)
    if rule.mode == "advise":
        return Decision.of(REJECTED, [Reason(ADVISE_ONLY, f"within every limit, but {kind} is advise-only: shown, "
                                                          f"never executed")])
    if rule.mode == "approve" and operator is None:
        return Decision.of(NEEDS_APPROVAL, [Reason(AWAITS_OPERATOR, f"within every limit; {kind} needs an "
                                                                    f"operator's approval")])
    if operator is not None:
        return Decision.of(APPROVED, [Reason(OPERATOR_APPROVED, f"within every limit; approved by {operator}")])
    return Decision.of(APPROVED, [Reason(WITHIN_LIMITS, f"within every limit; {kind} runs in auto mode")])


def operator_rejection(operator: str) -> Decision:
    """An operator's rejection of a pending action."""
    return Decision.of(REJECTED, [Reason(OPERATOR_REJECTED, f"rejected by operator {operator}")])


def revert_approval(action_id: str) -> Decision:
    """The guard's own approval of the ``pcs_idle`` that reverts an action whose verification failed."""
    return Decision.of(APPROVED, [Reason(REVERT, f"revert after failed verification of {action_id}")])


def approval_deadline_ms(action: Mapping, policy: Policy, asked_ms: int) -> int:
    """When a pending approval request lapses: the policy's expiry or the action's own, whichever is sooner."""
    return min(action["expires_ms"], asked_ms + int(policy.approval_expiry_s * 1000))
