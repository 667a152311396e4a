"""`opsloop eval cooling`: cooling energy saved by the guarded supply-air setpoint loop on the site twin.

The twin (models/twin.py) plays the demo site over ``--days`` of the bundled Taylor demand curve, one
sample every ``--sample-s``; its chillers' COP rises with the supply-air setpoint and its rack inlets
follow the supply air plus a load-dependent rise (the model and its rule-of-thumb source are stated in
models/twin.py). Four runs of the same week:

- **no loop**: the setpoint stays where the plant has it (the twin's 18 degC);
- **fixed (design rule)**: one setpoint chosen as a designer would, without the week: the hottest
  inlet at the design IT load sits at the loop's aim (``inlet_max_c - inlet_margin_c``);
- **fixed (best in hindsight)**: the highest constant setpoint (0.1 degC steps) with no inlet outside
  the policy's range over this very week: an oracle no operator has, the bound for any fixed setpoint;
- **loop**: every ``--control-s`` the cooling lever reads the plant over BACnet/IP (the twin serves it,
  ops/twin_protocols.py ``BacnetPlant``; connectors/bacnet.py reads and writes it), proposes a change
  (models/cooling.py ``propose``), puts it through the guard (models/guard.py ``decide``, with the
  shipped policy's limits and ``cooling_setpoint`` in auto mode, so no operator is simulated), writes it
  at BACnet priority 8, reads it back, and verifies it (``verify``) until it holds or is reverted
  (its priority slot restored as it was before the write).

The efficiency advisor (models/efficiency.py) is scored on the no-loop week with a fault injected
(``--fault-day``: the chillers' COP falls by ``FOULING`` from then on, as a fouled condenser does): the
cooling model's error (mean absolute percentage, each sample predicted before it is learnt, after the
warm-up day and before the fault), drift advice before the fault (false alarms), the hours from the
fault to the first ``cooling_drift`` advice, and the advice per reason code with one example each.

Reported: cooling kWh of each run, the loop's saving against each reference, inlet readings outside
the range (every zone, every sample, from the twin's own state, not over BACnet), and the setpoint
changes written, verified and reverted. The loop passes when it saves at least ``TARGET_SAVING`` of
the no-loop cooling energy with no inlet outside the range and every change verified or reverted.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace

from opsloop.config.assets import DEMO_SITE
from opsloop.config.policy import KindRule, Policy, load_policy
from opsloop.config.site import Site, load_site
from opsloop.models import cooling, guard
from opsloop.models.twin import DAY_MS, SiteTwin

TARGET_SAVING = 0.05
FOULING = 0.15  # share of chiller COP lost to the injected fault


@dataclass
class Run:
    name: str
    setpoint_c: float | None  # None: the loop moves it
    cooling_kwh: float = 0.0
    it_kwh: float = 0.0
    violations: int = 0  # zone readings outside [inlet_min_c, inlet_max_c]
    hottest_c: float = -1e9
    setpoint_min_c: float = 1e9
    setpoint_max_c: float = -1e9
    setpoint_sum: float = 0.0
    samples: int = 0
    changes: int = 0
    verified: int = 0
    reverted: int = 0
    rejected: int = 0  # proposals the guard refused
    reverts_by_code: dict = field(default_factory=dict)

    def sample(self, state, setpoint_c: float, hours: float, low_c: float, high_c: float) -> None:
        self.cooling_kwh += state.cooling_kw * hours
        self.it_kwh += state.it_kw * hours
        self.violations += sum(not low_c <= c <= high_c for c in state.zone_c.values())
        self.hottest_c = max(self.hottest_c, max(state.zone_c.values(), default=self.hottest_c))
        self.setpoint_min_c, self.setpoint_max_c = min(self.setpoint_min_c, setpoint_c), max(self.setpoint_max_c,
                                                                                           setpoint_c)
        self.setpoint_sum += setpoint_c
        self.samples += 1

    def summary(self) -> dict:
        return {"name": self.name, "cooling_kwh": round(self.cooling_kwh, 1), "it_kwh": round(self.it_kwh, 1),
                "mean_pue_cooling": round(1 + self.cooling_kwh / self.it_kwh, 4) if self.it_kwh else None,
                "inlet_violations": self.violations, "hottest_inlet_c": round(self.hottest_c, 2),
                "setpoint_c": {"min": round(self.setpoint_min_c, 2), "mean": round(self.setpoint_sum / self.samples, 2),
                               "max": round(self.setpoint_max_c, 2)},
                **({"changes": self.changes, "verified": self.verified, "reverted": self.reverted,
                    "rejected_by_guard": self.rejected, "reverts_by_code": self.reverts_by_code}
                   if self.setpoint_c is None else {})}


def auto_policy(policy: Policy) -> Policy:
    """The shipped policy with ``cooling_setpoint`` in auto mode: the evaluation simulates no operator."""
    return replace(policy, rules={**policy.rules, cooling.KIND: KindRule("auto")})


def fixed_run(site: Site, curve, policy: Policy, name: str, setpoint_c: float, start_ms: int, days: float,
              sample_s: float) -> Run:
    twin, run, limits = SiteTwin(site, curve, supply_setpoint_c=setpoint_c), Run(name, setpoint_c), policy.cooling
    for ts in range(start_ms, start_ms + int(days * DAY_MS), int(sample_s * 1000)):
        run.sample(twin.measure(ts), setpoint_c, sample_s / 3600, limits.inlet_min_c, limits.inlet_max_c)
    return run


def best_fixed(site: Site, curve, policy: Policy, start_ms: int, days: float, sample_s: float) -> Run:
    """The highest constant setpoint (0.1 degC grid) with no inlet outside the range over the week."""
    limits = policy.cooling
    low, high = round(limits.setpoint_min_c * 10), round(limits.setpoint_max_c * 10)
    best = None
    while low <= high:  # violations only grow with the setpoint
        mid = (low + high) // 2
        run = fixed_run(site, curve, policy, "fixed (best in hindsight)", mid / 10, start_ms, days, sample_s)
        if run.violations == 0:
            best, low = run, mid + 1
        else:
            high = mid - 1
    return best or fixed_run(site, curve, policy, "fixed (best in hindsight)", limits.setpoint_min_c, start_ms, days,
                             sample_s)


def loop_run(site: Site, curve, policy: Policy, start_ms: int, days: float, sample_s: float, control_s: float) -> Run:
    """The guarded loop over BACnet/IP against the twin's plant device."""
    from opsloop.connectors.bacnet import BacnetClient, SetpointDriver, free_udp_port
    from opsloop.ops.twin_protocols import SETPOINT_OBJECT, BacnetPlant

    twin, run, limits, policy = SiteTwin(site, curve), Run("loop", None), policy.cooling, auto_policy(policy)
    zones = sorted(twin.measure(start_ms).zone_c)
    plant = BacnetPlant(free_udp_port(), zones, twin.supply_setpoint_c).start()
    client = BacnetClient()
    try:
        driver = SetpointDriver(client, plant.address, SETPOINT_OBJECT, plant.inlet_objects)
        changes: list[tuple[int, float]] = []
        pending = None  # (requested_c, our priority slot before, applied_ms, raise?)
        next_control = start_ms
        for ts in range(start_ms, start_ms + int(days * DAY_MS), int(sample_s * 1000)):
            twin.supply_setpoint_c = plant.setpoint_c()  # what the priority array commands now
            state = twin.measure(ts)
            plant.show(state)
            run.sample(state, twin.supply_setpoint_c, sample_s / 3600, limits.inlet_min_c, limits.inlet_max_c)
            if ts < next_control:
                continue
            next_control = ts + int(control_s * 1000)
            reading = driver.read()
            if pending is not None:
                requested, slot, applied, raised = pending
                verdict = cooling.verify(requested, reading.setpoint_c, reading.inlet_c, limits, applied, ts, raised)
                if verdict.status == cooling.VERIFIED:
                    run.verified, pending = run.verified + 1, None
                elif verdict.status == cooling.REVERT:
                    after = driver.restore(slot)  # a revert is never refused: it returns to what held before
                    changes.append((ts, after - requested))
                    run.reverted, pending = run.reverted + 1, None
                    run.reverts_by_code[verdict.reason_code] = run.reverts_by_code.get(verdict.reason_code, 0) + 1
                    reading = driver.read()
            known = cooling.CoolingState(reading.setpoint_c, reading.inlet_c, ts, tuple(changes), pending is not None)
            proposal = cooling.propose(known, limits, ts)
            if proposal is None or pending is not None:
                continue
            action = cooling.setpoint_action(site.id, SETPOINT_OBJECT, reading.setpoint_c, proposal, limits, ts,
                                             inlet_c=reading.inlet_c)
            decision = guard.decide(action, guard.PlantState(cooling=known), policy, ts)
            if decision.verdict != guard.APPROVED:
                run.rejected += 1
                continue
            slot = driver.slot()
            read_back = driver.write(proposal.setpoint_c)
            changes.append((ts, proposal.setpoint_c - reading.setpoint_c))
            run.changes += 1
            pending = (proposal.setpoint_c, slot, ts, proposal.reason_code == cooling.RAISE)
            if abs(read_back - proposal.setpoint_c) > cooling.READBACK_TOLERANCE_C:
                driver.restore(slot)
                run.reverted, pending = run.reverted + 1, None
                run.reverts_by_code[cooling.READBACK_MISMATCH] = run.reverts_by_code.get(cooling.READBACK_MISMATCH, 0) + 1
        if pending is not None:  # the week ended mid-verification: judge it on the last reading
            reading = driver.read()
            verdict = cooling.verify(pending[0], reading.setpoint_c, reading.inlet_c, limits, pending[2],
                                     pending[2] + int(limits.revert_timeout_s * 1000), pending[3])
            run.verified += verdict.status == cooling.VERIFIED
            run.reverted += verdict.status != cooling.VERIFIED
    finally:
        client.close()
        plant.stop()
    return run


