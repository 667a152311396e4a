"""The loop closed on a site twin: twin -> rollup -> peaks -> guard -> pcs-sink -> PCS registers -> twin's meter.

Real Kafka, the local Slurm and the PCS simulator, all on one twin clock running ``SPEED`` times faster
than the wall clock. The first simulated day teaches the forecaster; on the second the billed peak
(daily demand billing, highest 15-minute import) measured on the twin's grid meter must fall below
the same day played with actuation off and come close to the offline evaluation's cut for the same day and
battery (the PCS holds the plan's grid limit, as that evaluation's battery does), no guard limit may be
crossed, and every action that reached
the PCS must be verified or reverted, executed once. Mid-run the PCS stops answering for an hour of twin
time and the agents are stopped and started again on their state.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import Counter

import pytest

from actuation import free_port
from opsloop.config.clock import Clock
from opsloop.config.policy import load_policy
from opsloop.config.site import load_site
from opsloop.connectors.slurm import ScontrolBackend
from opsloop.ops import pcs_sim, twin as twin_process
from opsloop.schemas.codec import Codec
from opsloop.streams import worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY_S = 86_400
# Twin seconds per wall second: the pipeline's wall latency times this must stay well inside the twin-time
# limits it is judged by (an action lives one 15-minute step; the guard trusts ESS state up to 300 s old).
SPEED = float(os.environ.get("OPSLOOP_TWIN_TEST_SPEED", "720"))  # slower: less twin time per wall-clock latency
WARM_UP_S = 20 * 3600  # the forecaster learns the day's shape from 04:00 of day one
MEASURED_S = 20 * 3600  # ... and the billed peak is measured over day two to 20:00
AGENTS = ("rollup", "peaks", "guard", "pcs-sink")


PCS_SILENT_AT_S, PCS_SILENT_WALL_S = 3 * 3600, 5.0  # day two 03:00: the PCS is silent for 5 wall s (1 twin h)
RESTART_AT_S = 7 * 3600  # day two 07:00: the agents stop and start again


class Agents:
    """The worker's agents in threads of this process, stopped and started again on the same state."""

    def __init__(self, settings, site):
        self.settings, self.site = settings, site
        self.stop_event, self.threads = threading.Event(), []

    def start(self) -> None:
        self.stop_event = threading.Event()
        processors = [worker.AGENTS[name](self.settings, self.site) for name in AGENTS]
        self.threads = [threading.Thread(target=p.run, args=(self.stop_event,), name=p.name, daemon=True)
                        for p in processors]
        for t in self.threads:
            t.start()

    def alive(self) -> bool:
        return all(t.is_alive() for t in self.threads)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(60)

    def restart(self) -> None:
        self.stop()
        self.start()


def offline_planner_peak_kw(site, physics, start_ms: int, end_ms: int, pcs) -> float:
    """What `opsloop eval peaks` gives for day two: the same planner on the twin's load without actuation, in
    15-minute steps, with the same battery and warm-up, on the evaluation's load-following battery model; the
    battery in the guard's charge window (``pcs``, the policy's PCS limits), as the live planner plans it."""
    from opsloop.models.peak_loop import LoopConfig
    from opsloop.ops.evals.peaks import evaluate

    times = list(range(start_ms, end_ms, 900_000))
    loads = [sum(physics.measure(t + k * 30_000).grid_kw for k in range(30)) / 30 for t in times]
    config = LoopConfig.from_site(site, step_s=900, pcs_kw=pcs.max_kw, reserve_soc_pct=pcs.reserve_soc_pct,
                                  max_soc_pct=pcs.max_soc_pct)
    report = evaluate(times, loads, 900, config, 50.0, warmup_days=WARM_UP_S / DAY_S)
    return report["periods"][-1]["strategies"]["planner"]["billed_peak_kw"]


