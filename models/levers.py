"""Flexible-load levers beside the battery, chosen by cost: the cheapest mix that holds a lower peak.

Pure: the site's ``flexible_load`` declaration (``config.site.FlexibleLoad``) and the
policy's lever costs (``config.policy.LeverCosts``) become a catalogue of ``Lever``s
(``catalogue``); ``cheapest_mix`` covers a shortfall per step (forecast import above a
target that the battery cannot cover) in merit order, cheapest cost per kWh first,
within each lever's limits (its kW at that step's load, whole nodes or jobs, hours per
day left); ``plan_levers`` picks the grid target they make worth holding.

Costs are in one currency, per kWh the lever takes off the load:

* ``battery``: wear per kWh discharged (it goes first: the peak planner dispatches it);
* ``llm_shift`` / ``llm_cap``: the policy's price of the serving SLO risk;
* ``gpu_clock_lock``: the GPU-hours its throughput loss costs per kWh it saves;
* ``slurm_shrink``: the GPU-hours of the released nodes (data-parallel jobs keep their
  minimum replicas);
* ``slurm_hold``: the GPU-hours of whole held jobs (tensor- and expert-parallel jobs only
  run whole), plus a restart overhead.

The target: lowering it by a kW saves the demand charge on that kW (pro rata to the
billing period), but only if no later day of the period imports more: the bill is the
period's highest import, so a cut pays only if it is held through the days left, and it
buys nothing if one of them peaks beyond what the levers can hold. ``BillOdds`` takes
each day left to be like one of the recent days; a cut is charged what it costs now plus
what holding it through those days is expected to cost, and each kW of it counts with the
chance that none of them peaks beyond the levers' reach. The plan takes the target, on
a grid of ``resolution_kw``, with the best expected net saving among those the levers can
still cover entirely.

>>> levers = (Lever("llm_shift", 0.3, share=0.04), Lever("slurm_hold", 3.6, share=0.10, granule_kw=50))
>>> mix = cheapest_mix([0, 120, 300], [1000, 2000, 2000], levers, step_h=0.5)
>>> [(e.kind, e.kw) for e in mix.engagements], mix.uncovered_kw, round(mix.cost, 1)
([('llm_shift', (0.0, 80.0, 80.0)), ('slurm_hold', (0.0, 0.0, 200.0))], (0.0, 40.0, 20.0), 384.0)
>>> mix.engagements[0].reason_code
'cheapest_lever'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from opsloop.config.policy import LEVER_KINDS, LeverCosts
from opsloop.config.site import FlexibleLoad
from opsloop.models.battery import Battery
from opsloop.models.peak_planner import charge_ceiling_kw, episode_end

# The levers are named by the action kinds that engage them (config.policy.LEVER_KINDS); some are not in every
# Action schema yet: a caller that proposes actions keeps only the kinds its schema has (``only``).

# Reason codes of an engagement, and of a lever plan:
CHEAPEST_LEVER = "cheapest_lever"  # engaged in merit order: the cheapest lever with kW and hours left
LEVERS_HOLD_LOWER_PEAK = "levers_hold_lower_peak"  # the levers make a lower target worth its cost
LEVERS_NOT_WORTH_IT = "levers_not_worth_it"  # a lower target would cost more than its demand charge saves
NO_SHORTFALL = "no_shortfall"  # the battery holds this period's billed peak alone
BACKUP_NEXT_STEP = "backup_next_step"  # the battery may run short next step if the load reaches the band's edge
REASON_CODES = frozenset({CHEAPEST_LEVER, LEVERS_HOLD_LOWER_PEAK, LEVERS_NOT_WORTH_IT, NO_SHORTFALL,
                          BACKUP_NEXT_STEP})

_WHAT = {"llm_shift": "shift LLM traffic to the small model", "llm_cap": "cap concurrent LLM requests",
         "gpu_clock_lock": "lock GPU clocks", "slurm_shrink": "release nodes of data-parallel jobs",
         "slurm_hold": "hold whole training jobs"}


@dataclass(frozen=True)
class Lever:
    """One way to take load off: its cost per kWh shed and its limits."""

    kind: str  # one of LEVER_KINDS
    cost_per_kwh: float
    share: float  # the most it sheds, as a share of the site's load at that step
    max_kw: float = math.inf
    granule_kw: float = 0.0  # sheds come in whole units of this (a node, a job); 0: any amount
    max_hours_per_day: float = math.inf  # the SLO budget: how long it may be engaged in a day

    def cap_kw(self, load_kw: float) -> float:
        """The most it can shed at a step with this load (whole units only)."""
        cap = min(self.max_kw, max(0.0, self.share * load_kw))
        return float(math.floor(cap / self.granule_kw + 1e-9)) * self.granule_kw if self.granule_kw > 0 else cap


def catalogue(flexible: FlexibleLoad, costs: LeverCosts, kw_per_gpu: float = 0.7) -> tuple[Lever, ...]:
    """The levers a site's flexible load offers, priced by the policy (``kw_per_gpu``: a busy GPU's draw).

    >>> from opsloop.config.site import ClockLoad
    >>> costs = LeverCosts(15, 0.05, gpu_hour=2.0, hold_restart_share=0.25, llm_shift_per_kwh=0.3,
    ...                    llm_cap_per_kwh=0.8, max_hours_per_day={"gpu_clock_lock": 6.0})
    >>> [(lv.kind, round(lv.cost_per_kwh, 2), lv.share, lv.max_hours_per_day)
    ...  for lv in catalogue(FlexibleLoad(clock_lock=ClockLoad(0.2, saving=0.15, throughput_loss=0.05)), costs)]
    [('gpu_clock_lock', 0.95, 0.03, 6.0)]
    """
    hours = costs.max_hours_per_day
    budget = {kind: hours.get(kind, math.inf) for kind in LEVER_KINDS}
    per_gpu_kwh = costs.gpu_hour / kw_per_gpu  # a GPU-hour lost per kWh a busy GPU draws
    out = []
    if (serving := flexible.llm_serving) is not None:
        out.append(Lever("llm_shift", costs.llm_shift_per_kwh, serving.share * serving.shift_saving,
                         max_hours_per_day=budget["llm_shift"]))
        out.append(Lever("llm_cap", costs.llm_cap_per_kwh, serving.share * serving.cap_saving,
                         max_hours_per_day=budget["llm_cap"]))
    if (clock := flexible.clock_lock) is not None and clock.saving > 0:
        # a kWh saved at the locked clock costs (throughput lost / power saved) of a GPU-hour per kWh drawn
        out.append(Lever("gpu_clock_lock", per_gpu_kwh * clock.throughput_loss / clock.saving,
                         round(clock.share * clock.saving, 12), max_hours_per_day=budget["gpu_clock_lock"]))
    if (training := flexible.training) is not None:
        out.append(Lever("slurm_shrink", per_gpu_kwh,
                         training.share * training.data_parallel * (1 - training.min_replicas),
                         granule_kw=training.node_kw, max_hours_per_day=budget["slurm_shrink"]))
        out.append(Lever("slurm_hold", per_gpu_kwh * (1 + costs.hold_restart_share),
                         training.share * (1 - training.data_parallel), granule_kw=training.job_kw,
                         max_hours_per_day=budget["slurm_hold"]))
    return tuple(lv for lv in out if lv.share > 0)


def only(levers: Sequence[Lever], kinds: Sequence[str]) -> tuple[Lever, ...]:
    """The levers whose action kind is among ``kinds`` (e.g. the kinds the Action schema knows)."""
    return tuple(lv for lv in levers if lv.kind in kinds)


@dataclass(frozen=True)
class Engagement:
    kind: str
    kw: tuple[float, ...]  # shed per step
    cost: float
    reason_code: str
    reason: str
    lever: Lever | None = None

    @property
    def steps(self) -> int:
        return sum(kw > 0 for kw in self.kw)


@dataclass(frozen=True)
class Mix:
    engagements: tuple[Engagement, ...]
    uncovered_kw: tuple[float, ...]
    cost: float

    @property
    def covers(self) -> bool:
        return all(kw <= 1e-6 for kw in self.uncovered_kw)

    def shed_kw(self, step: int = 0) -> float:
        return sum(e.kw[step] for e in self.engagements)


def cheapest_mix(shortfall_kw: Sequence[float], load_kw: Sequence[float], levers: Sequence[Lever], step_h: float,
                 used_hours: Mapping[str, float] | None = None) -> Mix:
    """The levers that cover ``shortfall_kw`` (per step) cheapest, each within its limits.

    Merit order: the cheapest lever first, at every step it is needed, then the next on what is left.
    A lever with few hours left today (``used_hours``: hours engaged so far) spends them on the steps
    where it sheds most. Never sheds more than the shortfall of a step.

    Without daily budgets each step is met on its own, so a larger shortfall never costs less nor is
    covered less. With them the choice of steps is greedy, not optimal: a larger shortfall can move a
    budgeted lever to another step, where the dearer levers after it reach less, and end covered a
    little less (in about 1 of 1,200 random cases; property tests in tests/unit/models/test_levers.py).
    ``plan_levers`` deepens its target until the first one its levers cannot cover, so such a case can
    only stop it early: it never holds a target its own mix does not cover.
    """
    used_hours = used_hours or {}
    left = [max(0.0, kw) for kw in shortfall_kw]
    engagements, total = [], 0.0
    for lever in sorted(levers, key=lambda lv: (lv.cost_per_kwh, lv.kind)):
        hours = max(0.0, lever.max_hours_per_day - used_hours.get(lever.kind, 0.0))
        steps = math.floor(hours / step_h + 1e-9) if math.isfinite(hours) else len(left)
        takes = [_take(lever, need, kw) for need, kw in zip(left, load_kw)]
        order = sorted((t for t in range(len(left)) if takes[t] > 0), key=lambda t: (-takes[t], t))[:steps]
        kw = [0.0] * len(left)
        for t in order:
            kw[t] = takes[t]
            left[t] -= takes[t]
        if any(k > 0 for k in kw):
            cost = sum(kw) * step_h * lever.cost_per_kwh
            total += cost
            engagements.append(Engagement(lever.kind, tuple(kw), cost, CHEAPEST_LEVER, _reason(lever, kw, step_h, cost),
                                          lever))
    return Mix(tuple(engagements), tuple(left), total)


def _take(lever: Lever, need_kw: float, load_kw: float) -> float:
    """What the lever sheds of a step's need: all of it, or as much as its kW (in whole units) reach."""
    take = min(need_kw, lever.cap_kw(load_kw))
    return float(math.floor(take / lever.granule_kw + 1e-9)) * lever.granule_kw if lever.granule_kw > 0 else take


