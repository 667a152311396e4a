"""The Slurm queue as demand that is coming: jobs and reservations with their GPUs and estimated kW.

Pure: takes the text ``squeue`` and ``scontrol show reservation -o`` print (times in UTC, the
connector runs them with ``TZ=UTC``) and the partition map built from the site, and returns one
``SlurmQueue`` record per entry, closed by one ``snapshot`` entry (so an empty queue is seen too),
plus per-partition totals as TelemetryPoints on the partition's
device. A pending job's ``StartTime`` is the scheduler's expected start (what ``squeue --start``
shows); a running job's is when it started.

>>> jobs, bad = parse_squeue("7|batch|PENDING|100|gres:gpu:2|N/A|2|N/A|2|2026-01-01T00:00:00|"
...                          "2026-01-01T01:00:00|2026-01-01T02:00:00|Resources|(null)|ann|train")
>>> j = jobs[0]
>>> j.job_id, j.gpus, j.nodes, j.priority, j.expected_start_ms, j.reason, j.reservation, bad
('7', 4, 2, 100, 1767229200000, 'Resources', None, [])
>>> pm = {"batch": PartitionDevice("gpu-pod-3", "gpu_node", 0.7)}
>>> snap = snapshot(1767225600000, "demo", "q", jobs, [], pm)
>>> snap.records[0]["est_kw"], [(p["metric"], p["value"]) for p in snap.points][2:4]
(2.8, [('slurm_running_gpus', 0.0), ('slurm_pending_gpus', 4.0)])
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Iterable, Mapping

from opsloop.models.records import telemetry_point

#: squeue -O fields, in order; the name last, since it may contain the separator.
SQUEUE_FIELDS = ("JobID", "Partition", "State", "PriorityLong", "tres-per-node", "tres-per-job", "NumNodes",
                 "tres-per-task", "NumTasks", "SubmitTime", "StartTime", "EndTime", "Reason", "Reservation", "UserName", "Name")
RUNNING = frozenset({"RUNNING", "COMPLETING", "CONFIGURING"})  # drawing power now (or within seconds)
PENDING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING"})
HORIZON_MS = 3_600_000  # slurm_starting_1h_kw: pending jobs expected to start within the hour
#: Per-partition totals (metric -> unit), on the partition's device in telemetry.raw.
TOTALS = {"slurm_running_jobs": "count", "slurm_pending_jobs": "count", "slurm_running_gpus": "count",
          "slurm_pending_gpus": "count", "slurm_running_kw": "kW", "slurm_pending_kw": "kW",
          "slurm_starting_1h_kw": "kW"}
_NONE = {"", "N/A", "n/a", "None", "(null)", "Unknown", "NONE"}
_GPU = re.compile(r"gpu(?:[:/][A-Za-z0-9_.-]+)?[:=](\d+)")


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    partition: str
    state: str
    priority: int | None
    gpus: int  # over all its nodes
    nodes: int
    submit_ms: int | None
    start_ms: int | None  # running: started; pending: the scheduler's expected start
    end_ms: int | None
    reason: str | None
    reservation: str | None
    user: str | None
    name: str | None

    @property
    def expected_start_ms(self) -> int | None:
        return self.start_ms if self.state in PENDING else None


@dataclass(frozen=True)
class Reservation:
    name: str
    partition: str | None
    state: str
    gpus: int  # from its TRES (gres/gpu, where Slurm accounts GPUs); see ``with_node_gpus``
    nodes: int
    start_ms: int | None
    end_ms: int | None
    users: str | None
    node_list: str | None = None  # Slurm's hostlist of the reserved nodes (``Nodes=``)
    cores: int | None = None  # CoreCnt


@dataclass(frozen=True)
class NodeGpus:
    gpus: int
    cpus: int


def parse_nodes(text: str) -> dict[str, NodeGpus]:
    """Each node's GPUs (its ``Gres``, types summed) and CPUs from ``scontrol show node -o``.

    >>> parse_nodes("NodeName=n1 CPUTot=64 Gres=gpu:a100:4(S:0-1),gpu:v100:2 State=IDLE\\nNodeName=n2 CPUTot=8 Gres=(null)")
    {'n1': NodeGpus(gpus=6, cpus=64), 'n2': NodeGpus(gpus=0, cpus=8)}
    """
    out = {}
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "NodeName" in fields:
            cpus = fields.get("CPUTot", "0")
            out[fields["NodeName"]] = NodeGpus(gpu_count(fields.get("Gres", "")), int(cpus) if cpus.isdecimal() else 0)
    return out


def with_node_gpus(resv: Reservation, nodes: Mapping[str, NodeGpus]) -> Reservation:
    """A reservation whose TRES has no GPU count (Slurm accounts ``gres/gpu`` only with slurmdbd) counted by
    its nodes' GPUs, when it holds those nodes whole: a reservation of some cores of a node (``CoreCnt``
    under the nodes' CPUs) does not say which GPUs it holds, and keeps 0.

    >>> r = Reservation("maint", "batch", "INACTIVE", 0, 2, None, None, "root", "n[1-2]", 72)
    >>> with_node_gpus(r, {"n1": NodeGpus(8, 64), "n2": NodeGpus(0, 8)}).gpus
    8
    >>> with_node_gpus(r, {"n1": NodeGpus(8, 64), "n2": NodeGpus(0, 64)}).gpus  # 72 of 128 cores
    0
    """
    if resv.gpus or not nodes:
        return resv
    if resv.cores is not None and resv.cores < sum(n.cpus for n in nodes.values()):
        return resv
    return replace(resv, gpus=sum(n.gpus for n in nodes.values()))


@dataclass(frozen=True)
class PartitionDevice:
    """Where a partition's totals go, and what one of its GPUs is estimated to draw."""

    device: str
    device_type: str
    kw_per_gpu: float