def advisor_run(site: Site, curve, policy: Policy, start_ms: int, days: float, sample_s: float,
                fault_day: float) -> dict:
    """The efficiency advisor on the no-loop twin, with the chillers fouled from ``fault_day`` on."""
    from opsloop.models.efficiency import COOLING_DRIFT, EfficiencyAdvisor, PlantSample, price_now

    twin, advisor, limits = SiteTwin(site, curve), EfficiencyAdvisor(), policy.cooling
    rated = {e["id"]: float(e["rated_kw"]) for e in (site.topology or {}).get("cooling", ())
             if e.get("type") == "chiller" and e.get("rated_kw")}
    fault_ms, cop_ref = start_ms + int(fault_day * DAY_MS), twin.cop_ref
    errors, false_drift, first_drift, counts, examples = [], 0, None, {}, {}
    for ts in range(start_ms, start_ms + int(days * DAY_MS), int(sample_s * 1000)):
        twin.cop_ref = cop_ref * (1 - FOULING) if ts >= fault_ms else cop_ref
        state = twin.measure(ts)
        sample = PlantSample(ts, site.id, state.it_kw, state.cooling_kw, state.facility_kw, state.outside_c,
                             twin.supply_setpoint_c, state.zone_c, state.chiller_kw)
        if advisor.model.n >= advisor.warmup and ts < fault_ms:
            expected = advisor.model.predict_one({"it_kw": state.it_kw, "outside_c": state.outside_c,
                                                  "setpoint_c": twin.supply_setpoint_c})["cooling_kw"]
            errors.append(abs(expected - state.cooling_kw) / state.cooling_kw)
        price = price_now(site.prices_by_hour, limits.energy_price_per_kwh, ts)
        for advice in advisor.observe(sample, limits, price, rated):
            counts[advice.reason_code] = counts.get(advice.reason_code, 0) + 1
            examples.setdefault(advice.reason_code, advice.text)
            if advice.reason_code == COOLING_DRIFT:
                if ts < fault_ms:
                    false_drift += 1
                elif first_drift is None:
                    first_drift = ts
    return {"model": advisor.config, "fault_day": fault_day, "fouling": FOULING,
            "cooling_mape_before_fault": round(sum(errors) / len(errors), 4) if errors else None,
            "drift_advice_before_fault": false_drift,
            "hours_to_drift_advice": None if first_drift is None else round((first_drift - fault_ms) / 3_600_000, 2),
            "advice_by_code": counts, "examples": examples}


