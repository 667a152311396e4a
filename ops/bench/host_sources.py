"""`python -m opsloop.ops.bench.host_sources`: rates of the slurm-queue, logs and hwmon sources.

- logs: a file of ``--lines`` syslog lines (1 in 5 an NVIDIA Xid, Slurm or UPS line that becomes an
  Alarm, the rest ignored) followed from its start into Kafka, against a bare producer loop encoding
  and sending as many alarms in the same run (needs a broker: ``opsloop up``); and the rules alone.
- hwmon: polls of the sysfs tree under tests/data (or ``--sysfs``), parsing and mapping only.
- slurm-queue: squeue rows parsed and priced per second (the rows as Slurm 22.05 prints them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from opsloop.config.settings import Settings

LINES = [
    "2026-12-05T18:00:{s:02d}Z gpu-n{n} kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid={i}, GPU has fallen off the bus.",
    "2026-12-05T18:00:{s:02d}Z gpu-n{n} sshd[{i}]: Accepted publickey for root from 10.0.0.{n} port 22",
    "2026-12-05T18:00:{s:02d}Z gpu-n{n} systemd[1]: Started session {i} of user root.",
    "2026-12-05T18:00:{s:02d}Z gpu-n{n} kernel: [{i}.5] eth0: link up, 100Gbps, full duplex",
    "2026-12-05T18:00:{s:02d}Z gpu-n{n} CRON[{i}]: (root) CMD (run-parts /etc/cron.hourly)",
    "2026-12-05T18:00:{s:02d}Z head-1 slurmctld[812]: error: Nodes gpu-n{n} not responding",
    "2026-12-05T18:00:{s:02d}Z gpu-n{n} slurmd[90]: launch task StepId={i}.0 request from UID:0",
    "2026-12-05T18:00:{s:02d}Z gpu-n{n} kernel: [{i}.7] nvme0n1: p1 p2",
    "2026-12-05T18:00:{s:02d}Z mgmt-1 upsmon[501]: UPS ups-a@localhost on battery",
    "2026-12-05T18:00:{s:02d}Z gpu-n{n} dbus-daemon[7]: [system] Successfully activated service",
    "2026-12-05T18:00:{s:02d}Z gpu-n{n} kernel: [{i}.9] audit: type=1400 apparmor=\"STATUS\"",
    "2026-12-05T18:00:{s:02d}Z gpu-n{n} chronyd[55]: Selected source 10.0.0.1",
    "2026-12-05T18:00:{s:02d}Z gpu-n{n} slurmd[90]: error: Unable to register: Unable to contact slurm controller",
    "2026-12-05T18:00:{s:02d}Z gpu-n{n} sshd[{i}]: pam_unix(sshd:session): session opened for user root",
    "2026-12-05T18:00:{s:02d}Z gpu-n{n} systemd[1]: session-{i}.scope: Deactivated successfully.",
]  # 4 of 15 become alarms
DEVICES = {"*": "rack-a01-n1", "ups-a": "ups-a"}


def log_lines(n: int) -> list[str]:
    return [LINES[i % len(LINES)].format(s=i % 60, n=i % 128, i=i) for i in range(n)]


def rules_rate(n: int) -> tuple[float, int]:
    """Lines/s through parse_syslog and the shipped rules; alarms made."""
    from opsloop.config.assets import LOG_RULES_FILE
    from opsloop.config.sources import load_rules_doc
    from opsloop.models.log_rules import LogAlarms, parse_rules, parse_syslog

    logs = LogAlarms(parse_rules(load_rules_doc(LOG_RULES_FILE)), DEVICES, "demo", "bench")
    lines = log_lines(n)
    began = time.perf_counter()
    made = sum(logs.alarm(parse_syslog(line), 0) is not None for line in lines)
    return n / (time.perf_counter() - began), made


def logs_end_to_end(settings: Settings, n: int) -> tuple[float, float, int]:
    """(source alarms/s, bare producer alarms/s, alarms): a file read from its start into alarms.raw."""
    from opsloop.config.site import load_site
    from opsloop.config.sources import parse_sources
    from opsloop.connectors.kafka import producer
    from opsloop.connectors.sources import KINDS
    from opsloop.connectors.sources.loop import SourceRun

    site = load_site(settings.topology)
    with tempfile.TemporaryDirectory() as tmp:
        path, state = Path(tmp) / "syslog", Path(tmp) / "pos"
        path.write_text("\n".join(log_lines(n)) + "\n")
        state.write_text(json.dumps({"inode": os.stat(path).st_ino, "offset": 0}))  # from the start
        config = parse_sources({"site": site.id, "sources": [{
            "kind": "logs", "name": "kernel-log", "devices": DEVICES, "batch_max": 10_000,
            "options": {"reader": "file", "path": str(path), "state_file": str(state)}}]}, "bench")[0]
        run = SourceRun(settings.as_principal("source"), config, site, KINDS["logs"].build(config, site, time.time))
        stop = threading.Event()
        began = time.perf_counter()
        thread = threading.Thread(target=run.run, args=(stop,))
        thread.start()
        while run.kind.lines < n and thread.is_alive():
            time.sleep(0.01)
        stop.set()
        thread.join()  # flushes: every alarm acknowledged
        source_s = time.perf_counter() - began
        made = run.health.alarms
    records, encode = _alarms(made, site.id), run.publisher._encode
    prod = producer(settings.as_principal("source"))
    began = time.perf_counter()
    for record in records:  # encoded and keyed in the loop, as the source does
        topic, key, value = encode("alarms.raw", record)
        while True:
            try:
                prod.produce(topic, key=key, value=value)
                break
            except BufferError:
                prod.poll(0.05)
    prod.flush(60)
    return made / source_s, made / (time.perf_counter() - began), made


def _alarms(n: int, site: str) -> list[dict]:
    from opsloop.models.records import alarm

    return [alarm(i, site, "rack-a01-n1", "gpu", "bench", "XID_79", "GPU fell off the bus", "critical", "raise",
                  {"log_line": LINES[0].format(s=i % 60, n=1, i=i)}) for i in range(n)]


def hwmon_rate(root: Path, polls: int) -> tuple[float, int]:
    """Polls/s of a sysfs tree (copied, so its counters can be read twice); points per poll."""
    from opsloop.config.site import parse_site
    from opsloop.config.sources import parse_sources
    from opsloop.connectors.sources import KINDS

    site = parse_site({"site": {"id": "lab"}, "devices": [{"id": "node-1", "type": "gpu_node"}]}, "lab")
    config = parse_sources({"site": "lab", "sources": [{"kind": "hwmon", "devices": {"*": "node-1"},
                                                         "options": {"root": str(root)}}]}, "bench")[0]
    source = KINDS["hwmon"].build(config, site, time.time)
    source.poll(0)
    began = time.perf_counter()
    points = sum(len(source.poll(1_000 * (i + 1)).points) for i in range(polls))
    return polls / (time.perf_counter() - began), points // polls


def squeue_rate(rows: int) -> float:
    """squeue rows/s parsed, mapped and priced into a snapshot."""
    from opsloop.models.slurm_queue import PartitionDevice, parse_squeue, snapshot

    text = "\n".join(f"{i}|p{i % 4}|{'RUNNING' if i % 3 else 'PENDING'}|{4294901756 - i}|gres:gpu:{1 + i % 8}|N/A|"
                     f"{1 + i % 2}|N/A|1|2026-12-05T18:10:11|2026-12-05T18:15:11|2026-12-05T19:15:11|None|(null)|"
                     f"u{i % 9}|job-{i}" for i in range(rows))
    parts = {f"p{k}": PartitionDevice(f"pod-{k}", "gpu_node", 0.7) for k in range(4)}
    began = time.perf_counter()
    jobs, _ = parse_squeue(text)
    snapshot(1_796_494_211_000, "demo", "bench", jobs, [], parts)
    return rows / (time.perf_counter() - began)


SYSFS = Path(__file__).parents[2] / "tests" / "data" / "sysfs-host"


def run(settings: Settings | None, lines: int = 100_000, sysfs: Path = SYSFS) -> list[str]:
    """The report lines; ``settings`` None: only the parts that need no broker."""
    rate, made = rules_rate(lines)
    out = [f"logs rules      {rate:,.0f} lines/s ({made:,} alarms of {lines:,} lines)"]
    if settings is not None:
        source, bare, made = logs_end_to_end(settings, lines)
        out.append(f"logs -> kafka   {source:,.0f} alarms/s ({made:,} alarms; {source * lines / made:,.0f} lines/s) "
                   f"vs bare producer {bare:,.0f} alarms/s: ratio {source / bare:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(sysfs, Path(tmp) / "sys", symlinks=True)
        polls, points = hwmon_rate(Path(tmp) / "sys", 2_000)
    out.append(f"hwmon           {polls:,.0f} polls/s of {sysfs.name} ({points} points a poll: "
               f"{polls * points:,.0f} points/s)")
    out.append(f"slurm-queue     {squeue_rate(20_000):,.0f} squeue rows/s parsed and priced")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--sysfs", type=Path, default=SYSFS)
    parser.add_argument("--no-kafka", action="store_true", help="only the parts that need no broker")
    args = parser.parse_args(argv)
    print("\n".join(run(None if args.no_kafka else Settings.from_env(), args.lines, args.sysfs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