def billed_peak_kw(samples: list[tuple[int, float]], step_ms: int = 900_000) -> float:
    """The highest average import over an aligned 15-minute step."""
    steps: dict[int, list[float]] = {}
    for ts, kw in samples:
        steps.setdefault(ts // step_ms, []).append(kw)
    return max(sum(v) / len(v) for v in steps.values())


def repeated_day(path) -> list[tuple[int, float]]:
    """The bundled curve's first day, played three days running: a peak the forecaster can learn in a day."""
    first = [(ts, kw) for ts, kw in twin_process.read_curve(twin_process.DEFAULT_DATA)][:48]
    rows = [(ts + day * DAY_S * 1000, kw) for day in range(3) for ts, kw in first]
    path.write_text("timestamp,demand_mw\n" + "".join(
        f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ts / 1000))},{kw}\n" for ts, kw in rows))
    return twin_process.read_curve(path)


def test_the_twin_meter_shows_a_lower_billed_peak_with_the_loop_closed(kafka_settings, slurm, read_topic, tmp_path):
    site = dataclasses.replace(load_site(kafka_settings.topology), demand_billing_period="day")
    data = tmp_path / "day.csv"
    curve = repeated_day(data)
    day_two_ms = int(curve[0][0]) + DAY_S * 1000
    start_ms, end_ms = day_two_ms - WARM_UP_S * 1000, day_two_ms + MEASURED_S * 1000
    clock = Clock.starting(start_ms / 1000, SPEED)
    port = free_port()
    settings = kafka_settings.replace(clock_epoch_s=clock.epoch_s, clock_anchor_s=clock.anchor_s,
                                      clock_speed=clock.speed, pcs_modbus=f"127.0.0.1:{port}", window_s=60,
                                      grace_s=10, verify_window_s=1800.0, peaks_step_s=900,
                                      peaks_control="grid_limit")  # the simulator reads the twin's meter
    assert settings.clock() == clock  # every part below builds this same clock from the settings
    policy = load_policy(settings.policy)

    stop_twin = threading.Event()
    # The PCS plays the site's EMS controller: its grid-limit mode follows the site load, which it reads from the
    # twin's Prometheus page (as the twin reads the ESS power from the PCS's registers).
    prometheus_port = free_port()
    meter = pcs_sim.prometheus_meter(f"http://127.0.0.1:{prometheus_port}/metrics")
    sim = pcs_sim.from_site(site, port, clock=settings.clock(), soc_pct=50.0, site_meter=meter).start()
    agents = Agents(settings, site)
    twin = twin_process.build(settings, site, clock=settings.clock(), start_ms=start_ms, sample_s=30.0, poll_s=0.1,
                              prometheus_port=prometheus_port, slurm=ScontrolBackend(slurm.env), data=data)
    twin_thread = threading.Thread(target=twin.run.run, args=(stop_twin,), name="twin", daemon=True)
    began = time.monotonic()
    try:
        agents.start()
        twin_thread.start()
        scrape, restarted, silenced = None, False, None
        while clock() * 1000 < end_ms:
            assert twin_thread.is_alive(), "the twin stopped"
            assert agents.alive(), "an agent stopped"
            now_ms = clock() * 1000
            if silenced is None and now_ms >= day_two_ms + PCS_SILENT_AT_S * 1000:
                sim.stop()  # the PCS stops answering: sinks fail, the twin keeps the battery's last power
                silenced = time.monotonic()
            if silenced and not isinstance(silenced, pcs_sim.PcsSimulator) \
                    and time.monotonic() - silenced >= PCS_SILENT_WALL_S:
                sim = silenced = pcs_sim.PcsSimulator(sim.battery, port, device=sim.device, site=sim.site,
                                                      wchamax_kw=sim.wchamax_kw, clock=settings.clock(),
                                                      site_meter=meter).start()
            if not restarted and now_ms >= day_two_ms + RESTART_AT_S * 1000:
                agents.restart()  # the worker goes away mid-run and comes back on the same state
                restarted = True
            if scrape is None and twin.poller.samples > 10:
                import urllib.request

                url = f"http://127.0.0.1:{twin.prometheus.server_port}/metrics"
                scrape = urllib.request.urlopen(url, timeout=5).read().decode()
            time.sleep(0.5)
        stop_twin.set()
        twin_thread.join(30)
        # the last actions reach the PCS and the guard, whose verification windows then close
        time.sleep(max(3.0, 1.2 * settings.verify_window_s / SPEED))
    finally:
        stop_twin.set()
        agents.stop()
        sim.stop()
        twin.close()
    wall_s = time.monotonic() - began
    codec = Codec.default()

    assert 'opsloop_twin_grid_kw{site="demo",device="grid-meter-1"}' in scrape
    assert restarted and twin.poller.pcs_errors > 0, "the faults were not injected"
    history = [(ts, grid, ess) for ts, grid, ess in twin.poller.history if ts >= day_two_ms]
    assert len(history) > 0.9 * MEASURED_S / 30, "the twin fell behind its clock"
    # the same day with actuation off: the same physics, no battery, no job stopped
    reference = twin_process.SiteTwin(site, curve)
    without = billed_peak_kw([(ts, reference.measure(ts).grid_kw) for ts, _, _ in history])
    with_loop = billed_peak_kw([(ts, grid) for ts, grid, _ in history])
    discharged = max(ess for _, _, ess in history)
    offline = offline_planner_peak_kw(site, reference, start_ms, end_ms, policy.pcs)
    live_cut, offline_cut = without - with_loop, without - offline
    print(f"twin loop: billed peak {without:.0f} kW without, {with_loop:.0f} kW with opsloop "
          f"({live_cut / without:.1%} lower; offline eval of the same day and battery: {offline:.0f} kW, "
          f"{offline_cut / without:.1%} lower; the live cut is {live_cut / offline_cut:.1%} of the offline one); "
          f"max discharge {discharged:.0f} kW; {twin.poller.points} points in {wall_s:.0f} s wall")
    assert discharged > 100, "the PCS never discharged"
    # the twin is deterministic: without the battery the day reads exactly `without`. The PCS holds the plan's grid
    # limit on the meter, as the offline evaluation's battery does, so the live cut comes close to the offline
    # one (measured 93.5-94.8% at 720x, 95.2-97.6% at 360x: each step's limit lands minutes into its step and
    # the PCS follows a meter about a twin minute old; an overshoot lifts the billed peak the next target holds)
    assert with_loop < without - 50, "the billed peak on the twin's meter did not fall"
    assert live_cut >= 0.8 * offline_cut, "the live cut fell far short of the offline evaluation's"

    # no guard limit crossed: the PCS held no setpoint beyond the policy, the import stayed under the cap
    assert all(abs(ess) <= policy.pcs.max_kw + 1 for _, _, ess in twin.poller.history)
    assert all(grid <= site.grid_import_cap_kw for _, grid, _ in twin.poller.history)
    assert twin.poller.min_soc_pct >= site.ess[0].reserve_soc_pct

    approved = [codec.decode_as("ApprovedAction", m.value()) for m in read_topic(settings, "actions.approved")]
    results = [codec.decode_as("ActionResult", m.value()) for m in read_topic(settings, "actions.results")]
    executed = Counter(r["action_id"] for r in results if r["status"] == "executed")
    assert executed and max(executed.values()) == 1, "an action was executed twice"
    settled = {r["action_id"] for r in results if r["status"] in ("verified", "reverted")}
    pcs_actions = {a["action"]["action_id"] for a in approved if a["verdict"] == "approved"
                   and a["action"]["kind"].startswith("pcs_") and not a["action"]["params"].get("revert_of")}
    unsettled = [a for a in pcs_actions & set(executed) if a not in settled]
    created = {a["action"]["action_id"]: a["action"]["created_ms"] for a in approved}
    lags = sorted(r["ts_ms"] - created[r["action_id"]] for r in results
                  if r["status"] == "executed" and r["action_id"] in created)
    p50, p95 = lags[len(lags) // 2] / 1000, lags[int(len(lags) * 0.95)] / 1000
    print(f"twin loop: {len(executed)} actions executed, {len(settled)} verified or reverted; planning step "
          f"-> PCS write p50 {p50:.0f} s / p95 {p95:.0f} s twin time ({p50 / SPEED:.2f} / {p95 / SPEED:.2f} s wall)")
    assert not unsettled, f"executed but neither verified nor reverted: {unsettled[:5]}"
