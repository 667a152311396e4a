"""Peak-shaving planner: forecast + battery + billing state -> a grid target, a setpoint schedule, sentences.

Pure: no I/O, time passed in. Demand charges bill the highest 15-minute
average import of each billing period (a calendar month in most tariffs; some
bill by week or day), so shaving below what is already billed this period buys
nothing: the target never goes below the period-to-date billed peak. Above
it (and no further than the PCS's power under the recent days' peak, where no dispatch
could cut deeper), the target is the lowest import the battery can hold over the forecast
horizon, found by bisection with an exact simulation of the battery on the
forecast (optionally sized toward the band's upper edge: ``band_weight``), recharging
only in planned valleys: the lowest ``valley_quantile`` of forecast load, or
cheap tariff hours. It is recomputed every step, so it adapts online: a peak
larger than forecast drains the battery faster, which raises the next target
smoothly instead of letting the battery run dry before the peak ends.

When even the battery cannot hold this period's billed peak (once the period has
settled) or the import cap, the plan asks to relocate low-priority GPU jobs,
with the kW they must shed and when.

Every plan and relocation says why twice: a sentence for an operator (``reason``)
and a code from ``REASON_CODES`` (``reason_code``), to count decisions by why.

>>> from opsloop.models.battery import Battery
>>> from opsloop.models.peak_forecast import ForecastPoint
>>> b = Battery(capacity_kwh=2000, pcs_charge_kw=1000, pcs_discharge_kw=1000, round_trip_efficiency=0.81,
...             reserve_soc_pct=0)
>>> hour = 3_600_000
>>> load = [800, 800, 1500, 1800, 1500, 800]
>>> fc = [ForecastPoint(i * hour, kw, kw, kw) for i, kw in enumerate(load)]
>>> p = plan(fc, 3600, b, soc_pct=50, billing=Billing("1970-01", 900.0, 0), now_ms=0)
>>> round(p.target_kw), p.kind, [round(s) for s in p.schedule_kw]
(1256, 'pcs_charge', [-82, -82, 244, 544, 244, -82])
>>> p.reason_code
'recharge_cheap_hours'
>>> p.reason
'Charging 82 kW until 02:00 in cheap hours: the battery is at 50% and grid import stays under 1,256 kW.'
>>> p = plan(fc[2:], 3600, b, soc_pct=50, billing=Billing("1970-01", 900.0, 0), now_ms=2 * hour)
>>> p.reason_code
'shave_peak'
>>> p.reason  # charging never lifts import over the 900 kW already billed: the battery is still at 50%
'Discharging up to 200 kW until 05:00: forecast peak 1,800 kW at 03:00 exceeds the 1,300 kW the battery can hold over the next 4 h by 500 kW (this month so far: 900 kW).'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Sequence

from opsloop.models.battery import Battery, Command
from opsloop.models.event_time import format_ms
from opsloop.models.peak_forecast import ForecastPoint

# Reason codes of a plan's next step:
SHAVE_PEAK = "shave_peak"  # discharge to the lowest import the battery can hold, above the billed peak
HOLD_BILLED_PEAK = "hold_billed_peak"  # discharge to keep import at this period's billed peak
HOLD_IMPORT_CAP = "hold_import_cap"  # discharge to keep import at the contracted cap, where the cap binds
REACTIVE_FLOOR = "reactive_floor"  # discharge to the reactive rule's threshold, which the plan alone would hold above
# shave or wait above the reactive threshold: the floor is lifted, the plan alone having cut more (models.peak_modes)
REACTIVE_FLOOR_LIFTED = "reactive_floor_lifted"
RECHARGE_VALLEY = "recharge_valley"  # charge in a planned valley of the forecast load
RECHARGE_CHEAP_HOURS = "recharge_cheap_hours"  # charge in the tariff's cheap hours
RECHARGE_BEFORE_PEAK = "recharge_before_peak"  # top up in a dip under the target before a forecast peak (``top_up``)
WAIT_FOR_PEAK = "wait_for_peak"  # idle now, the battery kept for a forecast peak above the target
HOLD_GRID_LIMIT = "hold_grid_limit"  # grid-limit mode on standby: no discharge forecast, the PCS holds the target anyway
IDLE_BELOW_TARGET = "idle_below_target"  # idle: the forecast stays under the target
# ... when the reactive rule decides the period (``models.peak_modes``):
REACTIVE_SHAVE = "reactive_shave"  # discharge above the reactive threshold
REACTIVE_RECHARGE = "reactive_recharge"  # charge below it
REACTIVE_IDLE = "reactive_idle"  # at the threshold, or the battery empty or full
# ... and of a relocation of low-priority jobs:
RELOCATE_OVER_BILLED_PEAK = "relocate_over_billed_peak"  # the battery cannot hold this period's billed peak
RELOCATE_OVER_IMPORT_CAP = "relocate_over_import_cap"  # the battery cannot hold the import cap
PLAN_CODES = frozenset({SHAVE_PEAK, HOLD_BILLED_PEAK, HOLD_IMPORT_CAP, REACTIVE_FLOOR, REACTIVE_FLOOR_LIFTED,
                        RECHARGE_VALLEY, RECHARGE_CHEAP_HOURS, RECHARGE_BEFORE_PEAK, WAIT_FOR_PEAK, IDLE_BELOW_TARGET, HOLD_GRID_LIMIT, REACTIVE_SHAVE, REACTIVE_RECHARGE, REACTIVE_IDLE})
RELOCATION_CODES = frozenset({RELOCATE_OVER_BILLED_PEAK, RELOCATE_OVER_IMPORT_CAP})
REASON_CODES = PLAN_CODES | RELOCATION_CODES


@dataclass(frozen=True)
class Tariff:
    """Energy price by hour of day (24 values, site-local = UTC here); cheap hours are the lowest third."""

    prices_by_hour: tuple[float, ...] = (60,) * 7 + (120,) * 16 + (60,)

    def is_cheap(self, hour: int) -> bool:
        return self.prices_by_hour[hour % 24] <= self.cheap_price

    @property
    def cheap_price(self) -> float:
        return sorted(self.prices_by_hour)[len(self.prices_by_hour) // 3 - 1]


@dataclass(frozen=True)
class Policy:
    # 0 sizes energy on the forecast, 1 on the band's upper edge. Running short mid-peak costs more than holding
    # a little higher, so a hedge; re-planning every step corrects the rest. 0.25: leave-one-curve-out over the
    # peaks suite's 25 curves (0.1, 0.15, 0.2, 0.25, 0.3) chose it on 23 (docs/evaluations/peaks.md,
    # "How far to hedge").
    band_weight: float = 0.25
    valley_quantile: float = 0.35  # steps of the horizon with the lowest forecast load: recharge there
    charge_headroom_pct: float = 2.0  # charging keeps import this far under the target
    settle_share: float = 0.25  # before this share of a billing period, its billed peak is not worth shedding jobs for
    min_shed_kw: float = 100.0  # smaller shortfalls are not worth relocating jobs for
    max_shed_kw: float = math.inf  # what low-priority jobs can give
    import_cap_kw: float | None = None  # contracted import limit of the site
    tolerance_kw: float = 1.0  # bisection stops within this
    # Also charge in a step outside the valleys, under the charge ceiling, while a forecast peak above the target is
    # still to come this episode: a dip in a long plateau refills what the plateau will need, as the reactive rule
    # refills below its threshold. It cannot lift the bill (the ceiling holds); it costs energy at that hour's price.
    # Chosen on SimBench curves no setting had seen (docs/evaluations/peaks.md, "Fresh curves").
    top_up: bool = True
    # Charging never lifts import above what the period pays for: its billed peak, or, where higher, the least it will
    # surely pay (``sure_bill_kw``: the forecast's lower edge at its peak in the period, less what the PCS can shave).
    # Without it a period's first hours, a valley with little billed yet, could barely recharge.
    sure_bill: bool = True


@dataclass(frozen=True)
class Billing:
    """This billing period: its key (see ``billing_period``), the highest 15-minute import so far, when it
    began (or when billing began, if later), and its length (``month``, ``week`` or ``day``)."""

    key: str
    billed_peak_kw: float
    start_ms: int
    period: str = "month"

    @property
    def name(self) -> str:
        """The period as an operator says it: "this month", "this week", "today"."""
        return "today" if self.period == "day" else f"this {self.period}"


@dataclass(frozen=True)
class Relocation:
    shed_kw: float
    start_ms: int
    end_ms: int
    reason: str
    reason_code: str  # one of RELOCATION_CODES


@dataclass(frozen=True)
class Plan:
    target_kw: float  # grid import to hold from the next step on
    holdable_kw: float  # the lowest import the battery can hold over the horizon
    command: Command  # for the next step
    kind: str  # pcs_discharge | pcs_charge | pcs_idle
    setpoint_kw: float  # for the next step, positive = discharge (sized on the band's upper edge)
    until_ms: int  # end of the run of steps of the same kind
    schedule_kw: tuple[float, ...]  # expected PCS power per forecast step (on the point forecast)
    forecast_peak_kw: float
    forecast_peak_ms: int
    reason: str
    reason_code: str  # one of PLAN_CODES
    relocation: Relocation | None = None
    notes: dict = field(default_factory=dict)  # reactive_floor_kw: the reactive threshold, where it set the target


def plan(forecast: Sequence[ForecastPoint], step_s: int, battery: Battery, soc_pct: float, billing: Billing,
         now_ms: int, tariff: Tariff = Tariff(), policy: Policy = Policy(), recent_peak_kw: float = 0.0,
         reactive_kw: float | None = None) -> Plan:
    """The plan for the steps of ``forecast`` (its first point is the next step).

    ``recent_peak_kw`` (the highest load of the last days, 0: unknown) bounds the target from below: no
    dispatch can cut more than the PCS's power off a peak, so holding import further under the recent
    peak only spends energy on loads that will not be billed, should the forecast miss the period's peak
    (a day after a holiday forecast like the holiday, the first hours of a period).

    ``reactive_kw`` (the reactive rule's threshold ``T``, ``models.peak_modes``; None or infinite: none) is a
    floor under the plan's discharge: the target never stays above both ``T`` and the billed peak, so once
    the load passes the period's billed peak the battery gives at least what the one-line rule would, as
    its energy allows. A forecast that misses a peak, or a bound above that the load never reaches, then
    cannot leave a full battery idle while the rule would have shaved.
    """
    if not forecast:
        raise ValueError("plan needs at least one forecast point")
    step_h = step_s / 3600
    energy = battery.energy_kwh(soc_pct)
    sized = [p.kw + policy.band_weight * (p.upper_kw - p.kw) for p in forecast]
    charge_at = _charge_steps(forecast, tariff, policy)
    episode = episode_end(charge_at)
    paid = billing.billed_peak_kw  # what charging must not lift import above (besides the target)
    if policy.sure_bill:
        paid = max(paid, sure_bill_kw(forecast, battery, billing))
    holdable = _lowest_holdable(sized[:episode], charge_at[:episode], battery, energy, step_h, policy, paid)
    target = max(billing.billed_peak_kw, holdable, recent_peak_kw - battery.pcs_discharge_kw)
    floor = None  # the reactive threshold, where it holds import lower than the plan alone
    if reactive_kw is not None and math.isfinite(reactive_kw) and max(reactive_kw, billing.billed_peak_kw) < target:
        target = max(reactive_kw, billing.billed_peak_kw)
        floor = target if reactive_kw > billing.billed_peak_kw else None
    if policy.import_cap_kw is not None:
        target = min(target, policy.import_cap_kw)
    # Charging never lifts import above the target nor above what this period pays for (``paid``: see ``sure_bill``).
    ceiling = charge_ceiling_kw(target, paid, policy.charge_headroom_pct)

    top_up = policy.top_up and not charge_at[0] and max(sized[:episode]) > target
    command = Command(limit_kw=target, max_discharge_kw=battery.max_discharge_kw(energy, step_h),
                      charge_kw=battery.max_charge_kw(energy, step_h) if charge_at[0] or top_up else 0.0,
                      charge_ceiling_kw=ceiling)
    schedule = battery.dispatch([p.kw for p in forecast], charge_at, energy, step_h, target, ceiling)
    peak = max(forecast, key=lambda p: p.kw)
    # within the bisection's tolerance a discharge would be proposed as 0 kW, which the guard rightly refuses
    if forecast[0].upper_kw - target > policy.tolerance_kw and command.max_discharge_kw > 0:
        kind, setpoint = "pcs_discharge", min(forecast[0].upper_kw - target, command.max_discharge_kw)
    elif schedule[0] < 0:
        kind, setpoint = "pcs_charge", schedule[0]
    elif top_up and command.charge_kw > 0 and forecast[0].kw < ceiling:
        kind, setpoint = "pcs_charge", -min(command.charge_kw, ceiling - forecast[0].kw)
    else:
        kind, setpoint = "pcs_idle", 0.0
    until = _run_end(forecast, schedule, kind, step_s)
    context = _Context(billing, target, holdable, peak, len(forecast) * step_h, soc_pct, policy.import_cap_kw, floor)
    code, reason = {"pcs_discharge": context.discharging, "pcs_charge": context.topping_up if top_up else context.charging,
                    "pcs_idle": context.idle}[kind](setpoint, until, charge_at[0] and tariff.is_cheap(_hour(now_ms)))
    return Plan(target_kw=target, holdable_kw=holdable, command=command, kind=kind, setpoint_kw=setpoint,
                until_ms=until, schedule_kw=tuple(schedule), forecast_peak_kw=peak.kw, forecast_peak_ms=peak.ts_ms,
                reason=reason, reason_code=code,
                relocation=_relocation(forecast[:episode], step_s, holdable, billing, now_ms, policy),
                notes={} if floor is None else {"reactive_floor_kw": floor})


def reactive_plan(forecast: Sequence[ForecastPoint], step_s: int, command: Command, why: str,
                  relocation: Relocation | None = None) -> Plan:
    """The plan of a step the reactive rule decides: its ``command`` (limit ``T``), described on the forecast."""
    first, limit = forecast[0], command.limit_kw
    peak = max(forecast, key=lambda p: p.kw)
    until = first.ts_ms + step_s * 1000
    if first.upper_kw > limit and command.max_discharge_kw > 0:
        kind, setpoint, code = "pcs_discharge", min(first.upper_kw - limit, command.max_discharge_kw), REACTIVE_SHAVE
        reason = f"Discharging up to {_power(setpoint)} until {_clock(until)}: grid import held at the reactive " \
                 f"threshold {_power(limit)} ({why})."
    elif first.kw < limit and command.charge_kw > 0:
        kind, setpoint, code = "pcs_charge", -min(command.charge_kw, limit - first.kw), REACTIVE_RECHARGE
        reason = f"Charging {_power(-setpoint)} until {_clock(until)} under the reactive threshold " \
                 f"{_power(limit)} ({why})."
    else:
        kind, setpoint, code = "pcs_idle", 0.0, REACTIVE_IDLE
        limit_text = "no threshold yet" if math.isinf(limit) else f"the reactive threshold {_power(limit)}"
        reason = f"Idle until {_clock(until)} at {limit_text} ({why})."
    return Plan(target_kw=limit, holdable_kw=limit, command=command, kind=kind, setpoint_kw=setpoint, until_ms=until,
                schedule_kw=(setpoint,), forecast_peak_kw=peak.kw, forecast_peak_ms=peak.ts_ms, reason=reason,
                reason_code=code, relocation=relocation)


def _valley_kw(forecast: Sequence[ForecastPoint], policy: Policy) -> float:
    ranked = sorted(p.kw for p in forecast)
    return ranked[min(len(ranked) - 1, int(policy.valley_quantile * len(ranked)))]


def _charge_steps(forecast: Sequence[ForecastPoint], tariff: Tariff, policy: Policy) -> list[bool]:
    valley, cheap, prices = _valley_kw(forecast, policy), tariff.cheap_price, tariff.prices_by_hour
    return [p.kw <= valley or prices[_hour(p.ts_ms)] <= cheap for p in forecast]


def sure_bill_kw(forecast: Sequence[ForecastPoint], battery: Battery, billing: Billing) -> float:
    """The least this period will bill whatever the battery does, as far as the forecast sees: the lower edge of
    its band at the highest step still in the period, less the PCS's power (no dispatch shaves more off a step)."""
    end = period_end_ms(forecast[0].ts_ms, billing.period)
    lows = [p.lower_kw for p in forecast if p.ts_ms < end]
    return max(0.0, max(lows, default=0.0) - battery.pcs_discharge_kw)


def charge_ceiling_kw(target_kw: float, billed_kw: float, headroom_pct: float) -> float:
    """The import charging stays under: never above the target nor above what the period already pays for, less
    the policy's headroom."""
    return min(target_kw, billed_kw) * (1 - headroom_pct / 100)


def episode_end(charge_at: Sequence[bool]) -> int:
    """End of the coming peak episode: the first recharge step after the first step without one.

    Later peaks get their own target after the battery has recharged, so they must not lift this one.
    """
    k = 0
    while k < len(charge_at) and charge_at[k]:
        k += 1
    while k < len(charge_at) and not charge_at[k]:
        k += 1
    return max(1, k)


def _lowest_holdable(load, charge_at, battery: Battery, energy: float, step_h: float, policy: Policy,
                     billed_kw: float) -> float:
    def holds(limit: float) -> bool:
        return battery.holds(load, charge_at, energy, step_h, limit,
                             charge_ceiling_kw(limit, billed_kw, policy.charge_headroom_pct))

    hi = max(load)
    lo = max(0.0, hi - battery.pcs_discharge_kw)
    if holds(lo):
        return lo
    while hi - lo > policy.tolerance_kw:
        mid = (lo + hi) / 2
        if holds(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _run_end(forecast, schedule, kind: str, step_s: int) -> int:
    sign = {"pcs_discharge": 1, "pcs_charge": -1, "pcs_idle": 0}[kind]
    end = forecast[0].ts_ms + step_s * 1000
    for point, kw in zip(forecast[1:], schedule[1:]):
        if (kw > 1e-6) - (kw < -1e-6) != sign:
            break
        end = point.ts_ms + step_s * 1000
    return end


def _relocation(forecast, step_s: int, holdable: float, billing: Billing, now_ms: int,
                policy: Policy) -> Relocation | None:
    """Jobs to move when the battery cannot hold the period's billed peak (or the import cap) this episode."""
    settled = now_ms - billing.start_ms >= policy.settle_share * PERIOD_DAYS[billing.period] * 86_400_000
    holds = [h for h in (billing.billed_peak_kw if settled else None, policy.import_cap_kw) if h is not None]
    if not holds:
        return None
    hold = min(holds)
    shortfall = holdable - hold
    if shortfall < policy.min_shed_kw:
        return None
    over = [p.ts_ms for p in forecast if p.kw > hold]
    start, end = (over[0], over[-1] + step_s * 1000) if over else (forecast[0].ts_ms, forecast[-1].ts_ms)
    shed = min(shortfall, policy.max_shed_kw)
    over_cap = hold == policy.import_cap_kw
    what = "the import cap" if over_cap else f"{billing.name}'s billed peak"
    reason = (f"Relocate {_power(shed)} of low-priority GPU jobs from {_clock(start)} to {_clock(end)}: "
              f"the battery can hold grid import only at {_power(holdable)}, {_power(shortfall)} above "
              f"{what} of {_power(hold)}.")
    return Relocation(shed_kw=shed, start_ms=start, end_ms=end, reason=reason,
                      reason_code=RELOCATE_OVER_IMPORT_CAP if over_cap else RELOCATE_OVER_BILLED_PEAK)


@dataclass(frozen=True)
class _Context:
    billing: Billing
    target: float
    holdable: float
    peak: ForecastPoint
    horizon_h: float
    soc_pct: float
    import_cap_kw: float | None = None
    floor_kw: float | None = None  # the reactive threshold, where it set the target

    def _target(self) -> tuple[str, str]:
        """How to name the target, and the period's billed peak when the target is above it."""
        billed = self.billing.billed_peak_kw
        if self.target <= billed + 1e-6:
            return f"{self.billing.name}'s {_power(billed)}", ""
        so_far = f" ({self.billing.name} so far: {_power(billed)})" if billed else ""
        if self.floor_kw is not None and self.target == self.floor_kw:
            return f"the reactive threshold {_power(self.target)} (the floor under the plan)", so_far
        return f"the {_power(self.target)} the battery can hold over the next {self.horizon_h:g} h", so_far

    def _holding(self) -> str:
        """The code of what a discharge holds import to: the cap where it binds, else as ``_target`` names it."""
        cap = self.import_cap_kw
        if cap is not None and self.target == cap < max(self.billing.billed_peak_kw, self.holdable):
            return HOLD_IMPORT_CAP
        if self.floor_kw is not None and self.target == self.floor_kw:
            return REACTIVE_FLOOR
        return SHAVE_PEAK if self.target > self.billing.billed_peak_kw + 1e-6 else HOLD_BILLED_PEAK

    # Each returns (reason code, sentence).
    def discharging(self, setpoint: float, until: int, cheap: bool) -> tuple[str, str]:
        what, so_far = self._target()
        excess = self.peak.kw - self.target
        return self._holding(), (
            f"Discharging up to {_power(setpoint)} until {_clock(until)}: forecast peak {_power(self.peak.kw)} "
            f"at {_clock(self.peak.ts_ms)} exceeds {what} by {_power(excess)}{so_far}.")

    def charging(self, setpoint: float, until: int, cheap: bool) -> tuple[str, str]:
        when = "cheap hours" if cheap else "a valley"
        return RECHARGE_CHEAP_HOURS if cheap else RECHARGE_VALLEY, (
            f"Charging {_power(-setpoint)} until {_clock(until)} in {when}: the battery is at "
            f"{self.soc_pct:.0f}% and grid import stays under {_power(self.target)}.")

    def topping_up(self, setpoint: float, until: int, cheap: bool) -> tuple[str, str]:
        return RECHARGE_BEFORE_PEAK, (
            f"Charging {_power(-setpoint)} now, under {_power(self.target)}: the battery is at {self.soc_pct:.0f}% "
            f"and the forecast peak {_power(self.peak.kw)} at {_clock(self.peak.ts_ms)} is still to come.")

    def idle(self, setpoint: float, until: int, cheap: bool) -> tuple[str, str]:
        what, _ = self._target()
        if self.peak.kw > self.target:
            return WAIT_FOR_PEAK, (
                f"Idle until {_clock(until)}, holding grid import at {what}: the forecast peak "
                f"{_power(self.peak.kw)} comes at {_clock(self.peak.ts_ms)}.")
        return IDLE_BELOW_TARGET, (
            f"Idle until {_clock(until)}: forecast peak {_power(self.peak.kw)} at {_clock(self.peak.ts_ms)} "
            f"stays under {what}; battery at {self.soc_pct:.0f}%.")


def _power(kw: float) -> str:
    return f"{kw / 1000:,.1f} MW" if abs(kw) >= 10_000 else f"{kw:,.0f} kW"


def _clock(ts_ms: int) -> str:
    return format_ms(ts_ms, "%H:%M")


def _hour(ts_ms: int) -> int:
    return (ts_ms // 3_600_000) % 24


PERIOD_DAYS = {"month": 30.0, "week": 7.0, "day": 1.0}  # nominal lengths, for shares of a period


def billing_period(ts_ms: int, period: str = "month") -> tuple[str, int]:
    """The billing period (``month``, ``week`` from Monday, or ``day``; UTC) of an event time: key and start.

    >>> billing_period(961_459_200_000, "week")  # 2000-06-20, a Tuesday
    ('2000-W25', 961372800000)
    """
    t = datetime.fromtimestamp(ts_ms / 1000, timezone.utc)
    day = datetime(t.year, t.month, t.day, tzinfo=timezone.utc)
    if period == "month":
        start, key = day.replace(day=1), f"{t.year:04d}-{t.month:02d}"
    elif period == "week":
        start = day - timedelta(days=t.weekday())
        year, week, _ = start.isocalendar()
        key = f"{year:04d}-W{week:02d}"
    elif period == "day":
        start, key = day, day.strftime("%Y-%m-%d")
    else:
        raise ValueError(f"unknown billing period {period!r}: expected one of {', '.join(PERIOD_DAYS)}")
    return key, int(start.timestamp() * 1000)


def period_end_ms(ts_ms: int, period: str = "month") -> int:
    """When the billing period of ``ts_ms`` ends: the next one's start.

    >>> period_end_ms(961_459_200_000, "month") == billing_period(962_409_600_000)[1]  # 2000-06-20 -> 2000-07-01
    True
    """
    start = billing_period(ts_ms, period)[1]
    into_next = {"month": 32, "week": 7, "day": 1}[period]  # days from a period's start into the next one
    return billing_period(start + into_next * 86_400_000, period)[1]