def _reason(lever: Lever, kw: Sequence[float], step_h: float, cost: float,
            purpose: str = "the cheapest lever with kW and hours left") -> str:
    """One sentence: what the lever does, how much, how long, at what price, and why it was chosen."""
    what = _WHAT.get(lever.kind, lever.kind)
    return (f"{what[0].upper()}{what[1:]}, up to {max(kw):,.0f} kW for {sum(k > 0 for k in kw) * step_h:g} h at "
            f"{lever.cost_per_kwh:.2f} per kWh ({cost:,.0f} in all): {purpose}.")


_LATER_POINTS = 16  # cuts deeper than any target (for the days left) are costed on this many points at most


@dataclass(frozen=True)
class BillOdds:
    """How likely a cut to an import level lowers this period's bill: no day left in the period may import more.

    Each of the ``days_left`` days (after the episode, to the period's end) is taken to be like one of the
    recent days: its peak load is one of ``daily_peaks_kw``, blurred by a normal kernel ``width`` times their
    mean wide (days are never quite alike), and the battery takes as much off it as off this episode's
    peak. Independent days: the chance that none exceeds is the chance one does not, to the power of the days.

    >>> odds = BillOdds((900.0, 1000.0, 1000.0), days_left=10, width=0.02)  # two days in three reach 1,000 kW
    >>> round(odds.stays_under(1050.0), 3), round(odds.stays_under(1000.0), 3), BillOdds((), 10, 0.02).stays_under(0)
    (0.968, 0.017, 1.0)
    """

    daily_peaks_kw: tuple[float, ...]
    days_left: float
    width: float
    day_share: float = 1.0  # days run in spells (weather, workload): the share of the days left that count as draws

    @property
    def days(self) -> float:
        """The days left, counted as independent draws."""
        return self.day_share * max(0.0, self.days_left)

    def stays_under(self, load_kw: float) -> float:
        """The chance that no day left reaches a peak load of ``load_kw`` (1 with no day left or none seen)."""
        if self.days <= 0 or not self.daily_peaks_kw:
            return 1.0
        width = max(1e-9, self.width * sum(self.daily_peaks_kw) / len(self.daily_peaks_kw))
        exceeds = sum(0.5 * math.erfc((load_kw - kw) / (width * math.sqrt(2))) for kw in self.daily_peaks_kw)
        return max(0.0, 1.0 - exceeds / len(self.daily_peaks_kw)) ** self.days


