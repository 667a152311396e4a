"""`opsloop twin`: a process that plays the physical site; the only thing in a twin run that makes up numbers.

Each poll of the live-source loop (connectors/sources/loop.py, so the twin publishes, reports its
health and backs off as any source does) it

1. reads the ESS power and state of charge from the PCS's registers over Modbus (the simulator,
   ops/pcs_sim.py, driven by the PCS sink), so a discharge the sink commands lowers the meter. A PCS in
   grid-limit mode follows its site meter within a second, far inside one sample: each sample's ESS power is
   then the limit's power at that sample's own load (the caps and limit read from the registers, the
   discharge stopped at the ESS reserve), not the power read at the poll, which followed an older sample;
   otherwise the twin's poll rate, a wall-clock interval, would make the PCS lag by more twin time the
   faster the twin runs;
2. reads job states from Slurm (the site's backend): suspended jobs, and jobs pending again after
   they ran, stop drawing their GPUs' power (``policy.slurm.kw_per_gpu`` each);
3. steps the physics (models/twin.py) through every ``sample_s`` of twin time since the last
   poll and publishes each sample's points to ``telemetry.raw`` (unless ``publish`` is off, as in
   ``opsloop demo``: live sources then read the twin's meters and page, ops/twin_sources.py);
4. publishes the alarms of the failures it injects (ops/evals/storm.py) as their time comes,
   while the failures move the telemetry (a PDU breaker trip darkens racks, a chiller trip
   heats zones);
5. with a job schedule (``--jobs-per-day``, models/gpu_jobs.py), runs its seeded GPU jobs when their queue says
   and publishes that queue on ``slurm.queue`` every ``queue_every_s`` twin seconds, as the slurm-queue source
   publishes a real one, so the peaks loop forecasts with the queue live as it does offline.

Its latest readings are also served as a site serves them (ops/twin_protocols.py), so the live
sources read the twin as they would read a site: Prometheus text (``--prometheus-port``), a SunSpec
Modbus TCP meter device with the grid and facility meters (``--sunspec-port``), each PDU's SNMP
objects in a file an snmpd ``pass_persist`` script serves (``--snmp-dir``), and the cooling plant as a
BACnet/IP device (``--bacnet-port``): the supply-air setpoint, which the twin reads back each poll, so a
write moves the chillers' power and the inlets, and each zone's inlet temperature. The Prometheus port
also answers as an Open-Meteo forecast API does (``/v1/forecast``): the twin's temperature forecast, for the
weather source (with ``--weather-day-sd``, warm and cool spells; ``models.weather``).

Time is the run's one clock (config/clock.py): when the settings carry none, the twin starts one
at the curve's first time running ``speed`` times faster and prints the ``OPSLOOP_CLOCK_*``
variables every other process of the run must share.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from opsloop.config.assets import DEMO_SITE
from opsloop.config.clock import Clock
from opsloop.config.settings import Settings
from opsloop.config.site import Site
from opsloop.config.sources import SourceConfig
from opsloop.connectors.sources.base import Readings
from opsloop.models.gpu_jobs import JobSchedule
from opsloop.models.topology import Topology
from opsloop.models.twin import Fault, SiteTwin, parse_curve, stopped_kw
from opsloop.models.weather import SyntheticWeather
from opsloop.models.weather_service import forecast_document

log = logging.getLogger("opsloop.twin")
DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "taylor_demand_mw.csv"
SLURM_QUEUE_TOPIC = "slurm.queue"
TWIN_SOURCE = "twin-1"  # the collector device the site file declares for the twin's health and loss alarms
TELEMETRY_FAULTS = ("power", "cooling")


def read_curve(data: Path, time_column: str = "timestamp", column: str | None = None) -> list[tuple[int, float]]:
    """A ``timestamp,value`` file (CSV or Parquet) as curve points; ``column`` defaults to the first other one."""
    from opsloop.connectors.replay import read_table

    table = read_table(data, time_column)
    names = [c for c in table.column_names if c != time_column]
    column = column or (names[0] if names else None)
    if column not in table.column_names:
        raise ValueError(f"{data}: no value column {column!r} (columns: {', '.join(table.column_names)})")
    return parse_curve(zip(table[time_column].to_pylist(), table[column].to_pylist()))


def storm_faults(site: Site, start_ms: int, horizon_s: int, seed: int, failures: int, background: int):
    """The storm generator's failures on the site's topology: Faults for the physics, alarms to publish."""
    from opsloop.ops.evals.storm import generate_storm

    if not failures and not background or site.topology is None:
        return [], []
    storm = generate_storm(Topology.from_site(site), seed=seed, failures=failures, horizon_s=horizon_s,
                           background=background, start_ms=start_ms)
    faults = [Fault(f.kind, f.root, f.start_ms, f.end_ms, f.affected) for f in storm.failures
              if f.kind in TELEMETRY_FAULTS]
    return faults, [alarm for alarm, _ in storm.alarms]


@dataclass
class Meters:
    """The latest reading of every (device, metric), for the Prometheus page; shared across threads."""

    site: str
    values: dict[tuple[str, str], float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    forecast: Callable[[int], dict] | None = None  # hours -> the twin's weather forecast now, in Open-Meteo's form

    def update(self, points: list[dict]) -> None:
        with self.lock:
            for p in points:
                self.values[(p["device"], p["metric"])] = p["value"]

    def text(self) -> str:
        with self.lock:
            items = sorted(self.values.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        lines, typed = [], set()
        for (device, metric), value in items:
            name = f"opsloop_twin_{metric}"
            if name not in typed:
                lines += [f"# HELP {name} {metric} as the site twin measures it", f"# TYPE {name} gauge"]
                typed.add(name)
            lines.append(f'{name}{{site="{self.site}",device="{device}"}} {value!r}')
        return "\n".join(lines) + "\n"


def serve_prometheus(meters: Meters, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """The latest readings as Prometheus text on /metrics, and the twin's temperature forecast as an Open-Meteo
    forecast API answers (/v1/forecast, ``forecast_hours`` of hourly temperature_2m), for the weather source."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            if url.path == "/metrics":
                self._send(meters.text().encode(), "text/plain; version=0.0.4; charset=utf-8")
            elif url.path == "/v1/forecast" and meters.forecast is not None:
                try:
                    hours = min(384, max(1, int(parse_qs(url.query).get("forecast_hours", ["48"])[0])))
                except ValueError:
                    self.send_error(400, "forecast_hours must be a whole number")
                    return
                self._send(json.dumps(meters.forecast(hours)).encode(), "application/json")
            else:
                self.send_error(404)

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # scrapes are not news
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="twin-prometheus", daemon=True).start()
    return server


