"""One site's peak-shaving loop: site snapshots -> planning steps -> forecast, plan and proposed actions.

Pure and deterministic (event time only), so the Faust agent and the offline
evaluation run the very same code, and the agent's state is this object
(pickled into a Faust table). Snapshots (e.g. 1-minute rollup windows) are
averaged into planning steps of ``step_s`` (default 15 minutes, the billing
interval). When a step closes, the loop

1. adds the step's average grid import to this billing period's billed peak,
2. teaches the forecaster the step's site load (grid import + battery discharge),
3. forecasts a day ahead and plans (``models.peak_planner.plan``),
4. returns a ``PeakForecast`` record (the first ``forecast_steps``) and the proposed
   ``Action`` records: the PCS action for the next step, plus a Slurm hold with
   the kW to shed when the battery cannot hold the target. Each action's
   ``reason_code`` is the planner's (``models.peak_planner.REASON_CODES``).
   With levers (``LoopConfig.levers``: the site's ``flexible_load`` priced by the policy),
   ``models.levers`` plans beside the battery: in forecast mode the PCS holds the lower
   target the levers make worth their cost, the engaged levers are proposed for the next
   step (``models.levers.REASON_CODES``), and they replace the Slurm hold.

With ``control="grid_limit"`` (``OPSLOOP_PEAKS_CONTROL``; the default is ``setpoint``) the PCS action carries the plan's grid limit, as peak-shaving EMS controllers take it (``params.control`` = ``grid_limit``): the PCS follows the
site meter through the step, discharging just enough to hold ``grid_limit_kw``, so the live
loop runs the very ``Command`` the offline evaluation steps. ``setpoint_kw`` is then the most
it may discharge (``pcs_discharge``, whenever the battery can give anything: the limit is held
even when no discharge is forecast, ``hold_grid_limit``) or charge (``pcs_charge``), which the
guard bounds as it bounds a setpoint; ``params.expected_kw`` is the power the plan expects on
its forecast. A grid limit lives ``limit_life_steps`` steps (the next step's action, which
lands minutes into its step, replaces it; one the guard refuses leaves the one before in
force), so no step runs without one; its discharge cap is sized so that even held for that
whole life it keeps the guard's reserve (``cap_reserve_soc_pct``). ``control="setpoint"``
(``OPSLOOP_PEAKS_CONTROL``) proposes the fixed setpoint planned from the forecast.

With the Slurm queue (``on_queue``: the latest whole ``slurm.queue`` snapshot, a hint) the forecaster also
learns and forecasts with the GPU kW the queue expects to be running in each step (``models.queue_covariate``);
the covariate joins the forecaster with the first snapshot (``queue_covariate`` False: never), so a loop that is
never given one forecasts exactly as without it. The outside-temperature forecast (``on_weather``: (valid
time, degC) points, ``models.weather_covariate``) joins the same way (``weather_covariate``).

A snapshot at or before one already folded in is ignored: after a restart,
replayed snapshots neither count twice nor change any decision. Action ids are
a hash of the action's inputs, so the same decision always has the same id.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Container
from dataclasses import dataclass, field, replace

from opsloop.config.policy import LeverCosts
from opsloop.config.site import FlexibleLoad, Site
from opsloop.models import levers as flex
from opsloop.models.battery import Battery
from opsloop.models.peak_forecast import PeakForecaster
from opsloop.models.queue_covariate import QueueCovariate
from opsloop.models.weather_covariate import MAX_AGE_S as WEATHER_MAX_AGE_S
from opsloop.models.weather_covariate import WeatherCovariate
from opsloop.models.peak_modes import FLOORED, FORECAST, REACTIVE, UNFLOORED, ModeArbiter, ReactiveRule
from opsloop.models.peak_planner import (HOLD_GRID_LIMIT, PERIOD_DAYS, REACTIVE_FLOOR_LIFTED, SHAVE_PEAK,
                                         WAIT_FOR_PEAK, Billing, Plan, Policy, Tariff, _charge_steps,
                                         billing_period, charge_ceiling_kw, period_end_ms, plan, reactive_plan)


RECENT_IMPORT_DAYS = 7  # the levers never cut under the highest import of this many days (models.levers)


@dataclass(frozen=True)
class LoopConfig:
    site: str
    ess_id: str
    battery: Battery
    step_s: int = 900
    plan_steps: int | None = None  # default: one day of steps
    forecast_steps: int | None = None  # published in forecasts.peak; default: 4 h of steps
    tariff: Tariff = Tariff()
    policy: Policy = Policy()
    billing_period: str = "month"  # month | week | day: how the tariff bills demand
    slurm_target: str = "slurm"
    slurm_partition: str = "batch"  # where low-priority, relocatable jobs run
    slurm_hold_s: int = 3600  # a hold lasts at most this long (the guard's max_hold_s); re-proposed while needed
    kw_per_gpu: float | None = None  # estimated draw of one relocatable GPU: holds then declare params.gpus
    proposer: str = "peaks"
    reactive_percentile: float = 95.0  # the reactive rule the plan is measured against (models.peak_modes)
    skill_periods: int = 4  # closed billing periods that decide which mode runs the next one
    skill_days: int = 0  # before two periods close, decide each day on this many closed days (0: the plan)
    # The plan never discharges less than the reactive rule would once the load passes the billed peak
    # (``models.peak_planner.plan``'s ``reactive_kw``): a floor by design until measured otherwise. On, as
    # leave-one-curve-out over the peaks suite chose on every curve against the plan alone
    # (see docs/evaluations/peaks.md).
    reactive_floor: bool = True
    # The floor lifted by measured evidence (models.peak_modes.ModeArbiter.floor_lifted): while, over the last this
    # many closed days, the plan without it cut the billed peak so far by more (beyond ``floor_margin_pct`` of the
    # PCS's power a day) than with it, both shadowed. 0: the floor is never lifted. 7: leave-one-curve-out over
    # off, on, on judged on 3 days and on judged on 7 chose 7 on every curve of the peaks suite
    # (docs/evaluations/peaks.md): it keeps the four NAB weeks the floor won and gives back much of what it cost
    # BDEW h0 and g6.
    floor_skill_days: int = 7
    floor_margin_pct: float = 1.0
    # The recent-peak bound (a peak like last week's may come again, so do not spend energy under it less the PCS's
    # power) never holds the target above the reactive rule's threshold: it is a guess, not the forecast the
    # floor's lifting measured, and with the floor lifted it left a full battery idle over the rule's threshold.
    # On: chosen on a third fresh SimBench set, fixed before it was scored (docs/evaluations/peaks.md,
    # "Fresh curves"). It needs the rule's threshold, so ``reactive_floor`` on.
    bound_under_threshold: bool = True
    # The mode before any skill is measured (models.peak_modes). reactive (with skill_days) saved the two
    # ec2 series a first-day loss but cost every other curve its first days (Taylor 91.0% -> 85.5% monthly).
    start_mode: str = FORECAST
    holidays: Container | None = field(default=None, compare=False)  # days forecast like a Sunday (site.country)
    band_memory_steps: float | None = None  # the forecaster's error_halflife, its band's memory (None: its own)
    control: str = "setpoint"  # setpoint: a fixed kW | grid_limit: the PCS holds the plan's import limit
    # A grid limit stays in force until a later step's action replaces it (it lands minutes into its step, and
    # the guard may refuse one, e.g. on ESS state a few minutes too old), so it lives ``limit_life_steps``
    # steps; its cap never takes the battery under ``cap_reserve_soc_pct`` (the guard's reserve, default the
    # battery's) over that life, as the guard checks the cap.
    limit_life_steps: int = 3
    cap_reserve_soc_pct: float | None = None
    # Flexible load beside the battery (models.levers): the levers the site offers, priced by the policy.
    levers: tuple = ()
    lever_costs: LeverCosts | None = None
    flexible_load: FlexibleLoad | None = None
    # A cut pays only if it holds through the days left in the billing period (models.levers.BillOdds): each is
    # taken to be like one of the last 28 days, its peak blurred by ``bill_odds_width`` of their mean; days come
    # in spells rather than as independent draws, so ``bill_odds_day_share`` of them count. Chosen by
    # leave-one-curve-out (docs/evaluations/peaks.md, "Flexible-load levers beside the battery").
    bill_odds_width: float = 0.02
    bill_odds_day_share: float = 1.0
    # The Slurm queue's expected GPU kW per step as a forecast covariate (models.queue_covariate), once a queue
    # snapshot comes; one older than ``queue_max_age_s`` is not used.
    queue_covariate: bool = True
    queue_max_age_s: float = 3600.0
    # The outside-temperature forecast as a covariate (models.weather_covariate), once a forecast comes; one issued
    # more than ``weather_max_age_s`` ago is not used.
    weather_covariate: bool = True
    weather_max_age_s: float = WEATHER_MAX_AGE_S

    @classmethod
    def from_site(cls, site: Site, step_s: int = 900, battery_kwh: float | None = None,
                  pcs_kw: float | None = None, reserve_soc_pct: float | None = None,
                  max_soc_pct: float | None = None, lever_costs: LeverCosts | None = None,
                  lever_kinds: tuple[str, ...] | None = None, **overrides) -> "LoopConfig":
        """The site's first ESS, import cap, tariff, billing period and preemptible Slurm partition.

        ``battery_kwh`` / ``pcs_kw`` resize the battery; ``reserve_soc_pct`` / ``max_soc_pct`` narrow the
        state of charge it is planned in (the guard's window: a plan for energy the guard will not let the
        PCS use is a plan the site cannot follow); with ``lever_costs`` (the policy's ``levers``) the
        site's ``flexible_load`` becomes levers beside it (only those of ``lever_kinds``, if given);
        ``overrides`` replace other fields.
        """
        if not site.ess:
            raise site.error("ess", "the peaks loop needs an entry with capacity_kwh, pcs_charge_kw, "
                                    "pcs_discharge_kw")
        ess = site.ess[0]
        resized = {"capacity_kwh": battery_kwh} if battery_kwh is not None else {}
        if pcs_kw is not None:
            resized.update(pcs_charge_kw=float(pcs_kw), pcs_discharge_kw=float(pcs_kw))
        if reserve_soc_pct is not None:
            resized["reserve_soc_pct"] = max(ess.reserve_soc_pct, reserve_soc_pct)
        if max_soc_pct is not None:
            resized["max_soc_pct"] = min(100.0, max_soc_pct)
        battery = Battery.from_spec(ess, **{k: float(v) for k, v in resized.items()})
        relocatable = next((p for p in site.gpu_pods if "preemptible" in p.description), None)
        cap = site.grid_import_cap_kw
        # What relocating the preemptible pod's jobs can give at most: its share of IT at the import cap.
        shed = relocatable.it_share * cap if relocatable and cap else math.inf
        gpus = relocatable.gpus if relocatable else 0
        kw_per_gpu = shed / gpus if gpus and shed != math.inf else None  # the pod's IT at the cap, per GPU
        config = cls(site=site.id, ess_id=ess.id, battery=battery, step_s=step_s,
                     tariff=Tariff(site.prices_by_hour) if site.prices_by_hour else Tariff(),
                     policy=Policy(import_cap_kw=cap, max_shed_kw=shed),
                     slurm_partition=(relocatable.slurm_partition if relocatable else None) or "batch",
                     billing_period=site.demand_billing_period, kw_per_gpu=kw_per_gpu,
                     holidays=site.holiday_calendar())
        if lever_costs is not None and site.flexible_load is not None:
            levers = flex.catalogue(site.flexible_load, lever_costs)
            config = replace(config, levers=levers if lever_kinds is None else flex.only(levers, lever_kinds),
                             lever_costs=lever_costs, flexible_load=site.flexible_load)
        return replace(config, **overrides)

    @property
    def day_steps(self) -> int:
        return max(1, 86_400 // self.step_s)


@dataclass
class Decision:
    step_start_ms: int
    load_kw: float
    plan: Plan
    forecast: dict  # PeakForecast record
    actions: list[dict] = field(default_factory=list)  # Action records
    mode: str = FORECAST  # which mode decided: forecast (the plan) or reactive (the one-line rule)
    levers: flex.LeverPlan | None = None  # the levers beside the battery, when the site has any


class SitePeakLoop:
    def __init__(self, config: LoopConfig, forecaster: PeakForecaster | None = None):
        memory = {} if config.band_memory_steps is None else {"error_halflife": config.band_memory_steps}
        self.forecaster = forecaster or PeakForecaster(step_s=config.step_s, season_steps=config.day_steps,
                                                      holidays=config.holidays, **memory)
        self.reactive = ReactiveRule(config.step_s, percentile=config.reactive_percentile)
        self.arbiter = ModeArbiter(config.battery, skill_periods=config.skill_periods, skill_days=config.skill_days,
                                   start_mode=config.start_mode)
        self.billing: Billing | None = None
        self.last_window_ms: int | None = None  # latest snapshot folded in
        self._open: list | None = None  # [step index, grid sum, load sum, n, soc, soh]
        self.lever_usage = flex.Usage()  # hours each lever was engaged today, for its daily budget
        self.daily_import: dict[int, float] = {}  # day -> its highest step import (the last week), for the levers
        self.queue: QueueCovariate | None = None  # the latest Slurm queue snapshot, once one came
        self.weather: WeatherCovariate | None = None  # the latest outside-temperature forecast, once one came
        self.reconfigure(config)  # the config, and how the floor is judged

    def __setstate__(self, state: dict) -> None:
        """A loop pickled before the mode arbiter existed starts measuring from here, the plan deciding."""
        self.__dict__.update(state)
        self.__dict__.setdefault("lever_usage", flex.Usage())
        self.__dict__.setdefault("daily_import", {})
        self.__dict__.setdefault("queue", None)
        self.__dict__.setdefault("weather", None)
        if "arbiter" not in state:
            self.reactive = ReactiveRule(self.config.step_s, percentile=self.config.reactive_percentile)
            self.arbiter = ModeArbiter(self.config.battery, skill_periods=self.config.skill_periods)

    def reconfigure(self, config: LoopConfig) -> None:
        """Today's configuration over a restored loop: its limits, and how the floor is judged (an arbiter saved
        before the floor was judged by skill starts measuring it now)."""
        self.config = config
        self.arbiter.floor_skill_days = config.floor_skill_days if config.reactive_floor else 0
        self.arbiter.floor_margin_pct = config.floor_margin_pct

    def on_queue(self, records: list[dict]) -> None:
        """The site's latest whole Slurm queue snapshot (``SlurmQueue`` records): the forecaster sees it from the
        next step on."""
        if not self.config.queue_covariate or not records:
            return
        if self.queue is None:
            self.queue = self._joined(QueueCovariate, self.config.queue_max_age_s)
        self.queue.observe(records)

    def on_weather(self, issued_ms: int, points: list[tuple[int, float]]) -> None:
        """The site's latest outside-temperature forecast ((valid time, degC) points): the forecaster sees it from
        the next step on."""
        if not self.config.weather_covariate or not points:
            return
        if self.weather is None:
            self.weather = self._joined(WeatherCovariate, self.config.weather_max_age_s)
        self.weather.observe(issued_ms, points)

    def _joined(self, kind, max_age_s: float):
        """A new covariate of ``kind`` (a ``StepCovariate``) over the plan's horizon, joined to the forecaster."""
        covariate = kind(step_s=self.config.step_s, max_age_s=max_age_s,
                         horizon_steps=self.config.plan_steps or self.config.day_steps)
        self.forecaster.add_covariate(covariate.name)
        return covariate

    def warm_up(self, start_ms: int, load_kw: float) -> None:
        """Learn a step of history without planning (an offline evaluation's warm-up)."""
        self.learn(start_ms, load_kw, steps=1)  # only the next step's expectation is kept
        self.reactive.learn_one(start_ms, load_kw)

    def learn(self, start_ms: int, load_kw: float, steps: int | None = None) -> list[dict] | None:
        """Teach the forecaster the closed step (with the queue's and the weather's covariates, where they came);
        returns the covariates of the ``steps`` ahead (default: the plan's), or None when none is known."""
        cfg = self.config
        step_end = start_ms + cfg.step_s * 1000
        covariates = [c for c, on in ((self.queue, cfg.queue_covariate), (self.weather, cfg.weather_covariate))
                      if on and c is not None]
        x = {"ts_ms": start_ms}
        for covariate in covariates:
            x.update(covariate.step_x(start_ms, step_end))
        self.forecaster.learn_one(load_kw, x)
        ahead = [xs for c in covariates if (xs := c.future_xs(step_end, steps or cfg.plan_steps or cfg.day_steps))]
        return [{k: v for xs in step for k, v in xs.items()} for step in zip(*ahead)] if ahead else None

    def on_snapshot(self, snap: dict) -> list[Decision]:
        """Fold one SiteSnapshot in; returns the decisions of the steps it closed (0, 1 or 2)."""
        start = snap["window_start_ms"]
        if self.last_window_ms is not None and start <= self.last_window_ms:
            return []
        self.last_window_ms = start
        step_ms = self.config.step_s * 1000
        decisions = []
        index = start // step_ms
        if self._open is not None and self._open[0] != index:
            decisions += self._close()
        grid = snap.get("grid_kw")
        if grid is not None:
            load = grid + (snap.get("ess_kw") or 0.0)
            if self._open is None:
                self._open = [index, 0.0, 0.0, 0, None, None]
            acc = self._open
            acc[1] += grid
            acc[2] += load
            acc[3] += 1
            acc[4] = snap.get("ess_soc_pct") if snap.get("ess_soc_pct") is not None else acc[4]
            acc[5] = snap.get("ess_soh_pct") if snap.get("ess_soh_pct") is not None else acc[5]
        if self._open is not None and snap["window_end_ms"] >= (self._open[0] + 1) * step_ms:
            decisions += self._close()
        return decisions

    def _close(self) -> list[Decision]:
        index, grid_sum, load_sum, n, soc, soh = self._open
        self._open = None
        return [self.on_step(index * self.config.step_s * 1000, load_sum / n, grid_sum / n, soc, soh)]

    def on_step(self, start_ms: int, load_kw: float, grid_kw: float, soc_pct: float | None,
                soh_pct: float | None, billed: bool = True) -> Decision:
        """One closed planning step: learn, forecast, plan for the next step (``billed``: count its import)."""
        cfg = self.config
        key, _ = billing_period(start_ms, cfg.billing_period)
        if self.billing is None or self.billing.key != key:  # billed from here: the period's start, or ours
            self.billing = Billing(key, 0.0, start_ms, cfg.billing_period)
        if billed:
            self.billing = replace(self.billing, billed_peak_kw=max(self.billing.billed_peak_kw, grid_kw))
            day = start_ms // 86_400_000
            self.daily_import = {d: kw for d, kw in self.daily_import.items() if d > day - RECENT_IMPORT_DAYS}
            self.daily_import[day] = max(self.daily_import.get(day, 0.0), grid_kw)
        xs = self.learn(start_ms, load_kw)
        horizon = cfg.plan_steps or cfg.day_steps
        points = self.forecaster.forecast_points(horizon) if xs is None else self.forecaster.forecast_points(horizon, xs)
        battery = cfg.battery if soh_pct is None else replace(cfg.battery, soh_pct=soh_pct)
        soc = 100.0 if soc_pct is None else soc_pct
        energy = battery.energy_kwh(soc)
        arbiter = self.arbiter
        arbiter.measure(load_kw, cfg.step_s, energy, start_ms)
        self.reactive.learn_one(start_ms, load_kw)
        step_end = start_ms + cfg.step_s * 1000
        next_key, next_start = billing_period(step_end, cfg.billing_period)
        if next_key != self.billing.key:  # the step planned opens a new billing period: nothing is billed in it yet
            self.billing = Billing(next_key, 0.0, next_start, cfg.billing_period)
        mode = arbiter.start_period(next_key, step_end)
        # A day billed alone is not bounded by the days before it (a Sunday after a weekday peak): the
        # recent peak is then the day's own so far; weeks and months look back a week.
        recent_peak = self.reactive.recent_peak_kw(step_end, days=0 if cfg.billing_period == "day" else 7)
        threshold = self.reactive.threshold_kw(step_end) if cfg.reactive_floor else None
        if cfg.bound_under_threshold and threshold is not None and math.isfinite(threshold):
            recent_peak = min(recent_peak, threshold + cfg.battery.pcs_discharge_kw)
        lifted = arbiter.floor_lifted()
        floor = None if lifted else threshold
        result = plan(points, cfg.step_s, battery, soc, self.billing, now_ms=step_end,
                      tariff=cfg.tariff, policy=cfg.policy, recent_peak_kw=recent_peak, reactive_kw=floor)
        if lifted:
            result = self._floor_lifted(result, threshold)

        # The shadows plan from their own battery and billed peak (the same as the site's while the plan decides).
        def shadow_command(name: str, reactive_kw: float | None, planned: Plan):
            shadow = arbiter.shadows[name]
            same = (abs(shadow.energy_kwh - energy) < 1e-6
                    and abs(shadow.billed_kw - self.billing.billed_peak_kw) < 1e-6 and reactive_kw == floor)
            return planned.command if same else plan(
                points, cfg.step_s, battery, battery.soc_pct(shadow.energy_kwh),
                Billing(next_key, shadow.billed_kw, max(next_start, self.billing.start_ms), cfg.billing_period),
                now_ms=step_end, tariff=cfg.tariff, policy=cfg.policy, recent_peak_kw=recent_peak,
                reactive_kw=reactive_kw).command

        arbiter.shadows[FORECAST].pending = shadow_command(FORECAST, floor, result)
        if arbiter.floor_skill_days:  # the plan with the floor and without it, to judge the floor by
            arbiter.shadows[FLOORED].pending = shadow_command(FLOORED, threshold, result)
            arbiter.shadows[UNFLOORED].pending = shadow_command(UNFLOORED, None, result)
        reactive = arbiter.shadows[REACTIVE]
        reactive.pending = self.reactive.command(battery, reactive.energy_kwh, step_end)
        if mode == REACTIVE:
            if arbiter.starting():
                why = ("the forecast plan has not yet shown it cuts the peak more: "
                       + (f"{len(arbiter.days)} of the {arbiter.skill_days} days it is measured on have closed"
                          if arbiter.skill_days else f"no two {cfg.billing_period}s have closed"))
            elif arbiter.by_days():
                skill = arbiter.day_skill()
                why = (f"over the last {len(arbiter.days)} days it cut the daily peaks by {skill[REACTIVE]:,.0f} kW "
                       f"in all against the forecast plan's {skill[FORECAST]:,.0f} kW")
            else:
                skill = arbiter.skill()
                why = (f"over the last {len(arbiter.history)} {cfg.billing_period}s it cut the billed peak by "
                       f"{skill[REACTIVE]:,.0f} kW against the forecast plan's {skill[FORECAST]:,.0f} kW")
            result = reactive_plan(points, cfg.step_s, self.reactive.command(battery, energy, step_end), why,
                                   result.relocation)
        levers = None
        if cfg.levers and cfg.lever_costs is not None:
            levers = self._plan_levers(points, result, battery, energy, step_end)
            result = replace(result, relocation=None)  # one planner: the levers, a hold among them, replace it
            if mode == FORECAST and levers.target_kw < result.target_kw:  # the battery holds the lower target
                result = replace(result, target_kw=levers.target_kw, reason=f"{result.reason} {levers.reason}",
                                 command=replace(result.command, limit_kw=levers.target_kw))
        decision = Decision(start_ms, load_kw, result, self._forecast_record(points, result, step_end),
                            self._actions(result, step_end, soc_pct, soh_pct), mode, levers)
        if levers is not None and levers.mix.engagements:
            decision.actions += self._lever_actions(levers, step_end)
        return decision

    def _floor_lifted(self, result: Plan, threshold: float | None) -> Plan:
        """A plan that holds import above the reactive threshold because the floor is lifted says so."""
        billed = self.billing.billed_peak_kw
        if threshold is None or not math.isfinite(threshold) or max(threshold, billed) >= result.target_kw:
            return result  # the floor would not have bound
        skill = self.arbiter.floor_skill()
        why = (f" The reactive floor at {threshold:,.0f} kW is lifted: over the last {len(self.arbiter.floor_days)} "
               f"days the plan without it cut the billed peak by {skill[UNFLOORED]:,.0f} kW in all against "
               f"{skill[FLOORED]:,.0f} kW with it.")
        code = REACTIVE_FLOOR_LIFTED if result.reason_code in (SHAVE_PEAK, WAIT_FOR_PEAK) else result.reason_code
        return replace(result, reason=result.reason + why, reason_code=code,
                       notes={**result.notes, "reactive_floor_lifted_kw": threshold})

    def _plan_levers(self, points, result: Plan, battery: Battery, energy: float, step_end: int) -> flex.LeverPlan:
        """The levers' plan on the planner's forecast episode, from the battery's own target."""
        cfg, pol = self.config, self.config.policy
        charge_at = _charge_steps(points, cfg.tariff, pol)
        sized = [p.kw + pol.band_weight * (p.upper_kw - p.kw) for p in points]
        # a cut is held until the battery can recharge: a charge step whose load stays over the charge ceiling
        # (which a lower bill lowers) gives it nothing, so the episode goes on through it
        ceiling = charge_ceiling_kw(result.target_kw, self.billing.billed_peak_kw, pol.charge_headroom_pct)
        episode = flex.recharge_episode_end(sized, charge_at, ceiling)
        sized = sized[:episode]
        day = step_end // 86_400_000
        charge = cfg.lever_costs.demand_charge_per_kw_month * PERIOD_DAYS[cfg.billing_period] / PERIOD_DAYS["month"]
        # the days of the period left after this episode, each of which may import more and set the bill
        episode_end = step_end + episode * cfg.step_s * 1000
        days_left = max(0.0, (period_end_ms(step_end, cfg.billing_period) - episode_end)
                        / 86_400_000)
        odds = flex.BillOdds(self.reactive.daily_peaks_kw(step_end), days_left, cfg.bill_odds_width,
                              cfg.bill_odds_day_share)
        levers = flex.plan_levers(sized, charge_at[:episode], battery, energy, cfg.step_s / 3600, result.target_kw,
                                  self.billing.billed_peak_kw, cfg.levers, charge,
                                  cfg.lever_costs.battery_wear_per_kwh, self.lever_usage.today(day),
                                  pol.charge_headroom_pct, first_upper_kw=points[0].upper_kw,
                                  recent_import_kw=max(self.daily_import.values(), default=0.0), odds=odds,
                                  first_kw=points[0].kw, band_z=getattr(self.forecaster, "band_z", 1.64))
        engaged = {e.kind: e.kw[0] for e in levers.mix.engagements}
        self.lever_usage = self.lever_usage.add(day, engaged, cfg.step_s / 3600)
        return levers

    def _lever_actions(self, levers: flex.LeverPlan, issued_ms: int) -> list[dict]:
        cfg = self.config
        actions = flex.lever_actions(levers, cfg.flexible_load, cfg.site, issued_ms, cfg.step_s, cfg.proposer,
                                     cfg.slurm_target)
        for action in actions:
            action["action_id"] = action_id(action)
        return actions

    def _forecast_record(self, points, result: Plan, issued_ms: int) -> dict:
        cfg = self.config
        shown = points[: cfg.forecast_steps or max(1, 4 * 3600 // cfg.step_s)]
        peak = max(shown, key=lambda p: p.kw)
        return {
            "site": cfg.site, "issued_ms": issued_ms, "horizon_s": len(shown) * cfg.step_s, "step_s": cfg.step_s,
            "predicted_peak_kw": peak.kw, "predicted_peak_ms": peak.ts_ms, "threshold_kw": result.target_kw,
            "points": [{"ts_ms": p.ts_ms, "kw": p.kw, "lower_kw": p.lower_kw, "upper_kw": p.upper_kw} for p in shown],
            "explanation": result.reason, "model": "river BayesianLinearRegression on daily/weekly lag features",
        }

    def _actions(self, result: Plan, issued_ms: int, soc_pct: float | None = None,
                 soh_pct: float | None = None) -> list[dict]:
        cfg = self.config
        expires = issued_ms + cfg.step_s * 1000
        effect = {
            "pcs_discharge": f"Grid import held at or under {result.target_kw:,.0f} kW for the next "
                             f"{cfg.step_s / 60:g} minutes.",
            "pcs_charge": f"Battery charged at {-result.setpoint_kw:,.0f} kW, import kept under "
                          f"{result.command.charge_ceiling_kw:,.0f} kW.",
            "pcs_idle": "No change to grid import.",
        }[result.kind]
        params = {"grid_limit_kw": f"{result.target_kw:.1f}", "max_discharge_kw": f"{result.command.max_discharge_kw:.1f}",
                  "charge_ceiling_kw": f"{result.command.charge_ceiling_kw:.1f}", "planned_until_ms": str(result.until_ms),
                  "billed_peak_kw": f"{self.billing.billed_peak_kw:.1f}", "billing_period": self.billing.key}
        pcs = {"kind": result.kind, "target": cfg.ess_id, "site": cfg.site, "setpoint_kw": round(result.setpoint_kw, 1),
               "shed_kw": None, "job_ids": [], "params": params, "reason": result.reason,
               "reason_code": result.reason_code, "expected_effect": effect,
               "expected_delta_kw": -round(result.setpoint_kw, 1), "created_ms": issued_ms, "expires_ms": expires,
               "risk": "medium" if result.kind == "pcs_discharge" else "low", "proposer": cfg.proposer}
        if cfg.control == "grid_limit":
            pcs.update(self._grid_limit(result, issued_ms, soc_pct, soh_pct))
        actions = [pcs]
        if result.relocation is not None:
            r = result.relocation
            params = {"partitions": cfg.slurm_partition, "start_ms": str(r.start_ms), "end_ms": str(r.end_ms)}
            if cfg.kw_per_gpu:  # what the hold may touch: the guard budgets it, the sink stays within it
                params["gpus"] = str(math.ceil(r.shed_kw / cfg.kw_per_gpu))
            actions.append({
                "kind": "slurm_hold", "target": cfg.slurm_target, "site": cfg.site, "setpoint_kw": None,
                "shed_kw": round(r.shed_kw, 1), "job_ids": [], "params": params,
                "reason": r.reason, "reason_code": r.reason_code,
                "expected_effect": f"GPU load reduced by {r.shed_kw:,.0f} kW during the peak.",
                "expected_delta_kw": -round(r.shed_kw, 1), "created_ms": issued_ms,
                "expires_ms": min(r.end_ms, issued_ms + cfg.slurm_hold_s * 1000),
                "risk": "high", "proposer": cfg.proposer})
        for action in actions:
            action["action_id"] = action_id(action)
        return actions

    def _grid_limit(self, result: Plan, issued_ms: int, soc_pct: float | None, soh_pct: float | None) -> dict:
        """The PCS action's fields in grid-limit mode: kind, caps, reason (see the module's docstring)."""
        cfg, c = self.config, result.command
        limit, ceiling = result.target_kw, c.charge_ceiling_kw
        life_h = cfg.limit_life_steps * cfg.step_s / 3600
        battery = cfg.battery if soh_pct is None else replace(cfg.battery, soh_pct=soh_pct)
        # half a point above the reserve: the guard checks with the state of charge of a little later
        reserve = max(battery.reserve_soc_pct, cfg.cap_reserve_soc_pct or 0.0) + 0.5
        above = (100.0 if soc_pct is None else soc_pct) - reserve
        lasting = max(0.0, above / 100 * battery.full_kwh * battery.eta / life_h)  # held for its whole life
        cap_out = min(c.max_discharge_kw, battery.pcs_discharge_kw, lasting) if math.isfinite(limit) else 0.0
        cap_out, cap_in = round(cap_out, 1), 0.0
        if result.kind == "pcs_charge":  # the same for the charge: under the battery's maximum over its whole life
            room = max(0.0, battery.max_soc_pct - 0.5 - (100.0 if soc_pct is None else soc_pct))
            cap_in = round(min(-result.setpoint_kw, room / 100 * battery.full_kwh / battery.eta / life_h), 1)
        follows = (f" In grid-limit mode the PCS follows the site meter through the step: it discharges just "
                   f"enough to hold {limit:,.0f} kW, at most {cap_out:,.0f} kW.")
        if cap_in > 0:
            kind, setpoint, cap_out, code = "pcs_charge", -cap_in, 0.0, result.reason_code
            reason = (result.reason + f" In grid-limit mode the PCS follows the site meter: it charges at most "
                                      f"{cap_in:,.0f} kW while import stays under {ceiling:,.0f} kW.")
            effect = f"Battery charged at up to {cap_in:,.0f} kW, import kept under {ceiling:,.0f} kW."
        elif cap_out > 0:
            kind, setpoint = "pcs_discharge", cap_out
            code, reason = (result.reason_code, result.reason + follows) if result.kind == "pcs_discharge" else (
                HOLD_GRID_LIMIT, f"Holding grid import at or under {limit:,.0f} kW, discharging only while the load "
                                 f"passes it (at most {cap_out:,.0f} kW). {result.reason}")
            effect = f"Grid import held at or under {limit:,.0f} kW for the next {cfg.step_s / 60:g} minutes."
        elif result.kind == "pcs_charge":  # no room left to charge and nothing to hold with
            return {"kind": "pcs_idle", "setpoint_kw": 0.0, "expected_delta_kw": 0.0, "risk": "low",
                    "expected_effect": "No change to grid import.",
                    "reason": result.reason + " The battery is at its maximum state of charge: idle."}
        else:
            return {}  # nothing to hold with: a plain idle
        expected = -cap_in if cap_in > 0 else result.setpoint_kw if result.kind == "pcs_discharge" else 0.0
        params = {"control": "grid_limit", "grid_limit_kw": f"{limit:.1f}", "max_discharge_kw": f"{cap_out:.1f}",
                  "charge_kw": f"{cap_in:.1f}", "charge_ceiling_kw": f"{ceiling:.1f}", "expected_kw": f"{expected:.1f}"}
        return {"kind": kind, "setpoint_kw": setpoint, "reason": reason, "reason_code": code, "expected_effect": effect,
                "expected_delta_kw": -round(expected, 1), "params": {**self._params(result), **params},
                "risk": "medium" if kind == "pcs_discharge" else "low",
                "expires_ms": issued_ms + cfg.limit_life_steps * cfg.step_s * 1000}

    def _params(self, result: Plan) -> dict:
        return {"planned_until_ms": str(result.until_ms), "billed_peak_kw": f"{self.billing.billed_peak_kw:.1f}",
                "billing_period": self.billing.key}


def action_id(action: dict) -> str:
    """A hash of what the action does, where, when and why (not of its id)."""
    fields = ("site", "target", "kind", "created_ms", "expires_ms", "setpoint_kw", "shed_kw", "params")
    text = "|".join(f"{k}={sorted(action[k].items()) if k == 'params' else action[k]}" for k in fields)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