def recharge_episode_end(load_kw: Sequence[float], charge_at: Sequence[bool], ceiling_kw: float) -> int:
    """The end of the episode a cut must be held through: the first step the battery can recharge in (a charge
    step whose load is under the charge ceiling ``ceiling_kw``) after the first step it cannot.

    The planner's episode ends at the first charge step; on a plateau above the ceiling such a step recharges
    nothing, and levers planned only up to it would leave the steps after it to a battery that stayed empty.

    >>> recharge_episode_end([900, 1200, 950, 1200, 700, 900], [True, False, True, False, True, True], 960)
    2
    >>> recharge_episode_end([900, 1200, 980, 1200, 700, 900], [True, False, True, False, True, True], 960)
    4
    """
    return episode_end([c and kw < ceiling_kw for c, kw in zip(charge_at, load_kw)])


@dataclass(frozen=True)
class LeverPlan:
    target_kw: float  # the grid import the battery holds with the levers' help
    battery_target_kw: float  # what the battery alone would hold
    mix: Mix  # the levers' shed over the forecast steps
    saving: float  # demand charge it is expected to save (each kW of the cut x the charge x the odds it counts)
    cost: float  # the levers' cost plus the battery's extra wear
    reason_code: str
    reason: str
    load_kw: tuple[float, ...] = ()  # the forecast load it was planned on
    odds: float = 1.0  # the chance that the target sets the bill (no later day imports more)


