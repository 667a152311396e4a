"""Which Slurm jobs an action touches: a pure choice by partition, priority and estimated GPU power.

``select_jobs`` never returns a job of a protected partition, of a partition
the policy does not list as touchable, or one the action did not declare; it
takes at most ``max_jobs_per_event`` jobs and at most
``max_gpu_hours_per_event`` GPU-hours over the hold time. Among eligible jobs
it takes the lowest priority first (then the largest power, then the lowest
id) until the requested ``shed_kw`` is reached.

>>> from opsloop.config.policy import SlurmLimits
>>> limits = SlurmLimits(("batch",), ("inference",), max_jobs_per_event=5, max_gpu_hours_per_event=100,
...                      max_hold_s=3600, kw_per_gpu=1.0)
>>> jobs = [Job("1", "batch", "RUNNING", 10, 4), Job("2", "batch", "RUNNING", 5, 2),
...         Job("3", "inference", "RUNNING", 1, 8), Job("4", "batch", "PENDING", 1, 8)]
>>> [j.job_id for j in select_jobs(jobs, "slurm_suspend", ["batch", "inference"], 3.0, limits, hold_s=3600)]
['2', '1']
>>> [j.job_id for j in select_jobs(jobs, "slurm_hold", ["batch"], None, limits, hold_s=3600)]
['4']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from opsloop.config.policy import SlurmLimits

#: Job states an operation applies to, and the states that show it worked.
APPLIES_TO = {"slurm_hold": {"PENDING"}, "slurm_requeue": {"RUNNING"}, "slurm_suspend": {"RUNNING"},
              "slurm_release": {"PENDING"}, "slurm_resume": {"SUSPENDED"}}
EXPECTED = {"slurm_hold": {"PENDING"}, "slurm_requeue": {"PENDING", "REQUEUE_HOLD", "REQUEUED", "COMPLETING"},
            "slurm_suspend": {"SUSPENDED"}, "slurm_release": {"PENDING", "RUNNING", "CONFIGURING"},
            "slurm_resume": {"RUNNING", "COMPLETING"}}
UNDO = {"slurm_hold": "slurm_release", "slurm_requeue": "slurm_release", "slurm_suspend": "slurm_resume"}


@dataclass(frozen=True)
class Job:
    job_id: str
    partition: str
    state: str
    priority: int
    gpus: int
    name: str = ""

    def gpu_kw(self, kw_per_gpu: float) -> float:
        return self.gpus * kw_per_gpu


def touchable(job: Job, limits: SlurmLimits, declared: Iterable[str]) -> bool:
    return touchable_partition(job.partition, limits, declared)


def touchable_partition(partition: str, limits: SlurmLimits, declared: Iterable[str]) -> bool:
    """Not protected, listed as touchable by the policy and declared by the action."""
    return (partition not in limits.protected_partitions and partition in limits.touchable_partitions
            and partition in set(declared))


def select_jobs(jobs: Iterable[Job], kind: str, declared: Iterable[str], shed_kw: float | None,
                limits: SlurmLimits, hold_s: float, job_ids: Iterable[str] = ()) -> list[Job]:
    """The jobs to act on, in order; ``job_ids`` (if any) restricts the choice to those jobs."""
    declared, wanted = list(declared), set(job_ids)
    eligible = [j for j in jobs if j.state in APPLIES_TO.get(kind, set()) and touchable(j, limits, declared)
                and (not wanted or j.job_id in wanted)]
    eligible.sort(key=lambda j: (j.priority, -j.gpus, int(j.job_id) if j.job_id.isdigit() else 0, j.job_id))
    chosen, kw, gpu_hours = [], 0.0, 0.0
    for job in eligible:
        if len(chosen) >= limits.max_jobs_per_event:
            break
        hours = job.gpus * hold_s / 3600
        if gpu_hours + hours > limits.max_gpu_hours_per_event:
            continue
        if shed_kw is not None and kind in ("slurm_requeue", "slurm_suspend") and kw >= shed_kw:
            break
        chosen.append(job)
        kw += job.gpu_kw(limits.kw_per_gpu)
        gpu_hours += hours
    return chosen


def flexible_gpu_kw(jobs: Iterable[Job], limits: SlurmLimits) -> float:
    """GPU power of running jobs outside protected partitions: what relocation could shed at most."""
    return sum(j.gpu_kw(limits.kw_per_gpu) for j in jobs
               if j.state == "RUNNING" and j.partition not in limits.protected_partitions)
