"""Kind ``slurm-queue``: the Slurm queue read with ``squeue`` and ``scontrol show reservation``.

Each poll runs both (argv lists, never a shell; ``TZ=UTC`` so every time Slurm prints is UTC) and
publishes one snapshot on ``slurm.queue`` (models/slurm_queue.py) plus per-partition totals on
``telemetry.raw``. Options: ``slurm_conf`` (sets ``SLURM_CONF``; else Slurm's own lookup),
``reservations`` (default true; a reservation's GPUs are its TRES ``gres/gpu`` where Slurm accounts
it, else the GPUs of the nodes it holds whole, read with ``scontrol show node -o <its nodes>``), ``kw_per_gpu`` (default 0.7, for partitions the ``devices`` map
adds that are not a GPU pod's, and reservations bound to none). Entries of a partition that maps to
no device are left out; the partition is dead-lettered once, when it appears.
"""

from __future__ import annotations

import os
import subprocess
from typing import Callable

from opsloop.config.site import Site
from opsloop.config.sources import SourceConfig
from opsloop.connectors.sources.base import Readings, Reject, SourceUnavailable
from opsloop.models.names import device_types
from opsloop.models.slurm_queue import (SQUEUE_FIELDS, parse_nodes, parse_reservations, parse_squeue,
                                        partition_devices, snapshot, with_node_gpus)

SQUEUE_FORMAT = ",".join(f"{f}:|" for f in SQUEUE_FIELDS[:-1]) + f",{SQUEUE_FIELDS[-1]}:"


class SlurmQueue:
    def __init__(self, config: SourceConfig, site: Site):
        self.config = config
        self.site = site
        self.kw_per_gpu = float(config.option("kw_per_gpu", 0.7))
        if not self.kw_per_gpu > 0:
            raise config.error(f"options.kw_per_gpu must be > 0 (got {self.kw_per_gpu})")
        self.reservations = bool(config.option("reservations", True))
        self.partitions = partition_devices(site.gpu_pods, config.devices, device_types(site), self.kw_per_gpu)
        if not self.partitions:
            raise config.error(f"no partition maps to a device: give gpu_pods a slurm_partition in {site.source} "
                               f"or map partitions under devices:")
        self.unmapped: set[str] = set()  # partitions without a device, already dead-lettered
        self.env = {**os.environ, "TZ": "UTC", "SLURM_TIME_FORMAT": "standard"}
        if config.option("slurm_conf"):
            self.env["SLURM_CONF"] = str(config.option("slurm_conf"))

    def _run(self, *argv: str) -> str:
        try:
            done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=self.config.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceUnavailable(f"{argv[0]}: {exc}") from exc
        if done.returncode != 0:
            raise SourceUnavailable(f"{' '.join(argv[:2])}: {(done.stderr or done.stdout).strip()[-500:]}")
        return done.stdout

    def poll(self, now_ms: int) -> Readings:
        jobs, bad = parse_squeue(self._run("squeue", "-h", "-r", "-O", SQUEUE_FORMAT))  # -r: each array task
        reservations, bad_resv = parse_reservations(self._run("scontrol", "show", "reservation", "-o")) \
            if self.reservations else ([], [])
        nodes: dict[str, dict] = {}  # per node list, once a poll
        for i, resv in enumerate(reservations):
            if not resv.gpus and resv.node_list:
                if resv.node_list not in nodes:
                    nodes[resv.node_list] = parse_nodes(self._run("scontrol", "show", "node", "-o", resv.node_list))
                reservations[i] = with_node_gpus(resv, nodes[resv.node_list])
        snap = snapshot(now_ms, self.config.site, self.config.name, jobs, reservations, self.partitions,
                        self.kw_per_gpu)
        rejects = [Reject(row.encode(), "decode", f"squeue row: {why}") for row, why in bad]
        rejects += [Reject(line.encode(), "decode", f"reservation: {why}") for line, why in bad_resv]
        new = sorted(set(snap.unmapped) - self.unmapped)  # told once while it stays: not at every poll
        self.unmapped = set(snap.unmapped)
        rejects += [Reject(partition.encode(), "unknown",
                           f"partition {partition!r} ({snap.unmapped[partition]} queue entr"
                           f"{'y' if snap.unmapped[partition] == 1 else 'ies'}) maps to no device: no gpu_pod of "
                           f"{self.site.source} names it and devices: does not map it") for partition in new]
        return Readings(points=snap.points, rejects=rejects, records=[("slurm.queue", r) for r in snap.records])

    def close(self) -> None:
        pass


def build(config: SourceConfig, site: Site, clock: Callable[[], float]) -> SlurmQueue:
    return SlurmQueue(config, site)
