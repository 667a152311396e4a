"""Slurm: the job-control backends (the sink that drives them is ``opsloop.streams.slurm_sink``).

Backends (``Settings.slurm_backend``), each with ``jobs()`` and ``act(command, job_id)``:

- ``scontrol`` (default): lists jobs with ``squeue`` and acts with
  ``scontrol hold|release|requeuehold|requeue|suspend|resume`` (any Slurm
  version). Commands are argv lists, never a shell.
- ``slurmrestd``: ``connectors.slurm_rest.RestBackend``, for a pipeline off the
  head node; does what the server's REST API can (22.05: list, hold, release).
- ``pyslurm``: ``connectors.slurm_pyslurm.PyslurmBackend`` when pyslurm imports.

The ``scontrol`` backend also shrinks a running job (``job_shape``, ``resize``:
``scontrol update JobId=<id> NumNodes=<n>``, which Slurm allows for running jobs) and
deletes opsloop's reservations (``unreserve``). It also makes maintenance reservations (``reserve``,
``reservation``): ``scontrol create reservation ... Flags=MAINT,IGNORE_JOBS``
and ``scontrol show reservation``, times in UTC; node names must look like
host names first. The other backends raise ``UnsupportedCommand`` for it
(the 22.05 REST API only lists reservations).

A job id must look like one (digits, or an array task ``123_4``) before any
backend uses it. A command a backend cannot do raises ``UnsupportedCommand``
(naming the Slurm version and the backend that can); the sink reports the
action as failed with that reason before touching any job.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from datetime import datetime, timezone
from typing import Mapping

from opsloop.models.jobs import Job
from opsloop.models.parallelism import JobShape
from opsloop.models.reservation import Reservation

log = logging.getLogger("opsloop.slurm")
JOB_ID = re.compile(r"[0-9]+(?:_[0-9]+)?")  # used with fullmatch: "12\n" is no job id
FIELDS = ("JobID", "Partition", "State", "PriorityLong", "tres-per-node", "Name")
COMMANDS = {"slurm_hold": "hold", "slurm_release": "release", "slurm_suspend": "suspend",
            "slurm_resume": "resume", "slurm_requeue": "requeuehold", "requeue_no_hold": "requeue"}
RESERVE = "reserve"  # not a job command: ``reserve``/``reservation`` below
SHRINK = "shrink"  # not a job command either: ``job_shape``/``resize`` below
SHAPE_FIELDS = ("JobID", "State", "Partition", "NumNodes", "tres-per-node", "NodeList", "Comment")
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: a host name, no ranges, no spaces
RESERVATION_NAME = re.compile(r"opsloop-[A-Za-z0-9_-]{1,60}")
RESERVATION_USER = "root"  # Slurm wants a user or account on a reservation; MAINT keeps everyone else out
SLURM_TIME = "%Y-%m-%dT%H:%M:%S"


class SlurmError(RuntimeError):
    pass


class UnsupportedCommand(SlurmError):
    """The backend's Slurm interface has no such command (e.g. suspend in the 22.05 REST API)."""


def check_job_id(job_id) -> str:
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise SlurmError(f"refusing job id {job_id!r}: not a Slurm job id")
    return job_id


def check_node_name(node) -> str:
    if not isinstance(node, str) or not NODE_NAME.fullmatch(node):
        raise SlurmError(f"refusing node name {node!r}: not a host name")
    return node


def check_reservation_name(name) -> str:
    if not isinstance(name, str) or not RESERVATION_NAME.fullmatch(name):
        raise SlurmError(f"refusing reservation name {name!r}: not one of opsloop's")
    return name