class TwinPoller:
    """The twin as a live source's ``Poller``: each poll plays the site up to ``now_ms``."""

    def __init__(self, twin: SiteTwin, sample_s: float, start_ms: int, pcs=None, slurm=None, kw_per_gpu: float = 0.7,
                 alarms: list[dict] | None = None, meters: Meters | None = None, max_samples: int = 10_000,
                 outputs: list | None = None, setpoint=None, publish: bool = True, slurm_every_s: float = 0.0,
                 queue_every_s: float = 300.0):
        self.twin = twin
        self.publish = publish  # False: the points are only shown (meters, pages); live sources read them there
        self.setpoint = setpoint  # a callable: the plant's supply-air setpoint now (the BACnet device), or None
        self.sample_ms = int(sample_s * 1000)
        self.next_ms = start_ms
        self.pcs, self.slurm, self.kw_per_gpu = pcs, slurm, kw_per_gpu
        # twin seconds between Slurm reads (0: every poll); a fast-polling twin would otherwise run scontrol
        # tens of times a wall second for job states that change a few times a twin hour
        self.slurm_every_ms, self.slurm_read_ms = int(slurm_every_s * 1000), None
        # twin seconds between snapshots of the twin's own job queue on slurm.queue (with a job schedule), as
        # often as the slurm-queue source polls a real one
        self.queue_every_ms, self.queue_read_ms = int(queue_every_s * 1000), None
        self.queue_snapshots = 0
        self.alarms = sorted(alarms or [], key=lambda a: a["ts_ms"])
        self.meters = meters
        self.outputs = outputs or []  # callables shown the latest SiteState each poll (the protocol servers)
        self.max_samples = max_samples
        self.ess_kw, self.soc_pct = 0.0, None
        self.grid_limit = None  # the PCS's grid-limit Command while it holds one (models.battery)
        self.reserve_soc_pct = twin.site.ess[0].reserve_soc_pct if twin.site.ess else 0.0
        self.stopped: dict[str, float] = {}
        self.seen_running: set[str] = set()
        self.samples = 0
        self.points = 0  # published
        self.measured = 0  # measured, whether published or only shown
        self.pcs_errors = 0
        self.pcs_silent = False
        self.history: list[tuple[int, float, float]] = []  # (ts_ms, grid_kw, ess_kw) of every sample
        self.min_soc_pct: float | None = None  # the lowest state of charge the PCS reported

    def _read_devices(self, now_ms: int) -> None:
        from pymodbus.exceptions import ModbusException

        from opsloop.connectors.pcs import PcsError

        if self.pcs is not None:
            try:
                self.ess_kw = self.pcs.power_kw()
                reading = self.pcs.read()
                self.soc_pct = reading.soc_pct
                self.grid_limit = _grid_limit(reading)
                self.min_soc_pct = self.soc_pct if self.min_soc_pct is None else min(self.min_soc_pct, self.soc_pct)
                if self.pcs_silent:
                    log.info("twin: the PCS answers again")
                    self.pcs_silent = False
            except (PcsError, ModbusException, OSError) as exc:  # a silent PCS: the battery keeps doing what it last did
                self.pcs_errors += 1
                if not self.pcs_silent:  # once per outage, not once per poll
                    log.warning("twin: PCS not answering (%s); keeping %.0f kW until it does", exc, self.ess_kw)
                self.pcs_silent = True
                self.pcs.close()
        if self.slurm is not None and (self.slurm_read_ms is None or now_ms - self.slurm_read_ms >= self.slurm_every_ms):
            self.slurm_read_ms = now_ms
            try:
                self.stopped = stopped_kw(self.slurm.jobs(), self.kw_per_gpu, self.seen_running)
            except Exception as exc:  # noqa: BLE001 (any backend failure: the jobs keep their last state)
                log.warning("twin: Slurm not answering (%s)", exc)

    @property
    def played_ms(self) -> int:
        """The time of the latest sample played (the start, before any)."""
        return self.next_ms - self.sample_ms if self.samples else self.next_ms

    def poll(self, now_ms: int) -> Readings:
        if now_ms < self.next_ms:
            return Readings()
        self._read_devices(now_ms)
        readings = Readings()
        last, state = now_ms, None
        if (now_ms - self.next_ms) // self.sample_ms >= self.max_samples:  # far behind: skip, never flood
            skipped = (now_ms - self.next_ms) // self.sample_ms - self.max_samples + 1
            self.next_ms += skipped * self.sample_ms
            log.warning("twin: %d sample(s) skipped (the poll fell behind the clock)", skipped)
        if self.setpoint is not None:
            self.twin.supply_setpoint_c = self.setpoint()
        while self.next_ms <= now_ms:
            state = self.twin.measure(self.next_ms, self.ess_kw, self.stopped)
            if self.grid_limit is not None and not self.pcs_silent:
                state = self._follow(state)
            readings.points += self.twin.points(state, self.soc_pct)
            self.history.append((self.next_ms, state.grid_kw, state.ess_kw))
            last = self.next_ms
            self.next_ms += self.sample_ms
            self.samples += 1
        while self.alarms and self.alarms[0]["ts_ms"] <= last:
            readings.alarms.append(self.alarms.pop(0))
        readings.records += self._queue(last)
        if self.meters is not None:
            self.meters.update(readings.points[-200:] if len(readings.points) > 200 else readings.points)
        if state is not None:
            for show in self.outputs:
                show(state)
        self.measured += len(readings.points)
        if not self.publish:
            readings.points = []
        self.points += len(readings.points)
        return readings

    def _queue(self, now_ms: int) -> list[tuple[str, dict]]:
        """The job schedule's queue as the slurm-queue source publishes a real one (none without a schedule).
        Published with or without telemetry: no live source can read the twin's jobs from a real Slurm."""
        if self.twin.jobs is None or (self.queue_read_ms is not None
                                      and now_ms - self.queue_read_ms < self.queue_every_ms):
            return []
        self.queue_read_ms = now_ms
        self.queue_snapshots += 1
        return [(SLURM_QUEUE_TOPIC, r) for r in self.twin.queue_records(now_ms, source=TWIN_SOURCE)]

    def _follow(self, state):
        """The sample with the ESS holding the PCS's grid limit at the sample's own site load."""
        from dataclasses import replace

        power = float(self.grid_limit.power_for(state.facility_kw))
        soc = self.soc_pct if self.soc_pct is not None else 50.0
        if (power > 0 and soc <= self.reserve_soc_pct) or (power < 0 and soc >= 100.0):
            power = 0.0  # as the PCS stops: at its reserve, or full
        return replace(state, ess_kw=power, grid_kw=state.facility_kw - power)

    def close(self) -> None:
        if self.pcs is not None:
            self.pcs.close()


