"""The site twin's physics: what the meters, PDUs, racks, zones and chillers of a site read at a time.

Pure: the twin process (ops/twin.py) passes the time, the ESS power it read from the PCS's
registers, the GPU power that Slurm job states remove, and the failures it injects; this
model returns telemetry points. Nothing here reads a clock, a file or a device.

The model, stated:

- **IT load** follows a demand curve (``curve``: (ts_ms, value) pairs, linearly interpolated,
  wrapped around when time runs past its end): ``it_kw = value x it_scale + it_offset_kw``. The
  defaults turn the bundled Taylor file (national MW) into the demo site's IT load (the inverse
  of the site file's replay mapping, so facility power at ``cop_ref_temp_c`` matches the replay).
- **PDUs** share IT as the site file says; each PDU's share is split evenly over its racks
  (topology ``racks``). A rack whose power chain failed draws nothing.
- **GPU pods** draw ``it_share`` of IT each, less what stopped jobs would have drawn: the caller
  passes ``stopped_kw`` per Slurm partition (jobs suspended, or held after running), capped at the
  pod's draw. The same kW come off the PDUs of the pod's hall, so IT falls by exactly that much.
- **Queued GPU jobs** (``jobs``: a ``models.gpu_jobs.JobSchedule``; default none): each running job adds its
  GPUs' kW to its partition's pod (split evenly where pods share a partition), on top of the curve's base load,
  and to the PDUs of the pod's hall, so IT, cooling and the grid import rise by it; jobs start when the queue
  said they would (``queue_records`` gives the queue as the slurm-queue source would see it). Without a
  schedule the twin reads as before.
- **Outside temperature** is synthetic: a daily sine, ``temp_mean_c`` +/- ``temp_swing_c``, warmest
  at ``temp_peak_hour`` (UTC); or ``weather`` (a ``models.weather.SyntheticWeather``), which adds warm and
  cool spells from day to day and issues forecasts of them (``weather_forecast``).
- **Cooling** removes IT heat with a chiller plant whose COP falls as it gets warmer outside and rises
  with the supply-air setpoint (``supply_setpoint_c``, which the plant's BACnet setpoint object sets):
  ``cop = max(cop_min, cop_ref - cop_slope_per_c x (t_out - cop_ref_temp_c)) x (1 + cop_gain_per_c x
  (supply_setpoint_c - supply_ref_c))``, and ``cooling_kw = it_kw / cop + cooling_base_kw`` (fans, pumps and
  the rest do not change with the setpoint), split evenly over the chillers still running. The setpoint
  term is a rule of thumb, not a chiller curve: warmer supply air lets the chilled water run warmer by
  about as much, and chiller energy falls about 1-2 % per degF (2-4 % per degC) of chilled-water supply
  temperature (as the US DOE FEMP "Best Practices Guide for Energy-Efficient Data Center Design" and
  ASHRAE TC 9.9 guidance put it); the default, 3 % per degC, sits in the middle.
  **Facility** = IT + cooling. **Grid import** = facility - ESS power (+ discharge, - charge).
- **Zones** (and the rack inlets in them) sit, while cooled, at the supply air plus the rise that
  recirculation adds, which grows with load: ``supply_setpoint_c + inlet_rise_c + inlet_rise_load_c x
  it_kw / it_design_kw x zone_kw / mean_zone_kw`` (a zone whose racks carry more than the average runs
  warmer), reached with time constant ``zone_tau_s`` (first order), so a setpoint change shows at the inlets
  over minutes. The defaults (1 degC, plus 3 degC at the design load) are a hall with aisle containment
  run cold, as many are: 18 degC supply air gives inlets of about 19.5-22 degC, well inside ASHRAE's
  recommended 18-27 degC. A cooling failure (chiller trip, CRAH fan) moves every zone it reaches towards
  ``zone_uncooled_c`` the same way; once it ends they return. Rack inlets read their zone.
- **Power failures** (a PDU breaker trip, a UPS fault) drop every rack they reach to zero; IT,
  cooling and the grid import fall with them.

>>> from opsloop.config.site import parse_site
>>> site = parse_site({"site": {"id": "s"}, "pdus": [{"id": "pdu-1", "share": 1.0}],
...     "ess": [{"id": "ess-1", "capacity_kwh": 100, "pcs_charge_kw": 50, "pcs_discharge_kw": 50}]}, "sites/s")
>>> twin = SiteTwin(site, [(0, 1000.0), (3_600_000, 1000.0)], it_scale=1.0, it_offset_kw=0.0,
...                 temp_swing_c=0.0, cop_slope_per_c=0.0, cooling_base_kw=0.0)
>>> state = twin.measure(0, ess_kw=100.0)
>>> [round(v, 6) for v in (state.it_kw, state.cooling_kw, state.facility_kw, state.grid_kw)]
[1000.0, 120.0, 1120.0, 1020.0]
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from opsloop.config.site import GpuPod, Site
from opsloop.models import records
from opsloop.models.gpu_jobs import JobSchedule
from opsloop.models.slurm_queue import partition_devices
from opsloop.models.slurm_queue import snapshot as queue_snapshot
from opsloop.models.weather import SyntheticWeather

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Fault:
    """A failure the twin is playing: ``kind`` power or cooling (others only raise alarms) and what it reaches."""

    kind: str
    root: str
    start_ms: int
    end_ms: int
    affected: frozenset[str]

    def active(self, ts_ms: int) -> bool:
        return self.start_ms <= ts_ms < self.end_ms


@dataclass
class SiteState:
    """What the site reads at ``ts_ms`` (kW, degC)."""

    ts_ms: int
    outside_c: float
    it_kw: float
    cooling_kw: float
    facility_kw: float
    ess_kw: float
    grid_kw: float
    pdu_kw: dict[str, float] = field(default_factory=dict)
    rack_kw: dict[str, float] = field(default_factory=dict)
    pod_kw: dict[str, float] = field(default_factory=dict)
    zone_c: dict[str, float] = field(default_factory=dict)
    chiller_kw: dict[str, float] = field(default_factory=dict)


class SiteTwin:
    """The site's physics over a demand curve; ``measure`` is the only way in, ``points`` the way out."""

    def __init__(self, site: Site, curve: Sequence[tuple[int, float]], it_scale: float = 1 / 1.12,
                 it_offset_kw: float = -1500 / 1.12, cooling_base_kw: float = 1500.0, cop_ref: float = 1 / 0.12,
                 cop_ref_temp_c: float = 18.0, cop_slope_per_c: float = 0.25, cop_min: float = 2.5,
                 temp_mean_c: float = 18.0, temp_swing_c: float = 6.0, temp_peak_hour: float = 15.0,
                 supply_setpoint_c: float = 18.0, supply_ref_c: float = 18.0, cop_gain_per_c: float = 0.03,
                 inlet_rise_c: float = 1.0, inlet_rise_load_c: float = 3.0, it_design_kw: float = 35_000.0,
                 zone_uncooled_c: float = 45.0, zone_tau_s: float = 600.0, source: str = "twin",
                 jobs: JobSchedule | None = None, weather: SyntheticWeather | None = None):
        if len(curve) < 2:
            raise ValueError("the demand curve needs at least two points")
        self.site = site
        self.curve = sorted(curve)
        self.it_scale, self.it_offset_kw = it_scale, it_offset_kw
        self.cooling_base_kw, self.cop_ref, self.cop_ref_temp_c = cooling_base_kw, cop_ref, cop_ref_temp_c
        self.cop_slope_per_c, self.cop_min = cop_slope_per_c, cop_min
        self.temp_mean_c, self.temp_swing_c, self.temp_peak_hour = temp_mean_c, temp_swing_c, temp_peak_hour
        self.weather = weather or SyntheticWeather(mean_c=temp_mean_c, swing_c=temp_swing_c, peak_hour=temp_peak_hour)
        self.supply_setpoint_c, self.supply_ref_c, self.cop_gain_per_c = supply_setpoint_c, supply_ref_c, cop_gain_per_c
        self.inlet_rise_c, self.inlet_rise_load_c, self.it_design_kw = inlet_rise_c, inlet_rise_load_c, it_design_kw
        self.zone_uncooled_c, self.zone_tau_s = zone_uncooled_c, zone_tau_s
        self.source = source
        self.jobs = jobs
        self._times = [t for t, _ in self.curve]
        self._span_ms = self._times[-1] - self._times[0] + (self._times[-1] - self._times[-2])
        racks = (site.topology or {}).get("racks", ())
        self._racks = {r["id"]: r for r in racks}
        self._racks_of = {p.id: [r["id"] for r in racks if r.get("pdu") == p.id] for p in site.pdus}
        cooling = (site.topology or {}).get("cooling", ())
        self._chillers = [e["id"] for e in cooling if e.get("type") == "chiller"]
        self._zones = [e["id"] for e in cooling if e.get("type") == "zone"]
        self._crahs = [e["id"] for e in cooling if e.get("type") == "crah"]
        self._zone_temp: dict[str, float] = {}  # set on the first measure, settled at its cooled value
        self._racks_in = {z: [r["id"] for r in racks if r.get("zone") == z] for z in self._zones}
        self._last_ms: int | None = None
        self.faults: list[Fault] = []

    # -- inputs ---------------------------------------------------------------------------

    def demand(self, ts_ms: int) -> float:
        """The curve's value at ``ts_ms`` (linear between points; the curve repeats past its end)."""
        t = self._times[0] + (ts_ms - self._times[0]) % self._span_ms
        i = bisect.bisect_right(self._times, t) - 1
        if i >= len(self.curve) - 1:  # between the last point and the wrap: hold the last value
            return self.curve[-1][1]
        (t0, v0), (t1, v1) = self.curve[i], self.curve[i + 1]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)

    def outside_c(self, ts_ms: int) -> float:
        return self.weather.outside_c(ts_ms)

    def weather_forecast(self, ts_ms: int, hours: int = 48) -> tuple[int, list[tuple[int, float]]]:
        """The latest temperature forecast at ``ts_ms``, as a weather service gives it: its issue time and
        hourly (valid time, degC) points."""
        return self.weather.issue_ms(ts_ms), self.weather.forecast(ts_ms, hours)

    def cop(self, outside_c: float, supply_c: float | None = None) -> float:
        """The chiller plant's COP with ``outside_c`` outside and the supply air at ``supply_c`` (default: the setpoint)."""
        supply_c = self.supply_setpoint_c if supply_c is None else supply_c
        weather = max(self.cop_min, self.cop_ref - self.cop_slope_per_c * (outside_c - self.cop_ref_temp_c))
        return weather * max(0.1, 1 + self.cop_gain_per_c * (supply_c - self.supply_ref_c))

    def cooled_zone_c(self, zone: str, it_kw: float, rack_kw: Mapping[str, float]) -> float:
        """Where ``zone`` settles while cooled: supply air plus a rise that grows with load and the zone's share."""
        loads = {z: sum(rack_kw.get(r, 0.0) for r in racks) for z, racks in self._racks_in.items() if racks}
        mean = sum(loads.values()) / len(loads) if loads else 0.0
        share = loads[zone] / mean if zone in loads and mean > 0 else 1.0
        load = max(0.0, it_kw) / self.it_design_kw if self.it_design_kw > 0 else 0.0
        return self.supply_setpoint_c + self.inlet_rise_c + self.inlet_rise_load_c * load * share

    def design_rise_c(self) -> float:
        """The hottest zone's rise above the supply air at ``it_design_kw``: what a fixed setpoint must allow for."""
        rack_kw = {r: p.share * self.it_design_kw / len(self._racks_of[p.id])
                   for p in self.site.pdus for r in self._racks_of.get(p.id) or []}
        rises = [self.cooled_zone_c(z, self.it_design_kw, rack_kw) - self.supply_setpoint_c for z in self._zones]
        return max(rises, default=self.inlet_rise_c + self.inlet_rise_load_c)

    def queue_records(self, now_ms: int, source: str = "twin-slurm") -> list[dict]:
        """The job schedule's queue at ``now_ms`` as the slurm-queue source publishes it (``SlurmQueue`` records,
        closed by their ``snapshot`` entry); empty without a schedule."""
        if self.jobs is None:
            return []
        devices = partition_devices(self.site.gpu_pods, {}, {}, GpuPod.kw_per_gpu)
        return queue_snapshot(now_ms, self.site.id, source, self.jobs.queue(now_ms), [], devices).records

    def inject(self, fault: Fault) -> None:
        self.faults.append(fault)

    # -- physics --------------------------------------------------------------------------

    def measure(self, ts_ms: int, ess_kw: float = 0.0, stopped_kw: Mapping[str, float] | None = None) -> SiteState:
        """The site at ``ts_ms`` with the ESS at ``ess_kw`` and ``stopped_kw`` per Slurm partition removed."""
        stopped_kw = stopped_kw or {}
        active = [f for f in self.faults if f.active(ts_ms)]
        dark = {e for f in active if f.kind == "power" for e in f.affected}
        uncooled = {e for f in active if f.kind == "cooling" for e in f.affected}
        demand_it = max(0.0, self.demand(ts_ms) * self.it_scale + self.it_offset_kw)

        pod_kw, shed_by_hall = {}, {}
        job_kw = self._job_kw(ts_ms)
        for pod in self.site.gpu_pods:
            draw = pod.it_share * demand_it + job_kw.get(pod.id, 0.0)
            shed = min(draw, max(0.0, stopped_kw.get(pod.slurm_partition or "", 0.0)))
            pod_kw[pod.id] = draw - shed
            shed_by_hall[pod.hall] = shed_by_hall.get(pod.hall, 0.0) + shed
        hall_share = {}
        for pdu in self.site.pdus:
            hall_share[pdu.hall] = hall_share.get(pdu.hall, 0.0) + pdu.share

        added_by_hall = {}
        for pod in self.site.gpu_pods:
            if job_kw.get(pod.id):
                added_by_hall[pod.hall] = added_by_hall.get(pod.hall, 0.0) + job_kw[pod.id]

        def hall_kw(pdu) -> float:  # the PDU's share of the curve, less its hall's stopped jobs, plus its queued ones
            kw = pdu.share * demand_it - shed_by_hall.get(pdu.hall, 0.0) * pdu.share / hall_share[pdu.hall]
            return kw + added_by_hall[pdu.hall] * pdu.share / hall_share[pdu.hall] if pdu.hall in added_by_hall else kw

        pdu_kw, rack_kw = {}, {}
        for pdu in self.site.pdus:
            kw = hall_kw(pdu)
            racks = self._racks_of.get(pdu.id) or []
            if pdu.id in dark:
                up = 0.0
            elif racks:
                up = sum(r not in dark for r in racks) / len(racks)
            else:
                up = 1.0
            pdu_kw[pdu.id] = max(0.0, kw) * up
            for rack in racks:
                rack_kw[rack] = 0.0 if rack in dark or pdu.id in dark else max(0.0, kw) / len(racks)
        # pods lose what their hall's dark racks carried, in proportion
        for pod in self.site.gpu_pods:
            hall_pdus = [p for p in self.site.pdus if p.hall == pod.hall]
            nominal = sum(p.share for p in hall_pdus) * demand_it
            if nominal > 0 and hall_pdus:
                lit = sum(pdu_kw[p.id] for p in hall_pdus) / max(1e-9, sum(max(0.0, hall_kw(p)) for p in hall_pdus))
                pod_kw[pod.id] *= min(1.0, lit)
        it_kw = sum(pdu_kw.values()) if pdu_kw else demand_it - sum(shed_by_hall.values()) + sum(job_kw.values())

        outside = self.outside_c(ts_ms)
        running = [c for c in self._chillers if c not in uncooled]
        cooling_kw = it_kw / self.cop(outside) + self.cooling_base_kw if (running or not self._chillers) else 0.0
        chiller_kw = {c: (cooling_kw / len(running) if c in running else 0.0) for c in self._chillers}
        facility_kw = it_kw + cooling_kw

        dt_s = 0.0 if self._last_ms is None else max(0.0, (ts_ms - self._last_ms) / 1000)
        self._last_ms = ts_ms if self._last_ms is None else max(self._last_ms, ts_ms)
        decay = 1.0 - math.exp(-dt_s / self.zone_tau_s) if self.zone_tau_s > 0 else 1.0
        for zone in self._zones:
            target = self.zone_uncooled_c if zone in uncooled else self.cooled_zone_c(zone, it_kw, rack_kw)
            now = self._zone_temp.setdefault(zone, self.cooled_zone_c(zone, it_kw, rack_kw))
            self._zone_temp[zone] = now + (target - now) * decay
        return SiteState(ts_ms, outside, it_kw, cooling_kw, facility_kw, ess_kw, facility_kw - ess_kw,
                         pdu_kw, rack_kw, pod_kw, dict(self._zone_temp), chiller_kw)

    def _job_kw(self, ts_ms: int) -> dict[str, float]:
        """kW per pod of the queued jobs running at ``ts_ms`` (a partition's split evenly over its pods)."""
        if self.jobs is None:
            return {}
        by_partition = self.jobs.running_kw(ts_ms)
        pods = {}
        for pod in self.site.gpu_pods:
            pods.setdefault(pod.slurm_partition, []).append(pod.id)
        return {pod: kw / len(pods[partition]) for partition, kw in by_partition.items()
                for pod in pods.get(partition, ())}

    # -- output ---------------------------------------------------------------------------

    def points(self, state: SiteState, soc_pct: float | None = None, soh_pct: float | None = None) -> list[dict]:
        """TelemetryPoints as the site's meters would report ``state``.

        Site totals use the rollup's metrics (grid_kw, facility_kw, it_kw on PDUs, gpu_kw on pods,
        ess_*); racks, zones and chillers report their own metrics (rack_kw, inlet_temp_c, temp_c,
        chiller_kw, outside_temp_c), which the rollup does not sum, so nothing is counted twice.
        """
        site, ts, src, point = self.site.id, state.ts_ms, self.source, records.telemetry_point
        out = [point(ts, site, "grid-meter-1", "grid_meter", "grid_kw", state.grid_kw, "kW", src),
               point(ts, site, "facility-meter-1", "facility_meter", "facility_kw", state.facility_kw, "kW", src),
               point(ts, site, "facility-meter-1", "facility_meter", "cooling_kw", state.cooling_kw, "kW", src)]
        out += [point(ts, site, d, "pdu", "it_kw", kw, "kW", src) for d, kw in state.pdu_kw.items()]
        out += [point(ts, site, d, "gpu_node", "gpu_kw", kw, "kW", src) for d, kw in state.pod_kw.items()]
        out += [point(ts, site, d, "rack", "rack_kw", kw, "kW", src) for d, kw in state.rack_kw.items()]
        for rack, spec in self._racks.items():
            zone = spec.get("zone")
            if zone in state.zone_c:
                out.append(point(ts, site, rack, "rack", "inlet_temp_c", state.zone_c[zone], "degC", src))
        out += [point(ts, site, z, "zone", "temp_c", c, "degC", src) for z, c in state.zone_c.items()]
        out += [point(ts, site, c, "chiller", "chiller_kw", kw, "kW", src) for c, kw in state.chiller_kw.items()]
        out += [point(ts, site, c, "chiller", "outside_temp_c", state.outside_c, "degC", src) for c in self._chillers]
        out += [point(ts, site, c, "crah", "supply_setpoint_c", self.supply_setpoint_c, "degC", src) for c in self._crahs]
        if self.site.ess:
            ess = self.site.ess[0].id
            out.append(point(ts, site, ess, "ess", "ess_kw", state.ess_kw, "kW", src))
            if soc_pct is not None:
                out.append(point(ts, site, ess, "ess", "ess_soc_pct", soc_pct, "%", src))
            out.append(point(ts, site, ess, "ess", "ess_soh_pct",
                             self.site.ess[0].soh_pct if soh_pct is None else soh_pct, "%", src))
        return out


