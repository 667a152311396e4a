"""The scale suite of `opsloop bench`: Kafka's own limit, the rollup in 1, 2 and 4 processes, exactly-once, a peer.

* **The limit.** Kafka's own perf tools of the broker's release (``ProducerPerformance`` and
  ``ConsumerPerformance`` from ``org.apache.kafka:kafka-tools``, fetched with Maven like the broker)
  write and read 100-byte records on a topic partitioned like ``telemetry.raw``: the most this
  broker and a client give on this machine.
* **Scale-out.** The bench's points (sites spread evenly over the partitions, each site on one, as the
  catalog's site key puts them) are written first. Then 1, 2 and 4 rollup processes join one consumer
  group; each holds its partitions paused until the whole group is assigned, then all read at once.
  Each process reports the points it folded, the wall time from its first point to its last and the
  CPU time it spent meanwhile (all its threads: the Kafka client's too). Points per CPU-second per
  process is the efficiency figure: on a machine with fewer cores than processes (and a broker on the
  same cores) wall-clock totals only show the cores, not the scaling.
* **Exactly-once.** The single-process rollup once more with ``delivery = exactly-once`` (outputs,
  offsets and commit metadata in one Kafka transaction per commit), beside the at-least-once run.
* **Like for like.** ``ConsumerPerformance`` also reads the bench's own ``telemetry.raw``, and the JVM's CPU
  time is measured (``RUSAGE_CHILDREN``) with that of a one-record run taken off (its start-up and exit), so
  each rollup process is printed as a share of the consumer tool's rate by the wall clock and per CPU-second
  (against the tool's best of the two topics).
* **Before and after.** The single process once more decoding with the generic codec instead of
  ``PointDecoder``, in the same rounds.
* **The peer.** The same rollup written in Quix Streams (``ops/bench/quix_rollup.py``), run in a venv of its
  own (``ops/bench/peers.py``: its confluent-kafka pin conflicts with ours) over the same records.
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import resource
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass

from opsloop.config.settings import Settings
from opsloop.ops.bench.common import DEVICES_PER_SITE, METRICS

PERF_RECORDS = 1_000_000  # records of 100 bytes, the perf tools' usual size
SITES_PER_PARTITION = 2
PROCESSES = (1, 2, 4)


@dataclass(frozen=True)
class Share:
    """What one rollup process did: points folded, wall seconds from its first to its last, CPU seconds meanwhile."""

    points: int
    wall_s: float
    cpu_s: float
    first: float  # wall clock (s) of its first point, to add processes up
    last: float
    commits: int  # commits (transactions, under exactly-once) meanwhile


def site_points(n: int, partitions: int, start_ms: int = 1_717_200_000_000) -> list[tuple[int, bytes, bytes]]:
    """n encoded TelemetryPoints as (partition, key, value): ``SITES_PER_PARTITION`` sites on each partition,
    each device once a second in event-time order (the balance a site key gives many sites)."""
    from opsloop.config.catalog import cached_catalog
    from opsloop.schemas.codec import Codec

    codec, raw = Codec.default(), cached_catalog()["telemetry.raw"]
    sites = partitions * SITES_PER_PARTITION
    devices = [(s % partitions, f"site-{s}", f"dev-{s}-{d}", *METRICS[d % len(METRICS)])
               for s in range(sites) for d in range(DEVICES_PER_SITE)]
    out = []
    for i in range(n):
        partition, site, device, device_type, metric = devices[i % len(devices)]
        value = {"ts_ms": start_ms + (i // len(devices)) * 1000, "site": site, "device": device,
                 "device_type": device_type, "metric": metric, "value": 100.0 + i % 37, "unit": "kW",
                 "source": "bench"}
        out.append((partition, raw.key_of(value), codec.encode(raw.record, value)))
    return out


# -- Kafka's own tools ----------------------------------------------------------------------

def _tool_java(settings: Settings) -> list[str]:
    from opsloop.ops.kafka import HERE, LocalKafka

    tools = LocalKafka(settings.cache_dir, settings.data_dir / "kafka").install_tools()
    return ["java", "-Xmx512m", f"-Dlog4j2.configurationFile={HERE / 'log4j2.properties'}", "-cp", str(tools / "*")]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class ToolRun:
    """One ConsumerPerformance run: messages read, rate over its whole run and over fetching alone (its own
    figures, wall clock), and the CPU seconds of the whole JVM (every thread; start-up and exit too)."""

    messages: int
    rate: float
    fetch_rate: float
    cpu_s: float


def consumer_tool(settings: Settings, topic: str, messages: int) -> ToolRun:
    """Kafka's ConsumerPerformance reading ``messages`` of ``topic`` in a group of its own, with the JVM's CPU time
    (the bench reaps no other child meanwhile, so the change in RUSAGE_CHILDREN is the JVM's)."""
    cpu = _children_cpu()
    consumed = subprocess.run(
        [*_tool_java(settings), "org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", settings.broker,
         "--topic", topic, "--messages", str(messages), "--timeout", "60000",
         "--group", f"bench-perf-{uuid.uuid4().hex[:6]}"], capture_output=True, text=True, check=True)
    cpu = _children_cpu() - cpu
    # header, then: start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec,
    # rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
    row = consumed.stdout.strip().splitlines()[-1].split(",")
    return ToolRun(int(float(row[4])), float(row[5]), float(row[9]), cpu)


def kafka_limit(settings: Settings, topic: str, records: int = PERF_RECORDS) -> tuple[float, ToolRun]:
    """ProducerPerformance's records/s writing ``records`` to ``topic``, then ConsumerPerformance reading them."""
    produced = subprocess.run(
        [*_tool_java(settings), "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
         "--num-records", str(records), "--record-size", "100", "--throughput", "-1", "--producer-props",
         f"bootstrap.servers={settings.broker}", "linger.ms=5", "batch.size=262144", "compression.type=lz4"],
        capture_output=True, text=True, check=True)
    rate = re.findall(r"records sent, ([\d.]+) records/sec", produced.stdout)
    return float(rate[-1]), consumer_tool(settings, topic, records)


def tool_per_cpu(run: ToolRun, start_up: ToolRun) -> float:
    """Messages per CPU-second of the consumer tool, its JVM's start-up and exit (a run of one message) taken off."""
    return run.messages / max(run.cpu_s - start_up.cpu_s, 1e-3)


# -- rollup processes ------------------------------------------------------------------------

def _rollup_process(settings: Settings, expected: dict, slot, go, end, results, generic_decode: bool) -> None:
    """One rollup process of the bench's group: partitions paused until ``go``; once it has folded every point of
    its partitions (``expected``: partition → points) its Share goes on ``results``; it stops at ``end`` (a process
    that left earlier would move the others' partitions). ``generic_decode``: decode with the codec, as before
    ``PointDecoder`` (the before/after of the same run)."""
    from confluent_kafka import TopicPartition

    from opsloop.streams.rollup import RollupProcessor

    class GatedRollup(RollupProcessor):
        paused = False

        def on_assign(self, cons, partitions) -> None:
            super().on_assign(cons, partitions)
            cons.assign(partitions)  # assigned here, so they can be paused before the first fetch
            if not go.is_set():
                cons.pause(partitions)
                self.paused = True
            slot.value = len(partitions)

        def on_revoke(self, cons, partitions) -> None:
            slot.value = 0
            super().on_revoke(cons, partitions)

        def before_batch(self) -> None:
            if self.paused and go.is_set():
                self.cons.resume([TopicPartition(t, p) for t, p in sorted(self.assigned)])
                self.paused = False
            super().before_batch()

    proc = GatedRollup(settings)
    if generic_decode:
        proc.decode = functools.partial(proc.codec.decode_as, "TelemetryPoint")

    def watch() -> None:  # first and last point: wall and CPU time of the whole process (every thread)
        go.wait()
        target = sum(expected[p] for _, p in proc.assigned)
        first = None
        while proc.stats["points"] < target and not end.is_set():
            if first is None and proc.stats["points"]:
                first = time.time(), time.process_time()
            time.sleep(0.002)
        last = time.time(), time.process_time()
        first = first or last
        results.put(Share(proc.stats["points"], last[0] - first[0], last[1] - first[1], first[0], last[0],
                          proc.stats["commits"]))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    proc.run(end)
    watcher.join()


def rollup_group(settings: Settings, processes: int, expected: dict, timeout_s: float = 300.0,
                 generic_decode: bool = False) -> list[Share]:
    """Run ``processes`` rollup processes in a fresh consumer group over the bench's topic; their shares."""
    ctx = multiprocessing.get_context("spawn")
    settings = settings.replace(app_id=f"bench-{uuid.uuid4().hex[:6]}")
    go, end, results = ctx.Event(), ctx.Event(), ctx.Queue()
    slots = [ctx.Value("i", 0) for _ in range(processes)]
    children = [ctx.Process(target=_rollup_process, args=(settings, expected, slot, go, end, results, generic_decode))
                for slot in slots]
    for child in children:
        child.start()
    try:
        deadline, stable_since = time.monotonic() + timeout_s, None
        while not go.is_set():  # the group is settled: every process holds partitions, together all of them
            if time.monotonic() > deadline or any(not c.is_alive() for c in children):
                raise RuntimeError(f"the rollup group of {processes} did not settle: {[s.value for s in slots]}")
            settled = sum(s.value for s in slots) == len(expected) and all(s.value for s in slots)
            stable_since = (stable_since or time.monotonic()) if settled else None
            if stable_since and time.monotonic() - stable_since >= 3.0:
                go.set()
            time.sleep(0.1)
        return [results.get(timeout=timeout_s) for _ in children]
    finally:
        end.set()
        for child in children:
            child.join(60)


def summary(shares: list[Share]) -> tuple[int, float, float, int]:
    """(points, points/s of the group by the wall clock, points per CPU-second per process, commits)."""
    points = sum(s.points for s in shares)
    wall = max(s.last for s in shares) - min(s.first for s in shares)
    return points, points / wall, points / sum(s.cpu_s for s in shares), sum(s.commits for s in shares)


def run_scale_bench(settings: Settings, events: int = 200_000, rounds: int = 2) -> int:
    from opsloop.config.catalog import load_catalog
    from opsloop.connectors.kafka import producer, send, wait_delivered
    from opsloop.ops.bench.peers import QUIX_VERSION, quix_rollup
    from opsloop.ops.kafka import KAFKA_VERSION, scratch_topics

    partitions = load_catalog(settings.topics_file)["telemetry.raw"].partitions
    with scratch_topics(settings, f"bench-{uuid.uuid4().hex[:6]}.", extra_topics=("bench.perf",)) as bench:
        prod, expected = producer(bench), dict.fromkeys(range(partitions), 0)
        for partition, key, value in site_points(events, partitions):
            send(prod, bench.topic("telemetry.raw"), key, value, partition=partition)
            expected[partition] += 1
        wait_delivered(prod)
        del prod
        raw = bench.topic("telemetry.raw")
        results: dict[str, list] = {}
        limits, tools, start_ups, quix = [], [], [], []
        for _ in range(rounds):  # rounds alternate: this machine is shared and noisy
            limits.append(kafka_limit(bench, bench.topic("bench.perf")))
            start_ups.append(consumer_tool(bench, raw, 1))  # the JVM's start-up and exit, to take off its CPU
            tools.append(consumer_tool(bench, raw, events))  # like for like: the rollup's own records
            results.setdefault("codec", []).append(summary(rollup_group(bench, 1, expected, generic_decode=True)))
            for n in PROCESSES:
                results.setdefault(f"{n}", []).append(summary(rollup_group(bench, n, expected)))
            results.setdefault("eos", []).append(
                summary(rollup_group(bench.replace(delivery="exactly-once"), 1, expected)))
            quix.append(quix_rollup(bench, events))
    produced = max(p for p, _ in limits)
    limit = max((c for _, c in limits), key=lambda c: c.fetch_rate)
    start_up = min(start_ups, key=lambda t: t.cpu_s)
    tool = max(tools, key=lambda t: t.fetch_rate)
    limit_cpu = max(tool_per_cpu(c, start_up) for _, c in limits)
    tool_cpu = max(tool_per_cpu(t, start_up) for t in tools)
    # the ratios' denominators: the consumer tool's best of either topic, so the share is never flattered
    best_wall, best_cpu = max(limit.fetch_rate, tool.fetch_rate), max(limit_cpu, tool_cpu)
    best = {name: max(runs, key=lambda r: r[2]) for name, runs in results.items()}
    single = best["1"][2]
    print(f"\nscale: {events:,} telemetry points, {partitions} partitions, {partitions * SITES_PER_PARTITION} sites "
          f"(each on one partition), Apache Kafka {KAFKA_VERSION} on loopback, best of {rounds} by points/CPU-s")
    print(f"  limit   Kafka ProducerPerformance, {PERF_RECORDS:,} x 100 B, lz4, linger 5 ms   {produced:>10,.0f} records/s")
    print(f"  limit   Kafka ConsumerPerformance, the same records   {limit.rate:>10,.0f} records/s "
          f"({limit.fetch_rate:,.0f} fetching; {limit_cpu:,.0f} per CPU-s net of the JVM's start-up, "
          f"{limit.messages / limit.cpu_s:,.0f} with it)")
    print(f"  tool    Kafka ConsumerPerformance on the bench's telemetry.raw (the rollup's own records): "
          f"{tool.fetch_rate:,.0f} records/s fetching, {tool_cpu:,.0f} per CPU-s net of the JVM's start-up "
          f"({start_up.cpu_s:.2f} CPU-s for one record; {tool.messages / tool.cpu_s:,.0f} per CPU-s with it)")
    print("  rollup  processes  points/s (group, wall)  points/CPU-s per process  vs 1 process  "
          f"per process / consumer tool's best ({best_wall:,.0f}/s fetching, {best_cpu:,.0f}/CPU-s): wall, CPU")
    rows = [("codec", "1 (codec decode)")] + [(f"{n}", f"{n}") for n in PROCESSES]
    for name, label in rows:
        n = int(label.split()[0])
        _, wall_rate, per_cpu, _ = best[name]
        print(f"  {label:>18}  {wall_rate:>22,.0f}  {per_cpu:>24,.0f}  {per_cpu / single:>12.2f}  "
              f"{wall_rate / n / best_wall:>12.1%}, {per_cpu / best_cpu:.1%}")
    eos_wall, eos_cpu = best["eos"][1], best["eos"][2]
    print(f"  eos     1 process, exactly-once (Kafka transactions)  {eos_wall:>10,.0f} points/s  "
          f"{eos_cpu:>10,.0f} points/CPU-s  = {eos_cpu / single:.2f} of at-least-once per CPU-s, "
          f"{eos_wall / best['1'][1]:.2f} by the wall clock ({best['eos'][3]} transactions; at-least-once: "
          f"{best['1'][3]} commits)")
    q = max(quix, key=lambda r: r["points"] / max(r["cpu_s"], 1e-9))
    q_wall, q_cpu = q["points"] / max(q["wall_s"], 1e-9), q["points"] / max(q["cpu_s"], 1e-9)
    print(f"  peer    Quix Streams {QUIX_VERSION}, the same rollup (1 process, grace 3600 s): {q_wall:>10,.0f} points/s  "
          f"{q_cpu:>10,.0f} points/CPU-s ({q['late']:,} late); opsloop / Quix = {best['1'][1] / q_wall:.1f}x wall, "
          f"{single / q_cpu:.1f}x per CPU-s")
    print(f"  before/after decode (1 process): codec {best['codec'][2]:,.0f} -> PointDecoder {single:,.0f} points/CPU-s "
          f"({single / best['codec'][2]:.2f}x); round by round: "
          + ", ".join(f"{c[2] / 1000:.0f}k -> {f[2] / 1000:.0f}k" for c, f in zip(results["codec"], results["1"])))
    quix_runs = ", ".join(f"{r['points'] / max(r['cpu_s'], 1e-9) / 1000:.0f}k" for r in quix)
    print("  (all runs, points/CPU-s: " + "; ".join(f"{name}: {', '.join(f'{r[2] / 1000:.0f}k' for r in runs)}"
                                                   for name, runs in results.items()) + f"; quix: {quix_runs})")
    return 0