def _grid_limit(reading):
    """The ``Command`` a PCS reading holds in grid-limit mode, or None."""
    from opsloop.models.battery import Command

    if reading.grid_limit is None:
        return None
    values = reading.values
    wchamax_kw = values["WChaMax"] * 10 ** values["WChaMax_SF"] / 1000
    cap_out, cap_in = reading.caps_kw(wchamax_kw)
    return Command(limit_kw=reading.grid_limit[0], max_discharge_kw=cap_out, charge_kw=cap_in,
                   charge_ceiling_kw=reading.grid_limit[1])


def twin_clock(settings: Settings, curve_start_ms: int, speed: float) -> Clock:
    """The run's clock: the settings' when they carry one, else a new one at the curve's start."""
    clock = settings.clock()
    if not clock.is_wall:
        if clock.speed != speed:
            log.warning("twin: OPSLOOP_CLOCK_SPEED=%g is the run's clock; --speed %g ignored", clock.speed, speed)
        return clock
    return Clock.starting(curve_start_ms / 1000, speed)


@dataclass
class TwinRun:
    """A built twin: the source loop to run, its poller, clock and Prometheus server."""

    run: object
    poller: TwinPoller
    clock: Clock
    prometheus: ThreadingHTTPServer | None = None
    meter: object | None = None  # twin_protocols.MeterServer
    plant: object | None = None  # twin_protocols.BacnetPlant

    def close(self) -> None:
        if self.plant is not None:
            self.plant.stop()
        if self.prometheus is not None:
            self.prometheus.shutdown()
            self.prometheus.server_close()
        if self.meter is not None:
            self.meter.stop()


