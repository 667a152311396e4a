"""`opsloop bench` part two: the anomaly agent's throughput against the bare loop, in one run.

Same method as ops/bench.py (same records, same broker, first record to last,
best of ``rounds``): the baseline consumes, decodes, re-encodes and produces every
point; the anomaly processor (streams/anomaly.py) decodes, scores and learns each
point in its series' detector, produces alarms and checkpoints detector state.
"""

from __future__ import annotations

import threading
import time
import uuid

from ops.bench import _runs, baseline, make_points
from ops.settings import Settings


def anomaly(settings: Settings, n: int) -> float:
    """Events/s of the anomaly processor, first record to last record learnt."""
    from streams.anomaly import AnomalyProcessor

    proc = AnomalyProcessor(settings.replace(app_id=f"bench-{uuid.uuid4().hex[:6]}"))
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
            raise RuntimeError(f"anomaly processor stopped early: {proc.stats}")
        return n / (time.perf_counter() - first)
    finally:
        stop.set()
        thread.join()
        _delete_topic(settings, proc.state_topic)


def _delete_topic(settings: Settings, topic: str) -> None:
    from connectors.kafka import admin

    client = admin(settings)  # held until the futures resolve: a destroyed client fails them
    for future in client.delete_topics([topic]).values():
        future.result(30)


def detector_only(n: int) -> float:
    """Points/s of the detectors alone (100 series, no Kafka, no Avro): the model's own cost."""
    from models.anomaly import EarlyWarning

    series = [EarlyWarning() for _ in range(100)]
    start = time.perf_counter()
    for i in range(n):
        series[i % 100].update(100.0 + i % 37, i * 10)
    return n / (time.perf_counter() - start)


def run_anomaly_bench(settings: Settings, events: int = 200_000, rounds: int = 3) -> int:
    from connectors.kafka import producer, send, wait_delivered
    from ops.kafka import scratch_topics

    # Each round is a fresh consumer group with its own state topic: fresh detectors, nothing restored.
    base, det = [], []
    with scratch_topics(settings, f"bench-{uuid.uuid4().hex[:6]}.", extra_topics=("bench.copy",)) as bench:
        prod = producer(bench)
        for key, value in make_points(events):
            send(prod, bench.topic("telemetry.raw"), key, value)
        wait_delivered(prod)
        del prod
        for _ in range(rounds):
            base.append(baseline(bench, events, bench.topic("bench.copy")))
            det.append(anomaly(bench, events))
    print(f"\nbench: anomaly agent, {events:,} telemetry points of 100 series, best of {rounds} "
          f"(all runs: baseline {_runs(base)}; anomaly {_runs(det)})")
    print(f"  baseline  bare confluent-kafka loop: consume, decode, re-encode, produce  {max(base):>9,.0f} events/s")
    print(f"  anomaly   telemetry.raw -> alarms.raw (streams/anomaly.py)               {max(det):>9,.0f} events/s")
    model = detector_only(min(events, 100_000))
    print(f"  model     the detectors alone, no Kafka or Avro ({1e6 / model:.1f} µs/point)        {model:>9,.0f} events/s")
    print(f"  ratio     anomaly / baseline = {max(det) / max(base):.2f}")
    return 0
