"""Maintenance windows: the cheapest slot to replace a part before its forecast date, as a Slurm reservation.

``plan_window`` looks at hourly (or any fixed-step) slots from now to the deadline (the RUL band's
early edge less a lead time) and picks the run of ``duration_steps`` slots whose cost is lowest.
A slot's cost is the work the window displaces plus the energy its burn-in takes:

    busy GPUs of the affected nodes x gpu_hour_value x step_h  +  node_kw x price x step_h

Busy GPUs come from the job queue where it says (``queue_demand``: the GPUs the latest ``SlurmQueue``
snapshot's running and pending jobs and reservations want in each hour, ``Slot.busy_gpus``; a node is taken
as fully displaced in an hour the queue wants at least its GPUs, so a window avoids hours with pending
demand) and otherwise from the load forecast (the affected GPUs times the forecast load over its capacity:
site IT kW over IT capacity, or the nodes' own GPU utilisation, ``HourlyProfile``); the price is the
tariff's. When not even one window fits before the deadline, the earliest
window is proposed and says so. ``maintenance_action`` turns a window into an ``Action`` of kind
``slurm_reserve`` (a maintenance reservation of the nodes, so no job is scheduled into the window)
for the guard, whose policy runs the kind in approval mode. Pure: now and every input are passed in.

>>> slots = [Slot(h * 3_600_000, load=800, price_per_kwh=0.2 if 8 <= h % 24 < 20 else 0.1) for h in range(72)]
>>> w = plan_window(slots, 3_600_000, 4, deadline_ms=60 * 3_600_000, gpus=8, capacity=1000,
...                 gpu_hour_value=2.0, node_kw=10.0, not_before_ms=12 * 3_600_000)
>>> (w.start_ms // 3_600_000) % 24 in range(0, 5) or (w.start_ms // 3_600_000) % 24 >= 20, w.reason_code
(True, 'maintenance_window')
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Iterable, Mapping

from opsloop.models.slurm_queue import PENDING, RUNNING

HOUR_MS = 3_600_000
MAINTENANCE_WINDOW = "maintenance_window"  # the cheapest window before the forecast's early edge
MAINTENANCE_URGENT = "maintenance_window_urgent"  # no window fits before it: the earliest one
REASON_CODES = frozenset({MAINTENANCE_WINDOW, MAINTENANCE_URGENT})


@dataclass(frozen=True)
class Slot:
    """One step ahead: the load forecast, the tariff and (where the queue knows) the busy GPUs of the nodes."""

    start_ms: int
    load: float  # the load forecast: site IT kW, or the nodes' GPU utilisation %, in the unit of ``capacity``
    price_per_kwh: float
    busy_gpus: float | None = None  # None: the queue does not reach this far; the load forecast stands in


@dataclass(frozen=True)
class Window:
    start_ms: int
    end_ms: int
    cost: float  # in the tariff's currency
    displaced_gpu_hours: float
    reason_code: str


def slot_cost(slot: Slot, step_h: float, gpus: int, capacity: float, gpu_hour_value: float,
              node_kw: float) -> tuple[float, float]:
    """(cost, displaced GPU-hours) of taking the nodes out for one slot."""
    busy = slot.busy_gpus if slot.busy_gpus is not None else gpus * min(1.0, max(0.0, slot.load / capacity))
    busy = min(float(gpus), max(0.0, busy))
    return busy * gpu_hour_value * step_h + node_kw * slot.price_per_kwh * step_h, busy * step_h


def plan_window(slots: list[Slot], step_ms: int, duration_steps: int, deadline_ms: int, gpus: int,
                capacity: float, gpu_hour_value: float, node_kw: float, not_before_ms: int = 0) -> Window | None:
    """The cheapest ``duration_steps`` consecutive slots from ``not_before_ms`` (notice for the operator
    and the part's delivery) ending by ``deadline_ms`` (ties: the earliest); the earliest window, marked
    urgent, when none fits; None when there are too few slots at all."""
    slots = [s for s in slots if s.start_ms >= not_before_ms]
    if duration_steps < 1 or len(slots) < duration_steps:
        return None
    step_h = step_ms / HOUR_MS
    costs = [slot_cost(s, step_h, gpus, capacity, gpu_hour_value, node_kw) for s in slots]
    windows = []
    for i in range(len(slots) - duration_steps + 1):
        end_ms = slots[i + duration_steps - 1].start_ms + step_ms
        cost = sum(c for c, _ in costs[i:i + duration_steps])
        displaced = sum(d for _, d in costs[i:i + duration_steps])
        windows.append(Window(slots[i].start_ms, end_ms, cost, displaced, MAINTENANCE_WINDOW))
    in_time = [w for w in windows if w.end_ms <= deadline_ms]
    if in_time:
        return min(in_time, key=lambda w: (round(w.cost, 9), w.start_ms))
    first = windows[0]
    return Window(first.start_ms, first.end_ms, first.cost, first.displaced_gpu_hours, MAINTENANCE_URGENT)


class HourlyProfile:
    """A load forecast by hour of day (UTC), learnt online: an exponentially weighted mean per hour."""

    def __init__(self, alpha: float = 0.05):
        self.alpha = alpha
        self.means: list[float | None] = [None] * 24

    def learn_one(self, ts_ms: int, value: float) -> None:
        hour = (ts_ms // HOUR_MS) % 24
        mean = self.means[hour]
        self.means[hour] = value if mean is None else mean + self.alpha * (value - mean)

    def forecast(self, ts_ms: int) -> float | None:
        return self.means[(ts_ms // HOUR_MS) % 24]


def hourly_slots(profile: HourlyProfile, prices_by_hour: tuple[float, ...], from_ms: int, hours: int,
                 default_load: float) -> list[Slot]:
    """Slots on whole hours from ``from_ms`` for ``hours``: the profile's load (``default_load`` for an hour
    it has not seen) and the tariff's price."""
    first = -(-from_ms // HOUR_MS) * HOUR_MS
    out = []
    for i in range(hours):
        start = first + i * HOUR_MS
        load = profile.forecast(start)
        out.append(Slot(start, default_load if load is None else load, prices_by_hour[(start // HOUR_MS) % 24]))
    return out


def queue_demand(entries: Iterable[Mapping], first_ms: int, hours: int) -> list[float | None]:
    """The GPUs a ``SlurmQueue`` snapshot wants in each of ``hours`` hours from ``first_ms``: running jobs until
    their end, pending jobs from their expected start (from the snapshot's time while the scheduler has none)
    until their end, reservations over their span (jobs in other states hold nothing). None for hours past the last end the queue knows (a
    pending job without an end is demand up to there).

    >>> job = {"entry": "job", "ts_ms": 0, "state": "PENDING", "gpus": 16, "start_ms": None,
    ...        "expected_start_ms": 2 * HOUR_MS, "end_ms": 4 * HOUR_MS}
    >>> queue_demand([job], 0, 6)
    [0.0, 0.0, 16.0, 16.0, None, None]
    """
    reach, known = first_ms, []
    for e in entries:
        job = e["entry"] == "job"
        if e["entry"] == "snapshot" or e["gpus"] <= 0 or job and e["state"] not in RUNNING | PENDING:
            continue
        start = e["expected_start_ms"] if job and e["state"] in PENDING else e["start_ms"]
        start = e["ts_ms"] if start is None else start
        known.append((start, e["end_ms"], float(e["gpus"])))
        if e["end_ms"] is not None:
            reach = max(reach, e["end_ms"])
    spans = [(start, reach if end is None else end, gpus) for start, end, gpus in known]
    out: list[float | None] = []
    for i in range(hours):
        hour = first_ms + i * HOUR_MS
        if hour >= reach:
            out.append(None)
            continue
        out.append(sum((gpus for start, end, gpus in spans if start < hour + HOUR_MS and end > hour), 0.0))
    return out


@dataclass(frozen=True)
class MaintenancePlan:
    """How a GPU part's window is planned: looked for once its forecast band opens within ``horizon_days``;
    ``lead_days`` before the band, ``notice_h`` ahead at least, ``duration_h`` long (swap and burn-in)."""

    horizon_days: float = 14.0
    lead_days: float = 1.0
    notice_h: int = 4
    duration_h: int = 4
    gpus_per_node: int = 8
    kw_per_gpu: float = 0.7  # a busy GPU with its share of the node (the policy's slurm.kw_per_gpu)
    gpu_hour_value: float = 2.0  # what an hour of a GPU's work is worth, in the tariff's currency
    prices_by_hour: tuple[float, ...] = (0.06,) * 7 + (0.12,) * 16 + (0.06,)  # per kWh, the peaks' tariff shape
    target: str = "slurm"  # the Slurm cluster the sink acts on
    queue_max_age_h: float = 1.0  # an older queue snapshot says nothing about the hours ahead


def node_of(device: str) -> str | None:
    """The node of a GPU device as the DCGM mapping names it (``node7/gpu3`` → ``node7``)."""
    node, sep, _ = device.partition("/")
    return node if sep and node else None


def propose(forecast: dict, profile: HourlyProfile, plan: MaintenancePlan, now_ms: int,
            queue: list[Mapping] | None = None) -> dict | None:
    """The ``slurm_reserve`` Action for a GPU ``RulForecast`` due within the plan's horizon, or None. ``queue``:
    the site's latest ``SlurmQueue`` snapshot (its entries), used while it is under ``queue_max_age_h`` old."""
    node = node_of(forecast["device"])
    if forecast["family"] != "gpu" or node is None or forecast["earliest_ms"] - now_ms > plan.horizon_days * 86_400_000:
        return None
    deadline = forecast["earliest_ms"] - int(plan.lead_days * 86_400_000)
    hours = max(plan.duration_h, int((deadline - now_ms) // HOUR_MS) + 1)
    slots = hourly_slots(profile, plan.prices_by_hour, now_ms, hours + plan.notice_h, default_load=100.0)
    if queue and slots and now_ms - max(e["ts_ms"] for e in queue) <= plan.queue_max_age_h * HOUR_MS:
        demand = queue_demand(queue, slots[0].start_ms, len(slots))
        slots = [replace(slot, busy_gpus=gpus) for slot, gpus in zip(slots, demand)]
    window = plan_window(slots, HOUR_MS, plan.duration_h, deadline, plan.gpus_per_node, 100.0, plan.gpu_hour_value,
                         plan.gpus_per_node * plan.kw_per_gpu, not_before_ms=now_ms + plan.notice_h * HOUR_MS)
    if window is None:
        return None
    return maintenance_action(forecast, window, plan.target, [node], [], plan.gpus_per_node, now_ms)


def _at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def maintenance_action(forecast: dict, window: Window, target: str, nodes: list[str], partitions: list[str],
                       gpus: int, now_ms: int, proposer: str = "rul") -> dict:
    """The ``slurm_reserve`` Action for a ``RulForecast``'s part: reserve its nodes for the window."""
    part = f"{forecast['device_type']} {forecast['device']}"
    urgent = window.reason_code == MAINTENANCE_URGENT
    why = ("the earliest window, since its forecast band opens before any window fits" if urgent
           else "the cheapest window before its forecast band opens")
    reason = (f"Replace {part} between {_at(window.start_ms)} and {_at(window.end_ms)}: {why} "
              f"on {_at(forecast['earliest_ms'])[:10]} (about {window.cost:,.0f} in displaced work and burn-in energy, "
              f"{window.displaced_gpu_hours:.0f} GPU-hours moved).")
    action = {"kind": "slurm_reserve", "target": target, "site": forecast["site"], "setpoint_kw": None,
              "shed_kw": None, "job_ids": [],
              "params": {"nodes": ",".join(nodes), "partitions": ",".join(partitions), "gpus": str(gpus),
                         "start_ms": str(window.start_ms), "end_ms": str(window.end_ms),
                         "reservation": f"maint-{forecast['device'].replace('/', '-')}",
                         "part": forecast["device"], "metric": forecast["metric"]},
              "reason": reason, "reason_code": window.reason_code,
              "expected_effect": f"no job is scheduled on {', '.join(nodes)} from {_at(window.start_ms)} to "
                                 f"{_at(window.end_ms)}; running jobs end before it",
              "expected_delta_kw": None, "created_ms": now_ms, "expires_ms": window.start_ms,
              "risk": "medium" if urgent else "low", "proposer": proposer}
    digest = hashlib.sha256(repr(sorted((k, str(v)) for k, v in action.items() if k != "created_ms")).encode())
    action["action_id"] = f"maint-{digest.hexdigest()[:16]}"
    return action
