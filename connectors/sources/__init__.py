"""Live sources: each kind reads one kind of site system and yields ``Readings`` (base.py); one loop
(loop.py) polls or serves it, publishes (publisher.py) and reports its health.

``KINDS`` names every kind; ``opsloop source --list`` prints them. A kind registers a builder
``build(config, site, clock) -> Poller | Receiver`` and a one-line description; its module is
imported only when it runs (each brings its own protocol library).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceKind:
    module: str  # under opsloop.connectors.sources, with a ``build(config, site, clock)``
    description: str

    def build(self, config, site, clock):
        return importlib.import_module(f"opsloop.connectors.sources.{self.module}").build(config, site, clock)


KINDS: dict[str, SourceKind] = {}
KINDS["sunspec"] = SourceKind("sunspec", "SunSpec meters (201-204), inverter (103), storage (124) and battery (802) over Modbus TCP, by model discovery")
KINDS["snmp"] = SourceKind("snmp", "SNMP v2c/v3 agents (PDU phase and outlet load, breakers, alarms) by configured table columns")
KINDS["snmp-trap"] = SourceKind("snmp_trap", "SNMP v2c/v3 notifications (a PDU breaker trip, an overload) received as Alarms")
KINDS["prometheus"] = SourceKind("prometheus", "scrape /metrics endpoints (node-exporter, vLLM, NVIDIA DCGM exporter)")
KINDS["remote-write"] = SourceKind("remote_write", "a Prometheus server's remote_write (snappy protobuf, bearer token)")
KINDS["slurm-queue"] = SourceKind("slurm_queue", "Slurm queue: jobs and reservations with GPUs and est. kW (squeue, scontrol)")
KINDS["hwmon"] = SourceKind("hwmon", "Linux power sensors: hwmon power/energy and powercap/RAPL energy counters as kW (sysfs)")
KINDS["weather"] = SourceKind("weather", "the outside-temperature forecast from an Open-Meteo-compatible API (the load forecast's weather covariate)")
KINDS["logs"] = SourceKind("logs", "kernel and service logs (journald or a followed file): NVIDIA Xid, Slurm daemon errors, UPS events as Alarms")
