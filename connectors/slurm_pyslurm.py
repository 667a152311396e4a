"""Slurm job control through pyslurm (the C API), used when ``pyslurm`` imports.

pyslurm is built against one Slurm release; no published build matches
Debian's Slurm 22.05, so this backend is not exercised in CI (its unit test
skips with that reason). It targets pyslurm's object API (23.02 and later):
``pyslurm.Jobs.load()`` to list, ``pyslurm.Job(id).hold()/release()/suspend()/
unsuspend()/requeue(hold=...)/cancel()`` to act.
"""

from __future__ import annotations

from opsloop.connectors.slurm import SlurmError, UnsupportedCommand, check_job_id
from opsloop.models.jobs import Job


def import_pyslurm():
    try:
        import pyslurm
    except ImportError as exc:
        raise SlurmError("slurm_backend=pyslurm needs the pyslurm package built for this host's Slurm "
                         f"(import failed: {exc}); use slurm_backend=scontrol or slurmrestd") from None
    return pyslurm


def _gpus(job) -> int:
    gres = getattr(job, "gres_per_node", None) or {}
    if isinstance(gres, dict):
        return sum(int(n) for name, n in gres.items() if str(name).split(":")[0] == "gpu")
    return 0


class PyslurmBackend:
    name = "pyslurm"
    commands = ("hold", "release", "suspend", "resume", "requeuehold", "requeue", "cancel")

    def __init__(self, module=None):
        self.pyslurm = module or import_pyslurm()

    def check(self, command: str) -> None:
        if command not in self.commands:
            raise UnsupportedCommand(f"pyslurm backend has no command {command!r}")

    def jobs(self) -> list[Job]:
        try:
            loaded = self.pyslurm.Jobs.load()
        except Exception as exc:  # pyslurm raises its own RPCError
            raise SlurmError(f"pyslurm Jobs.load: {exc}") from None
        jobs = []
        for job in loaded.values():
            task = getattr(job, "array_task_id", None)
            array = getattr(job, "array_id", None)
            job_id = f"{array}_{task}" if array and task is not None else str(job.id)
            jobs.append(Job(job_id, job.partition or "", str(job.state or ""), int(job.priority or 0), _gpus(job),
                            job.name or ""))
        return jobs

    def act(self, command: str, job_id: str) -> None:
        self.check(command)
        check_job_id(job_id)
        if "_" in job_id:
            raise SlurmError(f"pyslurm backend acts on whole jobs only, not array task {job_id}")
        job = self.pyslurm.Job(int(job_id))
        calls = {"hold": lambda: job.hold(), "release": lambda: job.release(), "suspend": lambda: job.suspend(),
                 "resume": lambda: job.unsuspend(), "requeuehold": lambda: job.requeue(hold=True),
                 "requeue": lambda: job.requeue(), "cancel": lambda: job.cancel()}
        try:
            calls[command]()
        except Exception as exc:
            raise SlurmError(f"pyslurm {command} {job_id}: {exc}") from None