@dataclass
class Snapshot:
    records: list[dict] = field(default_factory=list)  # SlurmQueue
    points: list[dict] = field(default_factory=list)  # TelemetryPoint, per mapped partition device
    unmapped: dict[str, int] = field(default_factory=dict)  # partition -> entries left out


def utc_ms(text: str) -> int | None:
    """Milliseconds of a Slurm time printed in UTC (``2026-01-01T00:00:00``); None for N/A, Unknown, ...

    >>> utc_ms("1970-01-01T00:01:00"), utc_ms("N/A")
    (60000, None)
    """
    text = text.strip()
    if text in _NONE:
        return None
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


def gpu_count(tres: str) -> int:
    """GPUs in a TRES string: ``gres:gpu:2``, ``gres/gpu:a100:4``, ``cpu=64,gres/gpu=8`` (types summed).

    >>> gpu_count("gres:gpu:a100:2,gres:gpu:v100:1"), gpu_count("cpu=64,gres/gpu=8"), gpu_count("N/A")
    (3, 8, 0)
    """
    return sum(int(n) for n in _GPU.findall(tres or ""))


def _text(value: str) -> str | None:
    value = value.strip()
    return None if value in _NONE else value


def parse_squeue(text: str) -> tuple[list[QueuedJob], list[tuple[str, str]]]:
    """Jobs from ``squeue -h -O`` rows of ``SQUEUE_FIELDS`` separated by ``|``; bad rows as (row, why)."""
    jobs, bad = [], []
    for line in text.split("\n"):  # not splitlines(): a job name may hold \x1e, \x85, \u2028
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        parts = line.split("|", len(SQUEUE_FIELDS) - 1)
        if len(parts) < len(SQUEUE_FIELDS) - 1:
            bad.append((line, f"{len(parts)} fields, expected {len(SQUEUE_FIELDS)}"))
            continue
        (job_id, partition, state, priority, per_node, per_job, nodes, per_task, tasks, submit, start, end, reason,
         resv, user) = (p.strip() for p in parts[:15])
        try:
            node_count = int(nodes) if nodes.isdecimal() else 1
            gpus = (gpu_count(per_job) or gpu_count(per_node) * node_count
                    or gpu_count(per_task) * (int(tasks) if tasks.isdecimal() else 1))
            jobs.append(QueuedJob(job_id, partition, state.split()[0] if state else state,
                                  int(priority) if priority.isdecimal() else None, gpus, node_count, utc_ms(submit),
                                  utc_ms(start), utc_ms(end), _text(reason), _text(resv), _text(user),
                                  _text(parts[15]) if len(parts) > 15 else None))
        except ValueError as exc:
            bad.append((line, f"unreadable field: {exc}"))
    return jobs, bad


def _count_of(text: str) -> int | None:
    return int(text) if text.isdecimal() else None


def parse_reservations(text: str) -> tuple[list[Reservation], list[tuple[str, str]]]:
    """Reservations from ``scontrol show reservation -o`` (one ``Key=value ...`` line each); bad lines as
    (line, why)."""
    out, bad = [], []
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "ReservationName" not in fields:
            continue  # "No reservations in the system"
        count = fields.get("NodeCnt", "0")
        try:
            out.append(Reservation(fields["ReservationName"], _text(fields.get("PartitionName", "")),
                                   fields.get("State", "") or "UNKNOWN", gpu_count(fields.get("TRES", "")),
                                   int(count) if count.isdecimal() else 0, utc_ms(fields.get("StartTime", "")),
                                   utc_ms(fields.get("EndTime", "")), _text(fields.get("Users", "")),
                                   _text(fields.get("Nodes", "")), _count_of(fields.get("CoreCnt", ""))))
        except ValueError as exc:
            bad.append((line, f"unreadable field: {exc}"))
    return out, bad


def partition_devices(pods: Iterable, devices: Mapping[str, str], types: Mapping[str, str],
                      default_kw_per_gpu: float) -> dict[str, PartitionDevice]:
    """Partition -> device: the site's GPU pods by their ``slurm_partition`` (with the pod's ``kw_per_gpu``),
    then the source's ``devices`` map (partition -> device, ``default_kw_per_gpu``), which wins."""
    out = {p.slurm_partition: PartitionDevice(p.id, "gpu_node", p.kw_per_gpu) for p in pods if p.slurm_partition}
    kw_of = {p.id: p.kw_per_gpu for p in pods}
    for partition, device in devices.items():
        out[partition] = PartitionDevice(device, types.get(device, "gpu_node"), kw_of.get(device, default_kw_per_gpu))
    return out