def slurm_time(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime(SLURM_TIME)


def parse_reservation(line: str, nodes: tuple[str, ...]) -> Reservation:
    """One line of ``scontrol -o show reservation`` (read with TZ=UTC); ``nodes`` already expanded."""
    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
    seconds = [int(datetime.strptime(fields[k], SLURM_TIME).replace(tzinfo=timezone.utc).timestamp())
               for k in ("StartTime", "EndTime")]
    return Reservation(fields["ReservationName"], tuple(sorted(nodes)), seconds[0], seconds[1],
                       tuple(f for f in fields.get("Flags", "").split(",") if f))


def parse_gpus(tres: str) -> int:
    """GPUs per node from squeue's tres-per-node (``gres:gpu:2``, ``gres/gpu:a100:4``, ``N/A``)."""
    match = re.search(r"gpu(?::[A-Za-z0-9_-]+)?[:=](\d+)", tres or "")
    return int(match.group(1)) if match else 0


def parse_squeue(text: str) -> list[Job]:
    """Rows of ``squeue -h -O JobID:|,Partition:|,...,Name:`` (the name last: it may contain the separator)."""
    jobs = []
    for line in text.split("\n"):  # not splitlines(): a job name with \x1e, \x85 or \u2028 must not start a new row
        line = line.removesuffix("\r")
        parts = line.split("|", len(FIELDS) - 1)
        if len(parts) < len(FIELDS) - 1:
            continue
        job_id, partition, state, priority, tres = (p.strip() for p in parts[:5])
        name = parts[5].rstrip() if len(parts) > 5 else ""
        jobs.append(Job(job_id, partition, state, int(priority) if priority.isdigit() else 0, parse_gpus(tres), name))
    return jobs


def parse_shape(line: str, expand) -> JobShape | None:
    """One row of ``squeue -O JobID:|,...,Comment:`` (comment last: it may hold the separator); ``expand``
    turns a host list (``node[1-4]``) into names."""
    parts = line.rstrip("\r\n").split("|", len(SHAPE_FIELDS) - 1)
    if len(parts) < len(SHAPE_FIELDS):
        return None
    job_id, state, partition, _, tres, nodelist = (p.strip() for p in parts[:6])
    nodes = tuple(expand(nodelist)) if nodelist and nodelist not in ("(null)", "N/A") else ()
    return JobShape(job_id, state, partition, nodes, parse_gpus(tres), parts[6].strip())


class ScontrolBackend:
    name = "scontrol"
    commands = frozenset(COMMANDS.values()) | {RESERVE, SHRINK}

    def __init__(self, env: Mapping[str, str] | None = None, timeout_s: float = 30.0):
        self.env = dict(env) if env is not None else dict(os.environ)
        self.timeout_s = timeout_s

    def _run(self, argv: list[str], utc: bool = False) -> str:
        env = {**self.env, "TZ": "UTC"} if utc else self.env  # scontrol reads and writes times in local time
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=self.timeout_s)
        if done.returncode != 0:
            raise SlurmError(f"{argv[0]} {argv[1]}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def jobs(self) -> list[Job]:
        fmt = ",".join(f"{f}:|" for f in FIELDS[:-1]) + f",{FIELDS[-1]}:"
        return parse_squeue(self._run(["squeue", "-h", "-t", "all", "-O", fmt]))

    def check(self, command: str) -> None:
        if command not in self.commands:
            raise UnsupportedCommand(f"scontrol backend has no command {command!r}")

    def act(self, command: str, job_id: str) -> None:
        if command == RESERVE:
            raise UnsupportedCommand("reserve is no job command: use reserve()")
        self.check(command)
        self._run(["scontrol", command, check_job_id(job_id)])

    def job_shape(self, job_id: str) -> JobShape | None:
        """Where job ``job_id`` runs and what its comment declares; None when Slurm no longer lists it."""
        fmt = ",".join(f"{f}:|" for f in SHAPE_FIELDS[:-1]) + f",{SHAPE_FIELDS[-1]}:"
        try:
            out = self._run(["squeue", "-h", "-t", "all", "-j", check_job_id(job_id), "-O", fmt])
        except SlurmError as exc:
            if "Invalid job id" in str(exc):
                return None
            raise
        line = next((row for row in out.split("\n") if row.strip()), "")
        return parse_shape(line, self.hostnames) if line else None

    def node_partitions(self, node: str) -> list[str]:
        """The partitions node ``node`` belongs to."""
        return self._run(["sinfo", "-h", "-N", "-n", check_node_name(node), "-o", "%R"]).split()

    def hostnames(self, hostlist: str) -> list[str]:
        return self._run(["scontrol", "show", "hostnames", hostlist]).split()

    def resize(self, job_id: str, nodes: int) -> None:
        """Shrink a running job to ``nodes`` nodes; Slurm releases the others (the last ones of its list)."""
        if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
            raise SlurmError(f"refusing node count {nodes!r}: a job keeps at least one node")
        self._run(["scontrol", "update", f"JobId={check_job_id(job_id)}", f"NumNodes={nodes}"])

    def unreserve(self, name: str) -> bool:
        """Delete opsloop's reservation ``name``; False when there was none by that name."""
        try:
            self._run(["scontrol", "delete", f"ReservationName={check_reservation_name(name)}"])
        except SlurmError as exc:
            if "reservation is invalid" in str(exc) or "not found" in str(exc):  # none by that name
                return False
            raise
        return True

    def reservation(self, name: str) -> Reservation | None:
        """The reservation called ``name``, or None when Slurm has none by that name."""
        try:
            line = self._run(["scontrol", "-o", "show", "reservation", check_reservation_name(name)], utc=True)
        except SlurmError as exc:
            if f"Reservation {name} not found" in str(exc):
                return None
            raise
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        nodes = self._run(["scontrol", "show", "hostnames", fields.get("Nodes", "")]).split()
        return parse_reservation(line, tuple(nodes))

    def reserve(self, want: Reservation) -> None:
        """Create a maintenance reservation of ``want.nodes`` for its window (running jobs keep running)."""
        self._run(["scontrol", "create", "reservation", f"ReservationName={check_reservation_name(want.name)}",
                   f"StartTime={slurm_time(want.start_s)}", f"EndTime={slurm_time(want.end_s)}",
                   f"Nodes={','.join(check_node_name(n) for n in want.nodes)}", f"Users={RESERVATION_USER}",
                   f"Flags={','.join((*want.flags, 'IGNORE_JOBS'))}"], utc=True)
