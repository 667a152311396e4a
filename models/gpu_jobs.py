"""A seeded schedule of queued GPU jobs: what the site twin's Slurm runs, and what its queue says beforehand.

Pure and deterministic: the same ``seed`` gives the same jobs, whichever times are asked and in what order
(each day's jobs are drawn from a generator seeded by the seed, the partition and the day, and days are
scheduled in order). The model, stated:

- Each partition with GPUs (the site's ``gpu_pods``: their ``slurm_partition``, GPUs and ``kw_per_gpu``) gets
  ``jobs_per_day`` jobs a day, submitted at uniformly random times. Each asks for ``gpus_choices`` GPUs (one
  of them, uniformly), runs a duration drawn log-uniformly between ``min_hours`` and ``max_hours`` (its time
  limit, which it uses up: the twin's jobs never end early), and may begin at the earliest ``begin_hours``
  after its submission (uniform between 0 and it: users queue work for later, ``sbatch --begin``).
- The scheduler announces each job's start when it is submitted: the earliest time at or after that begin
  time when the partition has the GPUs free for the whole duration, given the jobs announced before it
  (first come, first served; no backfill, no preemption). A job whose start would lie more than
  ``max_wait_hours`` after its submission is refused (never queued).
- On the twin, jobs start when the queue says: a job is PENDING from its submission to its announced start,
  RUNNING until its end, then gone. A running job draws ``gpus x kw_per_gpu``.

``queue(now_ms)`` lists the jobs as ``squeue`` would show them then (``models.slurm_queue.QueuedJob``: pending
ones with their expected start and end, running ones with their start and end), so the covariate a forecast
reads on the twin is computed from the same records as from a live queue (``models.slurm_queue.snapshot``).

>>> from opsloop.config.site import parse_site
>>> site = parse_site({"site": {"id": "s"}, "pdus": [{"id": "pdu-1", "share": 1.0}], "gpu_pods": [{"id": "pod-1",
...     "nodes": 4, "gpus_per_node": 8, "slurm_partition": "batch", "it_share": 0.5, "kw_per_gpu": 1.0}]}, "sites/s")
>>> jobs = JobSchedule.for_site(site, seed=1, epoch_ms=0)
>>> running = jobs.running_kw(36_000_000)
>>> set(running) <= {"batch"} and 0 <= sum(running.values()) <= 32 * 1.0
True
>>> queued = jobs.queue(36_000_000)
>>> sum(j.gpus for j in queued if j.state == "RUNNING") * 1.0 == sum(running.values())
True
>>> all(j.start_ms > 36_000_000 for j in queued if j.state == "PENDING")
True
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field

from opsloop.models.slurm_queue import QueuedJob

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class ScheduledJob:
    job_id: str
    partition: str
    gpus: int
    kw_per_gpu: float
    submit_ms: int
    start_ms: int  # announced at submission, and kept
    end_ms: int

    @property
    def kw(self) -> float:
        return self.gpus * self.kw_per_gpu


@dataclass(frozen=True)
class Partition:
    name: str
    gpus: int
    kw_per_gpu: float


@dataclass
class JobSchedule:
    partitions: tuple[Partition, ...]
    seed: int = 0
    epoch_ms: int = 0  # the first day's start (rounded down to a UTC day): no job is submitted before it
    jobs_per_day: float = 20.0
    gpus_choices: tuple[int, ...] = (8, 16, 32, 64, 128)
    min_hours: float = 1.0
    max_hours: float = 12.0
    begin_hours: float = 24.0
    max_wait_hours: float = 72.0
    _jobs: list[ScheduledJob] = field(default_factory=list, repr=False)  # in submission order
    _submits: list[int] = field(default_factory=list, repr=False)
    _active: dict[str, list[ScheduledJob]] = field(default_factory=dict, repr=False)  # not yet ended, per partition
    _next_day: int | None = field(default=None, repr=False)

    @classmethod
    def for_site(cls, site, **options) -> "JobSchedule":
        """One partition per Slurm partition of the site's GPU pods (their GPUs summed, the first pod's kW/GPU)."""
        found: dict[str, Partition] = {}
        for pod in site.gpu_pods:
            if pod.slurm_partition:
                known = found.get(pod.slurm_partition)
                gpus = pod.gpus + (known.gpus if known else 0)
                found[pod.slurm_partition] = Partition(pod.slurm_partition, gpus,
                                                       known.kw_per_gpu if known else pod.kw_per_gpu)
        return cls(tuple(found.values()), **options)

    # -- what the twin asks ---------------------------------------------------------------

    def running_kw(self, ts_ms: int) -> dict[str, float]:
        """kW per partition of the jobs running at ``ts_ms``."""
        out: dict[str, float] = {}
        for job in self._alive(ts_ms):
            if job.start_ms <= ts_ms:
                out[job.partition] = out.get(job.partition, 0.0) + job.kw
        return out

    def queue(self, now_ms: int) -> list[QueuedJob]:
        """The jobs ``squeue`` shows at ``now_ms``: submitted, not yet ended; pending ones with their expected start."""
        out = []
        for job in self._alive(now_ms):
            pending = now_ms < job.start_ms
            out.append(QueuedJob(job.job_id, job.partition, "PENDING" if pending else "RUNNING", None, job.gpus,
                                 max(1, job.gpus // 8), job.submit_ms, job.start_ms, job.end_ms,
                                 ("BeginTime" if pending else None), None, "twin", "twin-job"))
        return out

    def jobs(self, until_ms: int) -> list[ScheduledJob]:
        """Every job submitted before ``until_ms``."""
        self._extend(until_ms)
        return self._jobs[:bisect.bisect_left(self._submits, until_ms)]

    # -- internals ------------------------------------------------------------------------

    def _alive(self, ts_ms: int) -> list[ScheduledJob]:
        """Jobs submitted at or before ``ts_ms`` that have not ended by then."""
        self._extend(ts_ms)
        last = bisect.bisect_right(self._submits, ts_ms)
        first = bisect.bisect_left(self._submits, ts_ms - int(self.max_wait_hours * HOUR_MS)
                                   - int(self.max_hours * HOUR_MS))
        return [j for j in self._jobs[first:last] if ts_ms < j.end_ms]

    def _extend(self, ts_ms: int) -> None:
        """Schedule every day up to the one holding ``ts_ms``, in order."""
        first = self.epoch_ms // DAY_MS
        if self._next_day is None:
            self._next_day = first
        while self._next_day <= ts_ms // DAY_MS:
            day = self._next_day
            drawn = [job for p in self.partitions for job in self._draw(p, day)]
            for partition, submit, gpus, hours, begin in sorted(drawn, key=lambda d: (d[1], d[0].name)):
                self._announce(partition, submit, gpus, hours, begin)
            self._next_day += 1

    def _draw(self, partition: Partition, day: int) -> list[tuple]:
        rng = random.Random(f"{self.seed}/{partition.name}/{day}")
        count = _poisson(rng, self.jobs_per_day)
        out = []
        for _ in range(count):
            submit = day * DAY_MS + rng.randrange(DAY_MS // 60_000) * 60_000
            gpus = min(partition.gpus, rng.choice(self.gpus_choices))
            hours = math.exp(rng.uniform(math.log(self.min_hours), math.log(self.max_hours)))
            begin = rng.uniform(0.0, self.begin_hours)
            out.append((partition, submit, gpus, hours, begin))
        return out

    def _announce(self, partition: Partition, submit: int, gpus: int, hours: float, begin: float) -> None:
        active = [j for j in self._active.get(partition.name, []) if j.end_ms > submit]
        self._active[partition.name] = active
        duration = int(hours * HOUR_MS) // 60_000 * 60_000
        earliest = submit + int(begin * HOUR_MS) // 60_000 * 60_000
        candidates = sorted({earliest} | {j.end_ms for j in active if j.end_ms > earliest})
        start = next((s for s in candidates if _peak_use(active, s, s + duration) + gpus <= partition.gpus), None)
        if start is None or start - submit > self.max_wait_hours * HOUR_MS:
            return  # the scheduler refuses it
        job = ScheduledJob(f"{partition.name}-{len(self._jobs) + 1}", partition.name, gpus, partition.kw_per_gpu,
                           submit, start, start + duration)
        active.append(job)
        self._jobs.append(job)
        self._submits.append(submit)


def _peak_use(jobs: list[ScheduledJob], start: int, end: int) -> int:
    """The most GPUs ``jobs`` hold at once within [start, end)."""
    times = [start] + [j.start_ms for j in jobs if start < j.start_ms < end]
    return max(sum(j.gpus for j in jobs if j.start_ms <= t < j.end_ms) for t in times)


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method; the means here are small)."""
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1