def build(settings: Settings, site: Site, *, speed: float = 60.0, data: Path | None = None, column: str | None = None,
          sample_s: float = 60.0, poll_s: float = 0.5, prometheus_port: int | None = None,
          prometheus_host: str = "127.0.0.1", slurm=None,
          pcs: bool = True, storm_seed: int = 0, failures: int = 0, background: int = 0, horizon_s: int = 86_400,
          clock: Clock | None = None, start_ms: int | None = None, twin_options: dict | None = None,
          sunspec_port: int | None = None, snmp_dir: Path | None = None, bacnet_port: int | None = None,
          publish: bool = True, slurm_every_s: float = 0.0, jobs_per_day: float = 0.0, jobs_seed: int = 0,
          queue_every_s: float = 300.0, weather_day_sd_c: float = 0.0, weather_seed: int = 0) -> TwinRun:
    from opsloop.config.policy import load_policy
    from opsloop.connectors.pcs import PcsClient, parse_endpoint
    from opsloop.connectors.sources.loop import SourceRun

    curve = read_curve(data or DEFAULT_DATA, column=column)
    clock = clock or twin_clock(settings, curve[0][0], speed)
    start_ms = int(clock() * 1000) // int(sample_s * 1000) * int(sample_s * 1000) if start_ms is None else start_ms
    options = dict(twin_options or {})
    if jobs_per_day > 0:  # the twin's Slurm runs a seeded queue of GPU jobs (models.gpu_jobs), published below
        options.setdefault("jobs", JobSchedule.for_site(site, seed=jobs_seed, epoch_ms=start_ms,
                                                        jobs_per_day=jobs_per_day))
    if weather_day_sd_c > 0:  # warm and cool spells from day to day (models.weather), forecast on /v1/forecast
        options.setdefault("weather", SyntheticWeather(day_sd_c=weather_day_sd_c, seed=weather_seed))
    twin = SiteTwin(site, curve, **options)
    faults, alarms = storm_faults(site, start_ms, horizon_s, storm_seed, failures, background)
    for fault in faults:
        twin.inject(fault)
    pcs_client = PcsClient(*parse_endpoint(settings.pcs_modbus), timeout_s=1.0) if pcs and site.ess else None
    from opsloop.ops.twin_protocols import MeterServer, PduFiles

    meters = Meters(site.id, forecast=lambda hours: forecast_document(twin.weather.forecast(poller.played_ms, hours)))
    meter = MeterServer(sunspec_port, prometheus_host).start() if sunspec_port is not None else None
    outputs = [meter.show] if meter is not None else []
    if snmp_dir is not None:
        outputs.append(PduFiles(site, snmp_dir).show)
    plant = None
    if bacnet_port is not None:
        from opsloop.ops.twin_protocols import BacnetPlant

        zones = [e["id"] for e in (site.topology or {}).get("cooling", ()) if e.get("type") == "zone"]
        plant = BacnetPlant(bacnet_port, zones, twin.supply_setpoint_c).start()
        outputs.append(plant.show)
    poller = TwinPoller(twin, sample_s, start_ms, pcs_client, slurm, load_policy(settings.policy).slurm.kw_per_gpu,
                        alarms, meters, outputs=outputs, setpoint=plant.setpoint_c if plant is not None else None,
                        publish=publish, slurm_every_s=slurm_every_s, queue_every_s=queue_every_s)
    config = SourceConfig(kind="twin", name=TWIN_SOURCE, site=site.id, interval_s=poll_s, timeout_s=2.0,
                          fail_after=3, backoff_max_s=poll_s, source="opsloop twin")
    run = SourceRun(settings.as_principal("source"), config, site, poller, clock)
    server = serve_prometheus(meters, prometheus_port, prometheus_host) if prometheus_port is not None else None
    return TwinRun(run, poller, clock, server, meter, plant)