def snapshot(now_ms: int, site: str, source: str, jobs: Iterable[QueuedJob], reservations: Iterable[Reservation],
             partitions: Mapping[str, PartitionDevice], default_kw_per_gpu: float = 0.7) -> Snapshot:
    """The poll's records and per-device totals; entries of partitions not in ``partitions`` are counted out.
    A reservation bound to no partition is estimated at ``default_kw_per_gpu``."""
    snap = Snapshot()
    totals = {m.device: dict.fromkeys(TOTALS, 0.0) for m in partitions.values()}
    kinds = {m.device: m.device_type for m in partitions.values()}
    entries = []
    for job in jobs:
        where = partitions.get(job.partition)
        if where is None:
            snap.unmapped[job.partition] = snap.unmapped.get(job.partition, 0) + 1
            continue
        kw = job.gpus * where.kw_per_gpu
        entries.append({"entry": "job", "id": job.job_id, "partition": job.partition, "device": where.device,
                        "state": job.state, "reason": job.reason, "name": job.name, "user": job.user,
                        "gpus": job.gpus, "nodes": job.nodes, "est_kw": kw, "priority": job.priority,
                        "submit_ms": job.submit_ms, "start_ms": job.start_ms if job.state not in PENDING else None,
                        "expected_start_ms": job.expected_start_ms, "end_ms": job.end_ms,
                        "reservation": job.reservation})
        _count(totals[where.device], job, kw, now_ms)
    for resv in reservations:
        where = partitions.get(resv.partition) if resv.partition else None
        if resv.partition and where is None:
            snap.unmapped[resv.partition] = snap.unmapped.get(resv.partition, 0) + 1
            continue
        kw = resv.gpus * (where.kw_per_gpu if where else default_kw_per_gpu)
        entries.append({"entry": "reservation", "id": resv.name, "partition": resv.partition,
                        "device": where.device if where else None, "state": resv.state, "reason": None,
                        "name": resv.name, "user": resv.users, "gpus": resv.gpus, "nodes": resv.nodes,
                        "est_kw": kw, "priority": None, "submit_ms": None, "start_ms": resv.start_ms,
                        "expected_start_ms": None, "end_ms": resv.end_ms, "reservation": resv.name})
    demand = [e for e in entries if e["entry"] == "job" and (e["state"] in RUNNING or e["state"] in PENDING)]
    entries.append({"entry": "snapshot", "id": source, "partition": None, "device": None, "state": "COMPLETE",
                    "reason": None, "name": None, "user": None, "gpus": sum(e["gpus"] for e in demand), "nodes": 0,
                    "est_kw": sum(e["est_kw"] for e in demand), "priority": None, "submit_ms": None,
                    "start_ms": None, "expected_start_ms": None, "end_ms": None, "reservation": None})
    snap.records = [{"ts_ms": now_ms, "site": site, "source": source, "snapshot_size": len(entries) - 1, **e}
                    for e in entries]
    for device, values in totals.items():
        snap.points += [telemetry_point(now_ms, site, device, kinds[device], metric, value, TOTALS[metric], "slurm")
                        for metric, value in values.items()]
    return snap



def _count(total: dict[str, float], job: QueuedJob, kw: float, now_ms: int) -> None:
    if job.state in RUNNING:
        total["slurm_running_jobs"] += 1
        total["slurm_running_gpus"] += job.gpus
        total["slurm_running_kw"] += kw
    elif job.state in PENDING:
        total["slurm_pending_jobs"] += 1
        total["slurm_pending_gpus"] += job.gpus
        total["slurm_pending_kw"] += kw
        if job.expected_start_ms is not None and job.expected_start_ms <= now_ms + HORIZON_MS:
            total["slurm_starting_1h_kw"] += kw


class LatestQueue:
    """The latest whole snapshot of each site's queue, from ``SlurmQueue`` records in order (``add``): a snapshot
    counts once its closing ``snapshot`` entry comes after all ``snapshot_size`` entries (one seen only in part,
    as after a restart mid-snapshot, is dropped).

    >>> latest = LatestQueue()
    >>> rows = [{"site": "s", "entry": "job", "snapshot_size": 1},
    ...         {"site": "s", "entry": "snapshot", "snapshot_size": 1}]
    >>> [latest.add(r) for r in rows[1:] + rows], len(latest.of("s"))
    ([False, False, True], 2)
    """

    def __init__(self):
        self._gathering: dict[str, list[dict]] = {}
        self._latest: dict[str, list[dict]] = {}

    def add(self, record: dict) -> bool:
        """Take one record; True when it closes a whole snapshot."""
        gathered = self._gathering.setdefault(record["site"], [])
        if record["entry"] != "snapshot":
            gathered.append(record)
            return False
        del self._gathering[record["site"]]
        if len(gathered) != record["snapshot_size"]:
            return False
        self._latest[record["site"]] = gathered + [record]
        return True

    def of(self, site: str) -> list[dict] | None:
        return self._latest.get(site)
