"""`opsloop bench` part two: the anomaly agent's throughput against the bare loop, in one run.

Same method as ops/bench/common.py (same records, same broker, first record to last,
best of ``rounds``): the baseline consumes, decodes, re-encodes and produces every
point; the anomaly processor (streams/anomaly.py) decodes, scores and learns each
point in its series' detector, produces alarms and checkpoints detector state.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

from opsloop.ops.bench.common import (FAUST_DEADLINE_S, FAUST_MAX_EVENTS, runs, baseline, make_points, processor_rate,
                       run_faust_quietly)
from opsloop.config.settings import Settings


def anomaly(settings: Settings, n: int) -> float:
    """Events/s of the anomaly processor, first record to last record learnt."""
    from opsloop.streams.anomaly import AnomalyProcessor

    proc = AnomalyProcessor(settings.replace(app_id=f"bench-{uuid.uuid4().hex[:6]}"))
    try:
        return processor_rate(proc, n, "points")
    finally:
        _delete_topic(settings, proc.changelog.topic)


def _delete_topic(settings: Settings, topic: str) -> None:
    from opsloop.connectors.kafka import admin

    client = admin(settings)  # held until the futures resolve: a destroyed client fails them
    for future in client.delete_topics([topic]).values():
        future.result(30)


def faust_anomaly(settings: Settings, n: int) -> float:
    """Events/s of the same detectors as a tuned Faust agent (take_events, gathered sends), first point to n-th.

    Generous to Faust: detector state lives in a plain dict (no table, no checkpoints).
    """
    from opsloop.config.catalog import cached_catalog
    from opsloop.models.anomaly import EarlyWarning
    from opsloop.schemas.codec import Codec
    from opsloop.streams.anomaly import alarm
    from opsloop.streams.app import catalog_topic

    codec = Codec.default()
    stop = threading.Event()
    marks = {"points": 0, "first": None, "last": None}

    def register(app, settings: Settings) -> None:
        app.conf.consumer_auto_offset_reset = "earliest"
        sink, alarms = catalog_topic(app, settings, "alarms.raw"), cached_catalog(settings.topics_file)["alarms.raw"]
        series: dict[str, EarlyWarning] = {}

        @app.agent(catalog_topic(app, settings, "telemetry.raw"), name="bench-faust-anomaly")
        async def agent(stream):
            async for events in stream.take_events(1000, within=0.05):
                marks["first"] = marks["first"] or time.perf_counter()
                sends = []
                for event in events:
                    point = codec.decode_as("TelemetryPoint", event.value)
                    key = f"{point['site']}|{point['device']}|{point['metric']}"
                    warning = series.get(key) or series.setdefault(key, EarlyWarning())
                    t = warning.update(point["value"], point["ts_ms"])
                    if t is not None:
                        raised = alarm(point, t)
                        sends.append(sink.send(key=alarms.key_of(raised), value=codec.encode(alarms.record, raised)))
                    marks["points"] += 1
                    if marks["points"] == n:
                        marks["last"] = time.perf_counter()
                await asyncio.gather(*sends)
                if marks["last"]:
                    stop.set()

    run_faust_quietly(settings, {"bench-faust-anomaly": register}, stop)
    if marks["last"] is None:
        raise RuntimeError(f"the Faust anomaly agent scored {marks['points']:,} of {n:,} points "
                           f"within {FAUST_DEADLINE_S:.0f} s")
    return n / (marks["last"] - marks["first"])


def detector_only(n: int) -> float:
    """Points/s of the detectors alone (100 series, no Kafka, no Avro): the model's own cost."""
    from opsloop.models.anomaly import EarlyWarning

    series = [EarlyWarning() for _ in range(100)]
    start = time.perf_counter()
    for i in range(n):
        series[i % 100].update(100.0 + i % 37, i * 10)
    return n / (time.perf_counter() - start)


def run_anomaly_bench(settings: Settings, events: int = 200_000, rounds: int = 3) -> int:
    from opsloop.connectors.kafka import producer, send, wait_delivered
    from opsloop.ops.kafka import scratch_topics

    # Each round is a fresh consumer group with its own state topic: fresh detectors, nothing restored.
    base, det, fst = [], [], []
    faust_events = min(events, FAUST_MAX_EVENTS)
    with scratch_topics(settings, f"bench-{uuid.uuid4().hex[:6]}.", extra_topics=("bench.copy",)) as bench:
        prod = producer(bench)
        for key, value in make_points(events):
            send(prod, bench.topic("telemetry.raw"), key, value)
        wait_delivered(prod)
        del prod
        for _ in range(rounds):
            base.append(baseline(bench, events, bench.topic("bench.copy")))
            det.append(anomaly(bench, events))
            fst.append(faust_anomaly(bench, faust_events))
    print(f"\nbench: anomaly agent, {events:,} telemetry points of 100 series, best of {rounds} "
          f"(all runs: baseline {runs(base)}; anomaly {runs(det)}; faust {runs(fst)}; "
          f"the Faust agent reads the first {faust_events:,} points)")
    print(f"  baseline  bare confluent-kafka loop: consume, decode, re-encode, produce  {max(base):>9,.0f} events/s")
    print(f"  anomaly   telemetry.raw -> alarms.raw (streams/anomaly.py)               {max(det):>9,.0f} events/s")
    print(f"  faust     the same detectors as a Faust agent (take_events, gathered sends) {max(fst):>6,.0f} events/s")
    model = detector_only(min(events, 100_000))
    print(f"  model     the detectors alone, no Kafka or Avro ({1e6 / model:.1f} µs/point)        {model:>9,.0f} events/s")
    print(f"  ratio     anomaly / baseline = {max(det) / max(base):.2f}; anomaly / faust = {max(det) / max(fst):.1f}")
    return 0