def main(settings: Settings, site_file: Path | None, speed: float, data: Path | None, **options) -> int:
    import signal

    from opsloop.config.site import load_site

    site = load_site(site_file or settings.topology or DEMO_SITE)
    if options.pop("slurm", True):
        from opsloop.connectors.slurm_backends import make_backend

        options["slurm"] = make_backend(settings)
    twin = build(settings, site, speed=speed, data=data, **options)
    env = " ".join(f"{k}={v}" for k, v in {**twin.clock.env(), "OPSLOOP_PEAKS_CONTROL": "grid_limit"}.items())
    print(f"site twin of {site.id} at {twin.clock.speed:g}x; every process of this run needs: {env}", flush=True)
    if twin.prometheus is not None:
        host, port = twin.prometheus.server_address[:2]
        print(f"Prometheus text on http://{host}:{port}/metrics", flush=True)
    if twin.meter is not None:
        print(f"SunSpec meters (203: grid, facility) on Modbus TCP {twin.meter.host}:{twin.meter.port}", flush=True)
    if twin.plant is not None:
        print(f"BACnet/IP cooling plant (device {twin.plant.device_instance}: supply-air setpoint analog-value,1, "
              f"zone inlets analog-input,1..) on UDP {twin.plant.address}", flush=True)
    if options.get("snmp_dir") is not None:
        print(f"PDU SNMP objects in {options['snmp_dir']}/<pdu>.json (for an snmpd pass_persist script)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        twin.run.run(stop)
    finally:
        twin.close()
    print(f"twin: {twin.poller.samples} samples, {twin.poller.points} points published", flush=True)
    return 0
