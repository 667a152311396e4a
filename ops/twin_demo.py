"""`opsloop demo`: the closed loop over a simulated week on the site twin, then what the twin measured.

The topology runs as in production, on its own topics (a fresh prefix, deleted at the end) and one clock
running ``speed`` times faster than the wall clock:

    twin's SunSpec meters, Prometheus page; PCS's SunSpec registers -> sources -> telemetry.raw
         -> worker (rollup, anomaly, dedup, correlate, narrate, peaks, guard, pcs-sink, slurm-sink)
         -> PCS simulator's registers, Slurm -> twin's meter

The twin (ops/twin.py) and the PCS simulator (ops/pcs_sim.py, in grid-limit mode following the twin's
Prometheus page) run in this process. The twin publishes no telemetry itself: one ``opsloop source`` child
reads its meters and the PCS over SunSpec Modbus TCP and the rest of the site from its Prometheus page
(ops/twin_sources.py), as it would read a site; the twin publishes only the alarms of the failures it injects.
The agents run in one ``opsloop worker`` child process, as a deployment runs them. Kafka and a local Slurm are
started unless running (the twin reads job states from Slurm); both, the children and the topics are stopped
or deleted at the end, also on Ctrl-C or SIGTERM.

The first ``warmup_days`` teach the forecaster; the billed peak (the highest 15-minute import of each day:
the run's site file bills daily, so every day after the warm-up shows its own cut) is then read from the
twin's grid meter. "Without opsloop" is the same twin on the same curve with the battery idle and no job
stopped (the twin is deterministic: that is the week played with actuation off, sample for sample); the
offline `opsloop eval peaks` runs on that same load with the same battery and warm-up.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from opsloop.config.settings import ENV_PREFIX, Settings

DAY_S = 86_400
AGENTS = "rollup,anomaly,dedup,correlate,narrate,peaks,guard,pcs-sink,slurm-sink"
WORKER_START_S = 20.0  # wall seconds the twin's clock waits for the worker to start before time runs
SAMPLE_S = 60.0
STEP_S = 900  # planning and demand step: the highest 15-minute import is billed, as in `opsloop eval peaks`
START_SOC_PCT = 50.0  # the PCS simulator's state of charge when the twin starts
# The twin shows about one sample per wall poll, and the sources poll as often: a reading is then at most about
# two samples older than its poll's time stamp (a slower poll made each step's load lag by minutes of twin time)
POLL_S = 0.04
SLURM_EVERY_S = 120.0  # twin seconds between the twin's reads of job states
TRUST_WALL_S = 1.0  # wall seconds of pipeline latency the guard's ESS-state age limit allows at any speed


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings that differ from the defaults as ``OPSLOOP_*`` variables, for a child process."""
    defaults = Settings()
    env = {}
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if value != getattr(defaults, f.name) and value is not None:
            env[ENV_PREFIX + f.name.upper()] = str(value)
    return env


def daily_site_file(source: Path, target: Path) -> Path:
    """The site file with daily demand billing: the demo's week then shows one billed peak per day."""
    text = source.read_text()
    billed_daily = text.replace("demand_billing_period: month", "demand_billing_period: day")
    if billed_daily == text:
        raise ValueError(f"{source}: no 'demand_billing_period: month' line to bill daily")
    target.write_text(billed_daily)
    return target


def demo_policy_file(source: Path, target: Path, max_state_age_s: float) -> Path:
    """The policy with the ESS-state age limit widened to ``max_state_age_s`` twin seconds.

    The limit is twin time; at the demo's speed the pipeline's fraction of a wall second from meter to guard
    is many twin minutes, which a real site's 300 s would refuse. Nothing else in the policy changes."""
    lines = source.read_text().splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if line.startswith("max_state_age_s:")]
    if len(found) != 1:
        raise ValueError(f"{source}: expected one top-level max_state_age_s line")
    lines[found[0]] = f"max_state_age_s: {max_state_age_s:.0f}  # the demo's: {TRUST_WALL_S:g} wall s at its speed\n"
    target.write_text("".join(lines))
    return target


def _die_with_parent() -> None:  # a child of a killed demo stops too (Linux; elsewhere a no-op)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_child(settings: Settings, log_path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``opsloop ARGS`` with the run's settings, logging to ``log_path``; it stops when this process dies."""
    env = {**os.environ, **(env or {}), **settings_env(settings)}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "opsloop.ops.cli", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)


