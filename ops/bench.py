"""`opsloop bench`: rollup throughput against a bare confluent-kafka loop, measured in the same run.

Both read the same records from the same topic on the same broker: the baseline
consumes, decodes, re-encodes and produces every record (the least any
processor must do); the rollup decodes, windows per site and produces closed
windows. Each is timed from its first record to its last, so consumer-group
joins and the rollup's idle wait are left out. Runs alternate and the best of
``rounds`` counts, since this machine is shared and noisy.
"""

from __future__ import annotations

import threading
import time
import uuid

from ops.settings import Settings

SITES, DEVICES_PER_SITE = 2, 50
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


def baseline(settings: Settings, n: int, out_topic: str) -> float:
    """Events/s of a bare consume → decode → encode → produce loop."""
    from connectors.kafka import consumer, producer, send, wait_delivered
    from schemas.codec import Codec

    codec = Codec.default()
    cons = consumer(settings, f"bench-baseline-{uuid.uuid4().hex[:6]}", **{"enable.partition.eof": False})
    prod = producer(settings)
    cons.subscribe([settings.topic("telemetry.raw")])
    seen, first = 0, None
    try:
        while seen < n:
            for msg in cons.consume(1000, timeout=0.5):
                if msg.error():
                    continue
                first = first or time.perf_counter()
                value = codec.decode_as("TelemetryPoint", msg.value())
                send(prod, out_topic, msg.key(), codec.encode("TelemetryPoint", value))
                seen += 1
            prod.poll(0)
        wait_delivered(prod)
        return n / (time.perf_counter() - first)
    finally:
        cons.close()


def rollup(settings: Settings, n: int) -> float:
    """Events/s of the rollup processor, first record to last record folded in."""
    from streams.rollup import RollupProcessor

    proc = RollupProcessor(settings.replace(app_id=f"bench-{uuid.uuid4().hex[:6]}"))
    stop = threading.Event()
    thread = threading.Thread(target=proc.run, args=(stop,), kwargs={"exit_when_idle": False})
    thread.start()
    first = None
    try:
        while proc.stats["points"] < n and thread.is_alive():
            if first is None and proc.stats["points"]:
                first = time.perf_counter()
            time.sleep(0.002)
        if proc.stats["points"] < n:
            raise RuntimeError(f"rollup stopped early: {proc.stats}")
        return n / (time.perf_counter() - first)
    finally:
        stop.set()
        thread.join()


def run_bench(settings: Settings, events: int = 200_000, rounds: int = 3) -> int:
    from confluent_kafka.admin import NewTopic

    from connectors.kafka import admin, apply_catalog, producer, send, wait_delivered
    from ops.catalog import load_catalog
    from ops.kafka import KAFKA_VERSION, LocalKafka

    kafka = LocalKafka(settings.cache_dir, settings.data_dir / "kafka", port=settings.kafka_port)
    started = kafka.pid() is None
    print(kafka.start())
    bench = settings.replace(topic_prefix=f"bench-{uuid.uuid4().hex[:6]}.", broker=kafka.bootstrap)
    specs = load_catalog(bench.topics_file)
    copy_topic = bench.topic("bench.copy")
    client = admin(bench)
    try:
        apply_catalog(bench, specs.values())
        raw_partitions = specs["telemetry.raw"].partitions
        for future in client.create_topics([NewTopic(copy_topic, raw_partitions, 1)]).values():
            future.result(30)
        prod = producer(bench)
        for key, value in make_points(events):
            send(prod, bench.topic("telemetry.raw"), key, value)
        wait_delivered(prod)
        base, roll = [], []
        for _ in range(rounds):
            base.append(baseline(bench, events, copy_topic))
            roll.append(rollup(bench, events))
        best_base, best_roll = max(base), max(roll)
        print(f"\nbench: {events:,} telemetry points, {raw_partitions} partitions, Apache Kafka {KAFKA_VERSION} "
              f"on loopback, best of {rounds} (all runs: baseline {_runs(base)}; rollup {_runs(roll)})")
        print(f"  baseline  bare confluent-kafka loop: consume, decode, re-encode, produce  {best_base:>9,.0f} events/s")
        print(f"  rollup    telemetry.raw -> telemetry.site (streams/rollup.py)            {best_roll:>9,.0f} events/s")
        print(f"  ratio     rollup / baseline = {best_roll / best_base:.2f}  (target >= 0.50)")
    finally:
        topics = [bench.topic(name) for name in specs] + [copy_topic]
        for future in client.delete_topics(topics).values():
            future.result(30)
        if started:
            print(kafka.stop())
    return 0


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v / 1000:.0f}k" for v in values)