def evaluate(days: float = 7.0, start_day: float = 0.0, sample_s: float = 300.0, control_s: float = 900.0,
             fault_day: float | None = None, site: Site | None = None, policy: Policy | None = None) -> dict:
    from opsloop.config.assets import POLICY_FILE
    from opsloop.ops.twin import DEFAULT_DATA, read_curve

    site = site or load_site(DEMO_SITE)
    policy = policy or load_policy(POLICY_FILE)
    curve = read_curve(DEFAULT_DATA)
    start_ms = curve[0][0] + int(start_day * DAY_MS)
    limits = policy.cooling
    twin = SiteTwin(site, curve)
    design = min(limits.setpoint_max_c, int((cooling.aim_c(limits) - twin.design_rise_c()) * 10) / 10)
    runs = [fixed_run(site, curve, policy, "no loop", twin.supply_setpoint_c, start_ms, days, sample_s),
            fixed_run(site, curve, policy, "fixed (design rule)", design, start_ms, days, sample_s),
            best_fixed(site, curve, policy, start_ms, days, sample_s),
            loop_run(site, curve, policy, start_ms, days, sample_s, control_s)]
    loop = runs[-1]
    saved = {r.name: round(1 - loop.cooling_kwh / r.cooling_kwh, 4) for r in runs[:-1]}
    ok = (saved["no loop"] >= TARGET_SAVING and loop.violations == 0
          and loop.verified + loop.reverted == loop.changes)
    return {"days": days, "start_ms": start_ms, "sample_s": sample_s, "control_s": control_s,
            "inlet_range_c": [limits.inlet_min_c, limits.inlet_max_c], "aim_c": cooling.aim_c(limits),
            "runs": [r.summary() for r in runs],
            "saved_kwh": {r.name: round(r.cooling_kwh - loop.cooling_kwh, 1) for r in runs[:-1]},
            "saved_share": saved, "target_saving": TARGET_SAVING, "pass": ok,
            "advisor": advisor_run(site, curve, policy, start_ms, days, sample_s,
                                   days * 4 / 7 if fault_day is None else fault_day)}


