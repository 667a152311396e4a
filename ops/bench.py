"""`opsloop bench`: rollup throughput against a bare confluent-kafka loop and a Faust agent, in one run.

All read the same records from the same topic on the same broker: the baseline
consumes, decodes, re-encodes and produces every record (the least any
processor must do); the rollup (streams/rollup.py) decodes, windows per site
and produces closed windows; the Faust agent does the same rollup, tuned the way our
earlier Faust measurements found fastest (take_events, gathered
sends, no DEBUG logging). That last one is why the rollup is not a Faust agent.
Each is timed from its first record to its last, so consumer-group joins, worker
start-up and the rollup's idle wait are left out. Runs alternate and the best of
``rounds`` counts, since this machine is shared and noisy. The Faust agent reads
only the first ``FAUST_MAX_EVENTS`` records (a rate; its runs would be long).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
import uuid
from pathlib import Path

from ops.settings import Settings

SITES, DEVICES_PER_SITE = 2, 50
FAUST_MAX_EVENTS = 50_000
FAUST_DEADLINE_S = 300.0
METRICS = [("grid_meter", "grid_kw"), ("pdu", "it_kw"), ("gpu_node", "gpu_kw"), ("facility_meter", "facility_kw")]


def make_points(n: int, start_ms: int = 1_717_200_000_000) -> list[tuple[bytes, bytes]]:
    """n encoded TelemetryPoints: every device reports once a second, in event-time order."""
    from schemas.codec import Codec

    codec = Codec.default()
    devices = [(f"site-{s}", f"dev-{s}-{d}", *METRICS[d % len(METRICS)])
               for s in range(SITES) for d in range(DEVICES_PER_SITE)]
    out = []
    for i in range(n):
        site, device, device_type, metric = devices[i % len(devices)]
        ts = start_ms + (i // len(devices)) * 1000
        value = {"ts_ms": ts, "site": site, "device": device, "device_type": device_type, "metric": metric,
                 "value": 100.0 + i % 37, "unit": "kW", "source": "bench"}
        out.append((device.encode(), codec.encode("TelemetryPoint", value)))
    return out


def baseline(settings: Settings, n: int, out_topic: str, source: str = "telemetry.raw",
             record: str = "TelemetryPoint") -> float:
    """Events/s of a bare consume → decode → encode → produce loop over a catalog topic."""
    from connectors.kafka import consumer, producer, send, wait_delivered
    from schemas.codec import Codec

    codec = Codec.default()
    cons = consumer(settings, f"bench-baseline-{uuid.uuid4().hex[:6]}", **{"enable.partition.eof": False})
    prod = producer(settings)
    cons.subscribe([settings.topic(source)])
    seen, first = 0, None
    try:
        while seen < n:
            for msg in cons.consume(1000, timeout=0.5):
                if msg.error():
                    continue
                first = first or time.perf_counter()
                send(prod, out_topic, msg.key(), codec.encode(record, codec.decode_as(record, msg.value())))
                seen += 1
            prod.poll(0)
        wait_delivered(prod)
        return n / (time.perf_counter() - first)
    finally:
        cons.close()


def processor_rate(proc, n: int, counter: str) -> float:
    """Events/s of a batch processor run in a thread, from its first event counted to its n-th."""
    stop = threading.Event()
    thread = threading.Thread(target=proc.run, args=(stop,), kwargs={"exit_when_idle": False})
    thread.start()
    first = None
    try:
        while proc.stats[counter] < n and thread.is_alive():
            if first is None and proc.stats[counter]:
                first = time.perf_counter()
            time.sleep(0.002)
        if proc.stats[counter] < n:
            raise RuntimeError(f"{proc.name} stopped early: {proc.stats}")
        return n / (time.perf_counter() - first)
    finally:
        stop.set()
        thread.join()


def rollup(settings: Settings, n: int) -> float:
    """Events/s of the rollup processor, first record to last record folded in."""
    from streams.rollup import RollupProcessor

    return processor_rate(RollupProcessor(settings.replace(app_id=f"bench-{uuid.uuid4().hex[:6]}")), n, "points")


def run_faust_quietly(settings: Settings, agents: dict, stop: threading.Event, deadline_s: float | None = None,
                      quiet: tuple[str, ...] = ()) -> None:
    """Run Faust agents in a throwaway app (own app id, temporary app dir) until ``stop`` or the deadline.

    Faust and aiokafka log start-up and rebalances at info level: held at warning to keep bench output readable.
    """
    from streams.worker import run_faust

    loggers = {name: logging.getLogger(name) for name in ("faust", "mode", "aiokafka", *quiet)}
    levels = {name: log.level for name, log in loggers.items()}
    timer = threading.Timer(deadline_s or FAUST_DEADLINE_S, stop.set)
    with tempfile.TemporaryDirectory() as tmp:  # Faust's app dir: nothing left behind
        try:
            for log in loggers.values():
                log.setLevel(logging.WARNING)
            timer.start()
            run_faust(settings.replace(app_id=f"bench-faust-{uuid.uuid4().hex[:6]}", data_dir=Path(tmp)), agents, stop)
        finally:
            timer.cancel()
            for name, log in loggers.items():
                log.setLevel(levels[name])


def faust_rollup(settings: Settings, n: int) -> float:
    """Events/s of the rollup as a Faust agent, first record to the n-th folded in."""
    from models.rollup import PartitionWatermark, SiteRollup, fold
    from ops.catalog import load_catalog
    from schemas.codec import Codec
    from streams.app import catalog_topic

    codec = Codec.default()
    partitions = load_catalog(settings.topics_file)["telemetry.raw"].partitions
    stop = threading.Event()
    marks = {"points": 0, "late": 0, "first": None, "last": None}

    def register(app, settings: Settings) -> None:
        app.conf.consumer_auto_offset_reset = "earliest"  # Faust's default, but an env var could change it
        sink = catalog_topic(app, settings, "telemetry.site")
        windows = SiteRollup(settings.window_s, settings.grace_s)
        watermark = PartitionWatermark(range(partitions))  # Faust reads partitions unevenly (notes, 5.)

        @app.agent(catalog_topic(app, settings, "telemetry.raw"), name="bench-faust-rollup")
        async def agent(stream):
            async for events in stream.take_events(1000, within=0.05):
                marks["first"] = marks["first"] or time.perf_counter()
                for event in events:
                    point = codec.decode_as("TelemetryPoint", event.value)
                    if fold(windows, watermark, point, event.message.partition, event.message.offset):
                        marks["late"] += 1  # the rollup dead-letters these; the bench data has none
                        continue
                    marks["points"] += 1
                    if marks["points"] == n:
                        marks["last"] = time.perf_counter()
                closed = windows.advance(watermark.value)
                await asyncio.gather(*(sink.send(key=s["site"].encode(), value=codec.encode("SiteSnapshot", s))
                                       for s in closed))
                if marks["last"]:
                    stop.set()

    # Faust and aiokafka log start-up and rebalances at info level: keep the bench output readable.
    run_faust_quietly(settings, {"bench-faust-rollup": register}, stop)
    if marks["last"] is None:
        raise RuntimeError(f"the Faust rollup folded in {marks['points']:,} of {n:,} points "
                           f"({marks['late']:,} late or invalid) within {FAUST_DEADLINE_S:.0f} s")
    return n / (marks["last"] - marks["first"])


def run_bench(settings: Settings, events: int = 200_000, rounds: int = 3) -> int:
    from connectors.kafka import producer, send, wait_delivered
    from ops.catalog import load_catalog
    from ops.kafka import KAFKA_VERSION, scratch_topics

    raw_partitions = load_catalog(settings.topics_file)["telemetry.raw"].partitions
    with scratch_topics(settings, f"bench-{uuid.uuid4().hex[:6]}.", extra_topics=("bench.copy",)) as bench:
        prod = producer(bench)
        for key, value in make_points(events):
            send(prod, bench.topic("telemetry.raw"), key, value)
        wait_delivered(prod)
        del prod  # no client may outlive the broker it talks to
        base, roll, fst = [], [], []
        faust_events = min(events, FAUST_MAX_EVENTS)
        for _ in range(rounds):
            base.append(baseline(bench, events, bench.topic("bench.copy")))
            roll.append(rollup(bench, events))
            fst.append(faust_rollup(bench, faust_events))
    best_base, best_roll, best_faust = max(base), max(roll), max(fst)
    print(f"\nbench: {events:,} telemetry points, {raw_partitions} partitions, Apache Kafka {KAFKA_VERSION} "
          f"on loopback, best of {rounds} (all runs: baseline {_runs(base)}; rollup {_runs(roll)}; "
          f"faust {_runs(fst)})")
    if faust_events < events:
        print(f"  (the Faust agent reads the first {faust_events:,} points of each round: its runs are long)")
    print(f"  baseline  bare confluent-kafka loop: consume, decode, re-encode, produce  {best_base:>9,.0f} events/s")
    print(f"  rollup    telemetry.raw -> telemetry.site (streams/rollup.py)            {best_roll:>9,.0f} events/s")
    print(f"  faust     the same rollup as a Faust agent (take_events, gathered sends) {best_faust:>9,.0f} events/s")
    print(f"  ratio     rollup / baseline = {best_roll / best_base:.2f}  (target >= 0.50)")
    print(f"  ratio     faust / baseline = {best_faust / best_base:.2f}; rollup / faust = {best_roll / best_faust:.1f}")
    from ops import bench_peaks

    print("\n".join(bench_peaks.run(settings)))
    from ops.actuation_bench import run_actuation_bench
    from ops.bench_anomaly import run_anomaly_bench

    anomaly = run_anomaly_bench(settings, events, rounds)
    return anomaly or run_actuation_bench(settings)


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v / 1000:.0f}k" for v in values)