def stopped_kw(jobs: Iterable, kw_per_gpu: float, seen_running: set[str]) -> dict[str, float]:
    """GPU kW per partition that stopped jobs no longer draw: suspended jobs, and jobs pending again after
    they were seen running (held or requeued). A job pending since it was queued never drew power.

    ``seen_running`` is updated with the jobs running now (the caller keeps it between calls).

    >>> from opsloop.models.jobs import Job
    >>> seen = set()
    >>> stopped_kw([Job("1", "batch", "RUNNING", 1, 8)], 0.7, seen), seen
    ({}, {'1'})
    >>> stopped_kw([Job("1", "batch", "PENDING", 1, 8), Job("2", "batch", "SUSPENDED", 1, 4),
    ...             Job("3", "batch", "PENDING", 1, 8)], 0.5, seen)
    {'batch': 6.0}
    """
    out: dict[str, float] = {}
    for job in jobs:
        if job.state == "RUNNING":
            seen_running.add(job.job_id)
        elif job.state == "SUSPENDED" or (job.state == "PENDING" and job.job_id in seen_running):
            out[job.partition] = out.get(job.partition, 0.0) + job.gpus * kw_per_gpu
    return out


def parse_curve(rows: Iterable[tuple[int, float]]) -> list[tuple[int, float]]:
    """Checked curve points: finite values, distinct times, in order."""
    curve = sorted((int(t), float(v)) for t, v in rows)
    if len(curve) < 2:
        raise ValueError("the demand curve needs at least two points")
    for (t0, _), (t1, v1) in zip(curve, curve[1:]):
        if t1 == t0:
            raise ValueError(f"the demand curve has two values at {t0} ms")
        if not math.isfinite(v1):
            raise ValueError(f"the demand curve has a non-finite value at {t1} ms")
    return curve