def report(result: dict) -> list[str]:
    lines = [f"cooling loop on the twin: {result['days']:g} days, a sample every {result['sample_s']:g} s, control "
             f"every {result['control_s']:g} s, inlets kept in {result['inlet_range_c'][0]:g}-"
             f"{result['inlet_range_c'][1]:g} degC (aim {result['aim_c']:g})",
             f"{'run':<27}{'cooling kWh':>13}{'setpoint min/mean/max degC':>29}{'hottest':>9}{'violations':>12}"]
    for r in result["runs"]:
        sp = r["setpoint_c"]
        lines.append(f"{r['name']:<27}{r['cooling_kwh']:>13,.0f}{sp['min']:>13.1f}/{sp['mean']:.1f}/{sp['max']:.1f}"
                     f"{r['hottest_inlet_c']:>13.1f}{r['inlet_violations']:>12}")
    loop = result["runs"][-1]
    lines.append(f"loop: {loop['changes']} setpoint changes, {loop['verified']} verified, {loop['reverted']} reverted "
                 f"{loop['reverts_by_code'] or ''}, {loop['rejected_by_guard']} refused by the guard")
    for name, share in result["saved_share"].items():
        lines.append(f"saved against {name}: {result['saved_kwh'][name]:,.0f} kWh ({share:.1%})")
    adv = result["advisor"]
    lines.append(f"efficiency advisor ({adv['model']}): cooling MAPE {adv['cooling_mape_before_fault']:.2%} before the "
                 f"fault, {adv['drift_advice_before_fault']} drift advice before it, first drift advice "
                 f"{adv['hours_to_drift_advice']} h after {adv['fouling']:.0%} COP fouling on day {adv['fault_day']:g}; "
                 f"advice by code {adv['advice_by_code']}")
    for code, text in adv["examples"].items():
        lines.append(f"  {code}: {text}")
    lines.append(f"target: >= {result['target_saving']:.0%} against no loop, 0 violations, every change verified or "
                 f"reverted: {'PASS' if result['pass'] else 'FAIL'}")
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--days", type=float, default=7.0, help="simulated days (default 7)")
    p.add_argument("--start-day", type=float, default=0.0, help="days into the demand curve to start (default 0)")
    p.add_argument("--sample-s", type=float, default=300.0, help="twin sample interval, s (default 300)")
    p.add_argument("--control-s", type=float, default=900.0, help="cooling loop interval, s (default 900)")
    p.add_argument("--fault-day", type=float, default=None,
                   help="day the advisor's run fouls the chillers (default: 4/7 of the way through)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args) -> int:
    result = evaluate(args.days, args.start_day, args.sample_s, args.control_s, args.fault_day)
    print(json.dumps(result, indent=2) if args.json else "\n".join(report(result)))
    return 0 if result["pass"] else 1