def plan_levers(load_kw: Sequence[float], charge_at: Sequence[bool], battery: Battery, energy_kwh: float,
                step_h: float, battery_target_kw: float, billed_peak_kw: float, levers: Sequence[Lever],
                charge_per_kw: float, battery_wear_per_kwh: float, used_hours: Mapping[str, float] | None = None,
                charge_headroom_pct: float = 2.0, resolution_kw: float = 10.0,
                first_upper_kw: float | None = None, recent_import_kw: float = 0.0,
                odds: BillOdds | None = None, first_kw: float | None = None, band_z: float = 1.64) -> LeverPlan:
    """The target the levers make worth holding over ``load_kw`` (the planner's forecast episode).

    ``battery_target_kw`` is the battery's own limit: it discharges down to it whatever the levers hold. The
    battery alone then imports the lowest level at or above it that it holds over the episode (above it where
    the limit is a floor under its discharge, e.g. the billed peak, that it cannot hold to the episode's end);
    candidates run down from that level in ``resolution_kw`` steps, never
    under this period's ``billed_peak_kw`` (shaving under it saves nothing) nor under
    ``recent_import_kw``, the highest import of the last days (days like them will reach it again, so
    a cut under it would be paid for every day and saved on none); each is scored by the demand
    charge it is expected to save less the levers' cost and the battery's extra wear, now and (with
    ``odds``) through the days left. Each day left is like one of ``odds.daily_peaks_kw``: its peak
    ``rise`` above this episode's, holding the target then takes a cut ``rise`` deeper, costed as such a
    cut costs here; each kW of the cut is worth ``charge_per_kw`` times the chance that no day left
    peaks beyond the deepest cut the levers cover (None: always, nothing charged for later days). The
    first candidate the levers cannot cover ends the search: lower ones need more.

    The chosen target's shortfall is then moved to the steps of highest load (the levers shave the top,
    the battery the rest: the same energy, but the battery keeps some for a peak larger than forecast),
    and the next step is backed up: if its load reaches ``first_upper_kw`` (the band's upper edge), what
    the battery cannot give there is shed too, as far as the levers reach, when it is worth its cost: the
    import the load is expected to put over what the battery holds (a normal load of mean ``first_kw``,
    the edge ``band_z`` deviations above it; without ``first_kw``, the edge for certain), at the charge,
    weighed by the same odds.
    """
    none = Mix((), tuple(0.0 for _ in load_kw), 0.0)
    floor = max(billed_peak_kw, recent_import_kw, 0.0)
    # The battery discharges to its own limit whatever the levers hold above it: that limit may sit under what it
    # can hold over the episode (a floor under its discharge: the billed peak, the reactive rule's threshold), and
    # then it runs empty sooner. The levers plan with the battery as it is commanded, from the highest import it
    # leaves alone, else they would buy a cut, or back up a step, that the rest of the episode imports over anyway.
    run = _Run(load_kw, charge_at, battery, energy_kwh, step_h, billed_peak_kw, charge_headroom_pct,
               limit=battery_target_kw)
    if load_kw:
        battery_target_kw = run.lowest_held(battery_target_kw)
    plain = LeverPlan(battery_target_kw, battery_target_kw, none, 0.0, 0.0, NO_SHORTFALL,
                      f"The battery holds {_kw(battery_target_kw)} alone, no higher than this period's billed "
                      f"peak {_kw(billed_peak_kw)} or the last days' highest import {_kw(recent_import_kw)}: "
                      f"no lever is needed.", tuple(load_kw))
    if not levers or not load_kw:
        return plain
    base_discharge = run.dispatch(battery_target_kw)[0]
    # Each day left is like one of the recent days, its peak ``p - peak`` above this episode's: holding the cut
    # through it takes a cut that much deeper, at what a cut that deep costs here (0 if it needs none); a day
    # the levers cannot hold at the target sets the bill above it, so a kW of the cut counts only if no day
    # left exceeds it by more than the deepest cut the levers cover.
    peak = max(load_kw)
    shave = max(0.0, peak - battery_target_kw)
    rises = [] if odds is None else [kw - peak for kw in odds.daily_peaks_kw]
    depth_k = int((battery_target_kw - floor) / resolution_kw)
    reach_k = depth_k + int(max([0.0, *rises]) / resolution_kw) + 1 if depth_k > 0 and rises and odds.days > 0 \
        else depth_k
    costs = [0.0]  # what holding a cut of k x resolution_kw costs over this episode, while the levers cover it

    def cost_of(k: int) -> float | None:
        discharged, shortfall = run.dispatch(battery_target_kw - k * resolution_kw)
        mix = cheapest_mix(shortfall, load_kw, levers, step_h, used_hours)
        return mix.cost + max(0.0, discharged - base_discharge) * battery_wear_per_kwh if mix.covers else None

    stride = max(1, (reach_k - depth_k) // _LATER_POINTS)  # deeper than any target: a coarser grid, interpolated
    k = 1
    while k <= reach_k and (c := cost_of(k)) is not None:
        gap, last = k - (len(costs) - 1), costs[-1]  # grid points since the last one costed
        costs += [last + (c - last) * j / gap for j in range(1, gap + 1)]
        k = min(reach_k, k + (1 if k < depth_k else stride)) if k < reach_k else reach_k + 1
    deepest = (len(costs) - 1) * resolution_kw  # the deepest cut the levers cover (on the grid costed)

    def counts(import_kw: float) -> float:
        return 1.0 if odds is None else odds.stays_under(import_kw + shave + deepest)

    def later_cost(cut_kw: float) -> float:
        """The expected cost of holding ``cut_kw`` through the days left (a day the levers cannot hold costs
        nothing here: it is in the odds)."""
        if odds is None or odds.days <= 0 or not rises:
            return 0.0
        needs = [math.ceil((cut_kw + rise) / resolution_kw - 1e-9) for rise in rises]
        return odds.days * sum(costs[k] for k in needs if 0 < k < len(costs)) / len(needs)

    best = (0.0, battery_target_kw, 0.0, 0.0)  # net, target, saving, cost
    tried_cost, saving = (costs[1] if len(costs) > 1 else math.inf), 0.0
    for k in range(1, min(depth_k, len(costs) - 1) + 1):
        target = battery_target_kw - k * resolution_kw
        # this slice of the cut, as far as it lies under what the episode imports alone (a cut above the episode's
        # highest load saves nothing)
        below = max(0.0, min(target + resolution_kw, peak) - target)
        saving += below * charge_per_kw * counts(target + resolution_kw / 2)
        net = saving - costs[k] - later_cost(k * resolution_kw)
        if net > best[0] + 1e-9:
            best = (net, target, saving, costs[k])
    net, target, saving, cost = best

    def final(shortfall: list[float]) -> tuple[Mix, float]:
        """The mix for ``shortfall`` with the next step backed up (if worth it), and its cost with the battery's
        extra wear."""
        mix = cheapest_mix(shortfall, load_kw, levers, step_h, used_hours)
        if first_upper_kw is not None:  # what the battery cannot give next step if the load reaches the band's edge
            power = min(battery.pcs_discharge_kw, battery.max_discharge_kw(energy_kwh, step_h))
            risk_kw = first_upper_kw - target - power
            backed = cheapest_mix([max(shortfall[0], risk_kw), *shortfall[1:]], load_kw, levers, step_h, used_hours)
            # what it protects: the import the load is expected to put above what the battery holds, up to the edge
            held = target + power + shortfall[0]
            protects = _expected_excess(first_kw, first_upper_kw, band_z, held) * charge_per_kw * counts(target)
            if backed.cost - mix.cost <= protects:
                mix = backed
        shed = [mix.shed_kw(t) for t in range(len(load_kw))]
        return mix, mix.cost + max(0.0, run.dispatch(target, shed)[0] - base_discharge) * battery_wear_per_kwh

    if target < battery_target_kw:
        mix, cost = final(run.shaved(target, levers))
        if saving - cost - later_cost(battery_target_kw - target) <= 0:  # the top costs more: as the search found it
            mix, cost = final(run.dispatch(target)[1])
    else:
        mix, cost = final([0.0] * len(load_kw))
    if not mix.engagements:
        if target < battery_target_kw or math.isinf(tried_cost):
            why = f"the levers cannot cover even a {_kw(resolution_kw)} cut"
        else:
            why = "every cut the levers can cover costs more than the demand charge it is expected to save" + (
                f" (a day left in the period likely imports more: {_odds(counts(battery_target_kw))} that none "
                f"does)" if odds is not None else "")
        code = NO_SHORTFALL if battery_target_kw <= floor + resolution_kw / 2 else LEVERS_NOT_WORTH_IT
        return plain if code == NO_SHORTFALL else replace(
            plain, reason_code=code, reason=f"The battery alone holds {_kw(battery_target_kw)}; no lever is "
                                            f"engaged: {why}.")
    kinds = ", ".join(e.kind for e in mix.engagements)
    if target >= battery_target_kw:
        return LeverPlan(target, battery_target_kw, mix, 0.0, mix.cost, BACKUP_NEXT_STEP,
                         f"The battery may not hold {_kw(target)} next step if the load reaches the forecast's upper "
                         f"edge {_kw(first_upper_kw or 0.0)}: {kinds} back it up.", tuple(load_kw))
    # Each kW of the cut counts with its own odds: its first kW (the top, where the episode's import alone sits)
    # with the best, its last (the target) with the worst; the saving sums them, so both are said.
    chance, first = counts(target), counts(min(battery_target_kw, peak) - resolution_kw / 2)
    later = later_cost(battery_target_kw - target)
    return LeverPlan(target, battery_target_kw, mix, saving, cost, LEVERS_HOLD_LOWER_PEAK,
                     f"The battery alone holds {_kw(battery_target_kw)}; with {kinds} the plan holds {_kw(target)}, "
                     f"saving an expected {saving:,.0f} of demand charge (a kW of the cut counts only if no later "
                     f"day this period imports more: {_odds(first)} likely for its first kW, {_odds(chance)} for its "
                     f"last) for {cost:,.0f} in lever costs and battery wear"
                     + (f" now and an expected {later:,.0f} to hold it through the days left" if later >= 0.5 else "")
                     + ".", tuple(load_kw), chance)


@dataclass(frozen=True)
class _Run:
    """The battery over the forecast episode, as the planner dispatches it, for one candidate target or another."""

    load: Sequence[float]
    charge_at: Sequence[bool]
    battery: Battery
    energy: float
    step_h: float
    billed: float
    headroom_pct: float
    limit: float = math.inf  # the battery's own limit: it discharges down to it even where a target sits higher

    def ceiling(self, target: float) -> float:
        return charge_ceiling_kw(target, self.billed, self.headroom_pct)

    def dispatch(self, target: float, shed: Sequence[float] | None = None) -> tuple[float, list[float]]:
        """(kWh the battery gives, import above ``target`` per step it cannot cover), after ``shed``."""
        load = self.load if shed is None else [kw - s for kw, s in zip(self.load, shed)]
        held = min(target, self.limit)
        power = self.battery.dispatch(load, self.charge_at, self.energy, self.step_h, held, self.ceiling(held))
        return (sum(max(0.0, p) for p in power) * self.step_h,
                [max(0.0, kw - p - target) for kw, p in zip(load, power)])

    def covers(self, target: float, shed: Sequence[float] | None = None) -> bool:
        """Whether the battery holds ``target`` at every step of the episode, after ``shed``."""
        return not any(u > 1e-6 for u in self.dispatch(target, shed)[1])

    def lowest_held(self, target: float, iterations: int = 24) -> float:
        """The lowest import at or above ``target`` the battery alone holds over the episode (``target`` itself when
        it holds it; the episode's highest load holds trivially)."""
        if self.covers(target):
            return target
        lo, hi = target, max(target, max(self.load))
        for _ in range(iterations):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.covers(mid) else (mid, hi)
        return hi

    def shaved(self, target: float, levers: Sequence[Lever], iterations: int = 24) -> list[float]:
        """A shortfall for ``target`` on the highest loads: the highest level ``top`` such that shedding the load
        above it (within the levers' kW) lets the battery hold ``target``; the greedy one if none does."""
        caps = [sum(lv.cap_kw(kw) for lv in levers) for kw in self.load]

        def shed(top: float) -> list[float]:
            return [min(cap, max(0.0, kw - top), max(0.0, kw - target)) for kw, cap in zip(self.load, caps)]

        lo, hi = target, max(self.load)
        if not self.covers(target, shed(lo)):
            return self.dispatch(target)[1]  # the greedy shortfall
        for _ in range(iterations):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.covers(target, shed(mid)) else (lo, mid)
        top = shed(lo)
        return [s + u for s, u in zip(top, self.dispatch(target, top)[1])]


def _action_reason(e: Engagement, plan: LeverPlan, step_h: float) -> str:
    if e.lever is None:
        return e.reason
    if plan.reason_code == BACKUP_NEXT_STEP:
        purpose = (f"the cheapest lever left to back the battery up at {_kw(plan.target_kw)} should the load reach "
                   f"the forecast's upper edge")
    else:
        purpose = (f"the cheapest lever left to hold {_kw(plan.target_kw)} where the battery alone holds "
                   f"{_kw(plan.battery_target_kw)}, for an expected {plan.saving:,.0f} of demand charge saved at "
                   f"{plan.cost:,.0f}")
    return _reason(e.lever, e.kw, step_h, e.cost, purpose)


def _expected_excess(kw: float | None, upper_kw: float, z: float, level_kw: float) -> float:
    """E[min((load - level)+, upper - level)] for a normal load: mean ``kw``, ``upper_kw`` ``z`` deviations above it
    (``kw`` None: the load reaches the edge for certain)."""
    if level_kw >= upper_kw:
        return 0.0
    if kw is None or upper_kw <= kw:
        return upper_kw - level_kw
    sd = (upper_kw - kw) / z

    def tail_area(u: float) -> float:  # the integral of the normal's upper tail from u to infinity
        return math.exp(-u * u / 2) / math.sqrt(2 * math.pi) - u * 0.5 * math.erfc(u / math.sqrt(2))

    return sd * (tail_area((level_kw - kw) / sd) - tail_area(z))


def _kw(kw: float) -> str:
    return f"{kw:,.0f} kW"


def _odds(p: float) -> str:
    return f"{100 * p:.0f}%"


@dataclass(frozen=True)
class Usage:
    """Hours each lever was engaged on one day (UTC), for the daily budgets."""

    day: int = -1
    hours: Mapping[str, float] = field(default_factory=dict)

    def add(self, day: int, engaged: Mapping[str, float], step_h: float) -> "Usage":
        """After a step of ``day`` with these levers' kW engaged."""
        hours = dict(self.hours) if day == self.day else {}
        for kind, kw in engaged.items():
            if kw > 0:
                hours[kind] = hours.get(kind, 0.0) + step_h
        return Usage(day, hours)

    def today(self, day: int) -> Mapping[str, float]:
        return self.hours if day == self.day else {}


def lever_actions(plan: LeverPlan, flexible: FlexibleLoad, site: str, issued_ms: int, step_s: int, proposer: str,
                  slurm_target: str = "slurm", kw_per_gpu: float = 0.7) -> list[dict]:
    """Action records (without ids) for the levers engaged in the plan's next step, one per lever."""
    out, expires = [], issued_ms + step_s * 1000
    for e in plan.mix.engagements:
        kw = e.kw[0] if e.kw else 0.0
        if kw <= 0:
            continue
        action = {"kind": e.kind, "site": site, "setpoint_kw": None, "shed_kw": round(kw, 1), "job_ids": [],
                  "reason": _action_reason(e, plan, step_s / 3600), "reason_code": e.reason_code,
                  "expected_effect": f"Site load reduced by about {kw:,.0f} kW for the next {step_s / 60:g} minutes, "
                                     f"so grid import stays at or under {plan.target_kw:,.0f} kW.",
                  "expected_delta_kw": -round(kw, 1), "created_ms": issued_ms, "expires_ms": expires,
                  "risk": "medium" if e.kind.startswith("llm_") else "high", "proposer": proposer,
                  "params": {"grid_limit_kw": f"{plan.target_kw:.1f}", "lever_cost": f"{e.cost:.2f}"}}
        serving, training = flexible.llm_serving, flexible.training
        if e.kind == "llm_shift" and serving:
            whole = serving.share * serving.shift_saving * (plan.load_kw[0] if plan.load_kw else 0.0)
            share = min(1.0, kw / whole) if whole > 0 else 1.0  # a smaller shed: a smaller shift
            action.update(target=serving.backend)
            action["params"]["shift_pct"] = f"{max(1.0, round(serving.shift_pct * share, 1)):g}"
        elif e.kind == "llm_cap" and serving:
            action.update(target=serving.backend)
            action["params"].update(servers=",".join(serving.cap_servers), maxconn=str(serving.cap_maxconn))
        elif e.kind in ("slurm_hold", "slurm_shrink") and training:
            action.update(target=slurm_target)
            # a shrink names the partition and the GPUs, not a job: the Slurm sink picks the opsloop:dp jobs
            action["params"].update(partitions=training.partition, gpus=str(math.ceil(kw / kw_per_gpu)))
        else:  # gpu_clock_lock
            action.update(target=site)
            if flexible.clock_lock:
                action["params"]["saving_share"] = f"{flexible.clock_lock.saving:g}"
        out.append(action)
    return out
