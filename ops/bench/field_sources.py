"""`python -m opsloop.ops.bench.field_sources`: points/s of ONE sunspec or snmp source process polling
N real simulated devices at once, into Kafka (needs a broker: ``opsloop up``).

- sunspec: N of our PCS simulators (each: models 1, 103, 124, 802 and two 203 meters over Modbus
  TCP) served by a child process, so their CPU is not counted as the source's. One source with
  ``options.targets`` lists them all; every mapped model of every device is read each poll.
- snmp: N Debian snmpd agents, each serving the test PDU through its pass_persist script (15
  values), walked with GETBULK over v2c by one source with ``options.targets``, once per client
  (``options.client``: pysnmp, ezsnmp).

Polls run back to back (no interval), the first one (discovery, connections) untimed. Reported:
points delivered per wall second, the source process' CPU seconds per 10,000 points (its own
threads and librdkafka's; the devices' processes are not in it), and the poll's wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

from opsloop.config.settings import Settings

FIELD_TARGET = 10_000  # points/s per process (issue 14)
PCS_SITE = {"site": {"id": "bench"},
            "ess": [{"id": "ess-1", "capacity_kwh": 10000, "pcs_charge_kw": 5000, "pcs_discharge_kw": 5000,
                     "round_trip_efficiency": 0.9, "reserve_soc_pct": 10, "soh_pct": 97}]}


def bench_site(devices: int, kind: str):
    """A site declaring ``devices`` ESSs and their two meters (sunspec), or PDUs (snmp), and the collector."""
    from opsloop.config.site import parse_site

    if kind == "sunspec":
        declared = [{"id": f"{name}-{i}", "type": t} for i in range(1, devices + 1)
                    for name, t in (("ess", "ess"), ("grid-meter", "grid_meter"), ("facility-meter", "facility_meter"))]
    else:
        declared = [{"id": f"pdu-{i}", "type": "pdu"} for i in range(1, devices + 1)]
    return parse_site({"site": {"id": "bench"}, "devices": declared + [{"id": "field-poller", "type": "collector"}]},
                      "bench.yaml")


def serve_pcs(count: int) -> None:
    """The child process: ``count`` PCS simulators; prints their ports (JSON) and serves until stdin closes."""
    from opsloop.config.site import parse_site
    from opsloop.ops.pcs_sim import from_site

    site = parse_site(PCS_SITE, "bench.yaml")
    with ExitStack() as stack:
        ports = []
        for i in range(count):
            sim = stack.enter_context(from_site(site, _free_tcp_port(), soc_pct=80.0))
            sim.facility_kw = 1000.0 + i
            ports.append(sim.port)
        print(json.dumps(ports), flush=True)
        sys.stdin.read()


def _free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def pcs_simulators(count: int):
    child = subprocess.Popen([sys.executable, "-m", "opsloop.ops.bench.field_sources", "--serve-pcs", str(count)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield json.loads(child.stdout.readline())
    finally:
        child.stdin.close()
        child.wait(30)


@contextmanager
def snmp_agents(count: int):
    from opsloop.ops.snmp_pdu import LocalSnmpd

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        agents = []
        for i in range(count):
            workdir = Path(tmp) / f"agent-{i}"
            workdir.mkdir()
            agents.append(stack.enter_context(LocalSnmpd(workdir)))
        yield [a.port for a in agents]


def source_config(kind: str, ports: list[int], client: str = "pysnmp"):
    from opsloop.config.sources import parse_sources
    from opsloop.ops.snmp_pdu import COMMUNITY, PDU_ROOT

    if kind == "sunspec":
        devices = {f"pcs-{i}/{model}": f"{name}-{i}" for i, _ in enumerate(ports, 1)
                   for model, name in (("103", "ess"), ("124", "ess"), ("802", "ess"), ("203", "grid-meter"),
                                       ("203:2", "facility-meter"))}
        options = {"targets": [{"host": "127.0.0.1", "port": p, "name": f"pcs-{i}"} for i, p in enumerate(ports, 1)]}
    else:
        devices = {f"127.0.0.1:{p}": f"pdu-{i}" for i, p in enumerate(ports, 1)}
        options = {"targets": [{"host": "127.0.0.1", "port": p} for p in ports], "version": "v2c", "client": client,
                   "community": COMMUNITY, "retries": 1, "metrics": [
                       {"oid": f"{PDU_ROOT}.1.1.3", "metric": "phase{index}_kw", "scale": 0.001, "unit": "kW"},
                       {"oid": f"{PDU_ROOT}.1.1.2", "metric": "phase{index}_a", "scale": 0.1, "unit": "A"},
                       {"oid": f"{PDU_ROOT}.1.1.4", "metric": "phase{index}_v", "scale": 0.1, "unit": "V"},
                       {"oid": f"{PDU_ROOT}.1.2", "metric": "it_kw", "scale": 0.001, "unit": "kW"},
                       {"oid": f"{PDU_ROOT}.2.1.2", "metric": "outlet{index}_kw", "scale": 0.001, "unit": "kW"},
                       {"oid": f"{PDU_ROOT}.5.1.2", "metric": "inlet{index}_temp_c", "scale": 0.1, "unit": "degC"}]}
    return parse_sources({"site": "bench", "sources": [{
        "kind": kind, "name": "field-poller", "timeout_s": 5, "devices": devices, "options": options}]},
        "bench")[0]


def poll_rate(settings: Settings, kind: str, ports: list[int], polls: int, client: str = "pysnmp") -> dict:
    """Points/s, CPU s per 10k points, seconds per poll, and the points and failures of the timed polls."""
    from opsloop.connectors.sources import KINDS
    from opsloop.connectors.sources.loop import SourceRun

    config, site = source_config(kind, ports, client), bench_site(len(ports), kind)
    run = SourceRun(settings, config, site, KINDS[kind].build(config, site, time.time))
    try:
        run.poll_once()  # discovery and connections: not timed
        run.publisher.flush(60)
        delivered0, failures0 = run.publisher.delivered, run.health.failures
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(polls):
            run.poll_once()
        run.publisher.flush(60)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = run.publisher.delivered - delivered0
        return {"rate": n / wall, "cpu": cpu * 10_000 / max(n, 1), "poll_s": wall / polls, "points": n,
                "failed_polls": run.health.failures - failures0,
                "failed_targets": sum(getattr(run.kind, "failed_targets", {}).values())}
    finally:
        run.kind.close()


def run(settings: Settings, counts: tuple[int, ...] = (1, 8, 32), snmp_counts: tuple[int, ...] = (1, 8, 16),
        polls: int = 20, clients: tuple[str, ...] = ("pysnmp", "ezsnmp")) -> list[str]:
    from opsloop.ops.kafka import scratch_topics

    rows = []
    with scratch_topics(settings, f"bench-field-{uuid.uuid4().hex[:6]}.") as bench:
        for n in counts:
            with pcs_simulators(n) as ports:
                rows.append((f"sunspec, {n} PCS simulator(s)", poll_rate(bench, "sunspec", ports, polls)))
        for n in snmp_counts:
            with snmp_agents(n) as ports:  # the same agents for each client
                for client in clients:
                    rows.append((f"snmp v2c {client}, {n} snmpd agent(s)", poll_rate(bench, "snmp", ports, polls, client)))
    out = [f"\nfield sources: one source process polling N devices at once, {polls} polls back to back",
           f"{'path':<36} {'points/s':>9} {'cores @10k/s':>13} {'per core':>9} {'s/poll':>7}  failed  target"]
    for name, r in rows:
        out.append(f"{name:<36} {r['rate']:>9,.0f} {r['cpu']:>13.2f} {10_000 / r['cpu']:>9,.0f} {r['poll_s']:>7.3f}  "
                   f"{r['failed_polls']}/{r['failed_targets']}     >= {FIELD_TARGET:,}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve-pcs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, nargs="*", default=[1, 8, 32], help="sunspec device counts (none: skip)")
    parser.add_argument("--agents", type=int, nargs="*", default=[1, 8, 16], help="snmp agent counts (none: skip)")
    parser.add_argument("--clients", nargs="+", default=["pysnmp", "ezsnmp"], choices=["pysnmp", "ezsnmp"],
                        help="snmp clients")
    parser.add_argument("--polls", type=int, default=20)
    args = parser.parse_args(argv)
    if args.serve_pcs:
        serve_pcs(args.serve_pcs)
        return 0
    print("\n".join(run(Settings.from_env(), tuple(args.devices), tuple(args.agents), args.polls,
                              tuple(args.clients))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