def start_worker(settings: Settings, log_path: Path, env: dict | None = None) -> subprocess.Popen:
    return start_child(settings, log_path, "worker", "--agents", AGENTS, env=env)


def write_sources(settings: Settings, site, twin, work: Path, meter_port: int, pcs_port: int,
                  page_port: int) -> Path:
    """The sources file reading this run's twin and PCS (ops/twin_sources.py)."""
    import yaml

    from opsloop.ops.twin_sources import page_devices, twin_sources

    physics = twin.poller.twin
    devices = page_devices(physics.points(physics.measure(twin.poller.next_ms, 0.0, {})))
    path = work / "sources.yaml"
    path.write_text(yaml.safe_dump(twin_sources(site, f"127.0.0.1:{meter_port}", f"127.0.0.1:{pcs_port}",
                                                f"http://127.0.0.1:{page_port}/metrics", devices, interval_s=POLL_S),
                                   sort_keys=False))
    return path


def stop_child(proc: subprocess.Popen, timeout_s: float = 60.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class StampedPoller:
    """The twin's poller, noting when (wall clock) each sample was handed to the publisher."""

    def __init__(self, poller):
        self.poller = poller
        self.published: list[tuple[int, float]] = []  # (last sample's ts_ms, wall s) per poll that made samples
        self.charge: list[tuple[int, float]] = []  # (last sample's ts_ms, the PCS's state of charge) per such poll

    def poll(self, now_ms: int):
        before = self.poller.samples
        readings = self.poller.poll(now_ms)
        if self.poller.samples > before:
            self.published.append((self.poller.history[-1][0], time.time()))
            if self.poller.soc_pct is not None:
                self.charge.append((self.poller.history[-1][0], self.poller.soc_pct))
        return readings

    def soc_at(self, ts_ms: int, default: float) -> float:
        """The PCS's state of charge as read at the first poll at or after ``ts_ms``."""
        return next((soc for ts, soc in self.charge if ts >= ts_ms), default)

    def close(self) -> None:
        self.poller.close()

    def samples(self):
        """The twin's samples with their publication time."""
        from opsloop.models.loop_report import Sample

        out, marks = [], iter(self.published)
        mark = next(marks, None)
        for ts, grid, ess in self.poller.history:
            while mark is not None and mark[0] < ts:
                mark = next(marks, None)
            if mark is None:
                break
            out.append(Sample(ts, grid, ess, mark[1]))
        return out


def _interrupt(*_):
    raise KeyboardInterrupt


def run_twin_demo(settings: Settings, days: float = 6.0, speed: float = 1440.0, warmup_days: float = 1.0,
                  data: Path | None = None, failures: int = 4, secure: bool = False) -> dict:
    """Run the demo and print its summary; returns the figures (for tests)."""
    from opsloop.config.assets import DEMO_SITE
    from opsloop.config.site import load_site
    from opsloop.ops.kafka import scratch_topics

    work = settings.data_dir / "twin-demo" / "run"  # this run's state (guard, ledger, changelogs): a fresh one
    shutil.rmtree(work, ignore_errors=True)
    (work / "site").mkdir(parents=True)
    site_file = daily_site_file(Path(settings.topology or DEMO_SITE), work / "site" / "demo.yaml")  # alone: the
    # worker reads every site file beside it
    site = load_site(site_file)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up as Ctrl-C does
    try:
        with scratch_topics(settings, f"twin-demo-{time.strftime('%Y%m%d%H%M%S')}.", secure=secure) as scratch:
            policy_file = demo_policy_file(Path(scratch.policy), work / "policy.yaml",
                                           max(300.0, TRUST_WALL_S * speed))
            return _run(scratch.replace(topology=site_file, policy=policy_file), site, work, days, speed, warmup_days,
                        data, failures)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(settings: Settings, site, work: Path, days: float, speed: float, warmup_days: float, data: Path | None,
         failures: int) -> dict:
    from opsloop.config.clock import Clock
    from opsloop.config.policy import load_policy
    from opsloop.connectors.slurm import ScontrolBackend
    from opsloop.ops import pcs_sim, twin as twin_process
    from opsloop.ops.actuation_demo import with_run_keys
    from opsloop.ops.kafka import free_ports
    from opsloop.ops.slurm import LocalSlurm, SlurmSetupError

    curve = twin_process.read_curve(data or twin_process.DEFAULT_DATA)
    start_ms = int(curve[0][0])
    measured_ms = start_ms + int(warmup_days * DAY_S * 1000)
    end_ms = measured_ms + int(days * DAY_S * 1000)
    if end_ms > curve[-1][0]:
        raise ValueError(f"the curve ends before {warmup_days:g} + {days:g} days")
    pcs_port, prometheus_port, meter_port = free_ports(3)
    clock = Clock(epoch_s=start_ms / 1000, anchor_s=time.time() + WORKER_START_S, speed=speed)
    run = with_run_keys(settings).replace(
        data_dir=work, clock_epoch_s=clock.epoch_s, clock_anchor_s=clock.anchor_s, clock_speed=clock.speed,
        pcs_modbus=f"127.0.0.1:{pcs_port}", window_s=60, grace_s=10, verify_window_s=float(2 * STEP_S),
        peaks_step_s=STEP_S, peaks_control="grid_limit", app_id=f"opsloop-twin-demo-{uuid.uuid4().hex[:6]}")
    if run.kafka_credentials_dir is not None:  # a secure broker: the agents' ACLs for this run's own app id
        from opsloop.config.access import plan
        from opsloop.connectors.kafka import apply_acls

        apply_acls(run, plan(run))
    policy = load_policy(run.policy)
    print(f"\nopsloop demo: the closed loop on the site twin of {site.id}, {warmup_days:g} + {days:g} simulated days "
          f"at {speed:g}x (about {(end_ms - start_ms) / 1000 / speed / 60:.0f} min)")
    # never a password on the terminal; the run's own feedback key (it lives as long as the run) lets the NOC's
    # approvals (Slurm holds) reach the guard; a key the user set stays theirs to pass
    noc_env = {k: v for k, v in run.kafka_env().items() if "PASSWORD" not in k}
    noc_env.update({"OPSLOOP_TOPIC_PREFIX": run.topic_prefix, "OPSLOOP_TOPOLOGY": str(run.topology),
                    "OPSLOOP_DUCKDB_PATH": str(work / "noc.duckdb")})
    if run.feedback_key != settings.feedback_key:
        noc_env["OPSLOOP_FEEDBACK_KEY"] = run.feedback_key
    print(f"  NOC on this run, in another terminal while it runs (create a user once with "
          f"`opsloop noc user add NAME --role admin`):\n    "
          + " ".join(f"{k}={v}" for k, v in noc_env.items()) + " opsloop noc --with-views", flush=True)

    cluster, backend = LocalSlurm.for_site(work.parent / "slurm", site), None
    worker = sources = sim = twin = None
    stop_twin = threading.Event()
    try:
        try:
            print(f"  slurm    {cluster.start()}")
            backend = ScontrolBackend(cluster.env)
        except SlurmSetupError as exc:
            print(f"  slurm    not started, the twin runs without jobs: {str(exc).splitlines()[0]}")
            cluster = None
        slurm_env = {"SLURM_CONF": cluster.env["SLURM_CONF"]} if cluster is not None else {}  # the Slurm sink's
        worker = start_worker(run, work / "worker.log", env=slurm_env)
        print(f"  worker   pid {worker.pid}: {AGENTS} (log {work / 'worker.log'})")
        twin = twin_process.build(run, site, clock=clock, start_ms=start_ms, sample_s=SAMPLE_S, poll_s=POLL_S,
                                  prometheus_port=prometheus_port, slurm=backend, data=data, failures=failures,
                                  background=10, horizon_s=int((end_ms - measured_ms) / 1000), storm_seed=7,
                                  sunspec_port=meter_port, publish=False, slurm_every_s=SLURM_EVERY_S)
        sources_file = write_sources(run, site, twin, work, meter_port, pcs_port, prometheus_port)
        # started before the twin's time begins, as the worker is, the sources' first poll waits for it: the loop
        # learns the warm-up day from its first sample, as the offline evaluation does (a run whose sources came
        # up 2.5 twin hours late planned the first Saturday from another forecast)
        sources = start_child(run, work / "sources.log", "source", "--config", str(sources_file))
        print(f"  sources  pid {sources.pid}: the twin's SunSpec meters (127.0.0.1:{meter_port}) and page, the PCS "
              f"over SunSpec (config {sources_file}, log {work / 'sources.log'})", flush=True)
        stamped = StampedPoller(twin.poller)
        twin.run.kind = stamped
        meter = pcs_sim.prometheus_meter(f"http://127.0.0.1:{prometheus_port}/metrics")
        sim = pcs_sim.from_site(site, pcs_port, clock=clock, soc_pct=START_SOC_PCT, site_meter=meter).start()
        print(f"  pcs      simulator on 127.0.0.1:{pcs_port}, grid-limit mode following the twin's meter "
              f"(http://127.0.0.1:{prometheus_port}/metrics)")
        twin_thread = threading.Thread(target=twin.run.run, args=(stop_twin,), name="twin", daemon=True)
        twin_thread.start()
        time.sleep(clock.wall_until_start())
        began, next_report = time.monotonic(), start_ms + DAY_S * 1000
        while clock() * 1000 < end_ms:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker stopped (exit {worker.returncode}); see {work / 'worker.log'}")
            if sources.poll() is not None:
                raise RuntimeError(f"the sources stopped (exit {sources.returncode}); see {work / 'sources.log'}")
            if not twin_thread.is_alive():
                raise RuntimeError("the twin stopped")
            if clock() * 1000 >= next_report and twin.poller.history:
                ts, grid, ess = twin.poller.history[-1]
                print(f"  day {(next_report - start_ms) // (DAY_S * 1000):.0f}    "
                      f"{time.strftime('%a %d %b %H:%M', time.gmtime(ts / 1000))}"
                      f" twin time, grid {grid:,.0f} kW, ESS {ess:,.0f} kW, SoC {twin.poller.soc_pct or 0:.0f}%"
                      f" ({time.monotonic() - began:.0f} s wall)", flush=True)
                next_report += DAY_S * 1000
            time.sleep(0.5)
        stop_twin.set()
        twin_thread.join(30)
        stop_child(sources)
        time.sleep(max(3.0, 1.2 * run.verify_window_s / speed))  # the last actions are verified or reverted
    finally:
        stop_twin.set()
        for child in (sources, worker):
            if child is not None:
                stop_child(child)
        if sim is not None:
            sim.stop()
        if twin is not None:
            twin.close()
        if cluster is not None:
            cluster.stop()
    figures = summarise(run, twin.poller.twin, stamped.samples(), measured_ms, end_ms, warmup_days, policy.pcs,
                        stamped.soc_at(measured_ms, START_SOC_PCT))
    figures["worker_pid"], figures["sources_pid"] = worker.pid, sources.pid
    figures["twin_points"] = twin.poller.points  # published by the twin itself: none, the sources read it
    print_summary(figures, run, speed)
    return figures


def summarise(run: Settings, physics, samples, measured_ms: int, end_ms: int, warmup_days: float, limits,
              start_soc_pct: float = 50.0) -> dict:
    """The run's figures from the twin's samples and the topics (``start_soc_pct``: the battery's at the first
    billed step, where the offline evaluation starts; ``limits``: the policy's PCS limits)."""
    from opsloop.connectors.kafka import read_records
    from opsloop.models.loop_report import billed_peaks, loop_latencies

    clock = run.clock()
    measured = [s for s in samples if measured_ms <= s.ts_ms < end_ms]
    # the twin is deterministic: its physics (curve, cooling, injected failures) with the battery idle and no job
    # stopped is the same week with actuation off, sample for sample
    without = billed_peaks([(s.ts_ms, physics.measure(s.ts_ms).grid_kw) for s in measured], "day", STEP_S * 1000)
    with_loop = billed_peaks([(s.ts_ms, s.grid_kw) for s in measured], "day", STEP_S * 1000)
    offline = offline_peaks(physics.site, physics, int(samples[0].ts_ms) if samples else measured_ms, end_ms,
                            limits, warmup_days, start_soc_pct)
    proposed = read_records(run, "actions.proposed")
    approved = read_records(run, "actions.approved")
    results = read_records(run, "actions.results")
    incidents = {r["incident_id"]: r for r, _ in read_records(run, "incidents")}  # newest version last
    narratives = {r["incident_id"]: r for r, _ in read_records(run, "narratives")}
    pcs = {r["action_id"]: r for r, _ in proposed if r["kind"].startswith("pcs_")}
    # the sink stamps its result on the run's clock right after the register write; its Kafka timestamp comes
    # later (the ledger is synced first), so the write's wall time is the clock's for that stamp
    executed = [{"action_id": r["action_id"], "ts_ms": r["ts_ms"], "expires_ms": pcs[r["action_id"]]["expires_ms"],
                 "wall_s": clock.anchor_s + (r["ts_ms"] / 1000 - clock.epoch_s) / clock.speed}
                for r, _ in results if r["status"] == "executed" and r["action_id"] in pcs]
    latencies = loop_latencies(samples, [{"action_id": r["action_id"], "created_ms": r["created_ms"],
                                          "wall_s": wall / 1000} for r, wall in proposed if r["action_id"] in pcs],
                               executed, lambda wall_s: clock.epoch_s + (wall_s - clock.anchor_s) * clock.speed)
    # the loop's first planned step: the warm-up it learned from starts there (the twin's first sample, if every
    # process was up when the run's time began)
    first_step_ms = min((r["issued_ms"] - r["step_s"] * 1000 for r, _ in read_records(run, "forecasts.peak")),
                        default=None)
    health = {r["source"]: r for r, _ in read_records(run, "sources.health")}  # each source's last report
    statuses = {}
    for r, _ in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    # each proposal's last verdict (needs_approval may be followed by approved or lapsed); the guard's own
    # reverts are not proposals: they show as results
    proposed_ids = {r["action_id"] for r, _ in proposed}
    last = {a["action"]["action_id"]: a for a, _ in approved if a["action"]["action_id"] in proposed_ids}
    verdicts, reasons = {}, {}
    for a in last.values():
        verdicts[a["verdict"]] = verdicts.get(a["verdict"], 0) + 1
        for code in a["reason_codes"] if a["verdict"] != "approved" else ():
            key = f"{a['action']['kind']}: {code}"
            reasons[key] = reasons.get(key, 0) + 1
    return {"days": sorted(with_loop), "without": without, "with": with_loop, "offline": offline,
            "proposed": len(proposed), "verdicts": verdicts, "reasons": reasons, "statuses": statuses,
            "latencies": latencies, "incidents": list(incidents.values()), "narratives": narratives,
            "sources": {name: {k: h[k] for k in ("polls", "failures", "points", "dead_letters", "dropped")}
                        for name, h in sorted(health.items())},
            "samples": len(measured), "first_step_ms": first_step_ms,
            "first_sample_ms": samples[0].ts_ms if samples else None, "max_discharge_kw": max((s.ess_kw for s in measured), default=0.0),
            "start_soc_pct": start_soc_pct, "soc_window": (limits.reserve_soc_pct, limits.max_soc_pct)}


def offline_peaks(site, reference, start_ms: int, end_ms: int, pcs, warmup_days: float,
                  soc_pct: float = 50.0) -> dict[str, float]:
    """What `opsloop eval peaks` gives per billed day: the planner on the twin's load without actuation, in the
    demo's steps, with the same battery and warm-up, on the evaluation's battery model. The battery is the one the
    loop may use: the guard's PCS limits ``pcs`` (power, state-of-charge reserve and maximum), as the live
    planner plans with them, charged to ``soc_pct`` at the first billed step as the live battery was."""
    from opsloop.models.peak_loop import LoopConfig
    from opsloop.ops.evals.peaks import evaluate

    step_ms, per_step = STEP_S * 1000, int(STEP_S // SAMPLE_S)
    start_ms = start_ms // step_ms * step_ms
    times = list(range(start_ms, end_ms, step_ms))
    loads = [sum(reference.measure(t + k * int(SAMPLE_S * 1000)).grid_kw for k in range(per_step)) / per_step
             for t in times]
    config = LoopConfig.from_site(site, step_s=STEP_S, pcs_kw=pcs.max_kw, reserve_soc_pct=pcs.reserve_soc_pct,
                                  max_soc_pct=pcs.max_soc_pct)
    report = evaluate(times, loads, STEP_S, config, soc_pct, warmup_days=warmup_days)
    return {p["period"]: p["strategies"]["planner"]["billed_peak_kw"] for p in report["periods"]}


def print_summary(f: dict, run: Settings, speed: float) -> None:
    days = [d for d in f["days"] if d in f["without"] and d in f["offline"]]
    print(f"\n  billed peak per day on the twin's grid meter (highest 15-minute import), kW:")
    print(f"    {'day':<12}{'without':>10}{'with opsloop':>14}{'cut':>8}{'offline eval':>14}{'cut':>8}")
    total = {"without": 0.0, "with": 0.0, "offline": 0.0}
    for d in days:
        w, l, o = f["without"][d], f["with"][d], f["offline"][d]
        total["without"] += w
        total["with"] += l
        total["offline"] += o
        print(f"    {d:<12}{w:>10,.0f}{l:>14,.0f}{(w - l) / w:>8.1%}{o:>14,.0f}{(w - o) / w:>8.1%}")
    if days:
        live, offline = total["without"] - total["with"], total["without"] - total["offline"]
        share = f"{live / offline:.0%} of the offline cut" if offline > 0 else "the offline eval cuts nothing"
        print(f"    {'all days':<12}{total['without']:>10,.0f}{total['with']:>14,.0f}{live / total['without']:>8.1%}"
              f"{total['offline']:>14,.0f}{offline / total['without']:>8.1%}   (sum of daily peaks; live = {share})")
    print(f"    without: the same twin and curve, battery idle, no job stopped; max discharge with opsloop "
          f"{f['max_discharge_kw']:,.0f} kW")
    print(f"    offline: the planner on the same load with the same battery in the guard's "
          f"{f['soc_window'][0]:g}-{f['soc_window'][1]:g}% charge window, from the live {f['start_soc_pct']:.0f}% "
          f"at the first billed step")
    if f["first_step_ms"] is not None and f["first_sample_ms"] is not None:
        print(f"    the loop learned from {time.strftime('%a %H:%M', time.gmtime(f['first_step_ms'] / 1000))} twin time "
              f"(the twin's first sample: {time.strftime('%a %H:%M', time.gmtime(f['first_sample_ms'] / 1000))})")
    print("  sources  (what read the site: the twin's own telemetry is none)")
    for name, h in f["sources"].items():
        print(f"    {name:<12}{h['points']:>10,} points in {h['polls']:,} polls, {h['failures']} failed, "
              f"{h['dead_letters']} dead-lettered, {h['dropped']} dropped")
    s, v = f["statuses"], f["verdicts"]
    print(f"  actions  {f['proposed']} proposed, {v.get('approved', 0)} approved"
          + "".join(f", {n} {k}" for k, n in sorted(v.items()) if k != "approved")
          + f"; {s.get('executed', 0)} executed, {s.get('verified', 0)} verified, {s.get('reverted', 0)} reverted"
          + "".join(f", {n} {k}" for k, n in sorted(s.items())
                    if k not in ("executed", "verified", "reverted", "rejected")))  # refusals: the verdicts above
    if f["reasons"]:
        print("           not approved: " + ", ".join(f"{k} x{n}" for k, n in sorted(f["reasons"].items(),
                                                                                     key=lambda kv: -kv[1])))
    print(f"  latency  (wall clock and twin time at {speed:g}x)")
    for latency in f["latencies"]:
        print(f"    {latency.line()}")
    correlated = [i for i in f["incidents"] if i["member_count"] > 1]
    single = {}
    for i in f["incidents"]:
        if i["member_count"] == 1:
            single[i["root_code"]] = single.get(i["root_code"], 0) + 1
    narrated = sum(i["incident_id"] in f["narratives"] for i in f["incidents"])
    print(f"  incidents {len(f['incidents'])}, {narrated} narrated; {len(correlated)} correlated from several alarms:")
    for incident in sorted(correlated, key=lambda i: i["opened_ms"]):
        narrative = f["narratives"].get(incident["incident_id"])
        text = narrative["text"].strip().splitlines()[0] if narrative else "not narrated"
        model = f" [{narrative['model']}]" if narrative else ""
        print(f"    {time.strftime('%a %H:%M', time.gmtime(incident['opened_ms'] / 1000))} {incident['root_code']} "
              f"at {incident['root_device']} ({incident['member_count']} alarms): {text}{model}")
    if single:
        print("    and single-alarm incidents: " + ", ".join(f"{k} x{n}" for k, n in sorted(single.items())))
