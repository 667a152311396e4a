"""Broker restart under load: the rollup's end-to-end latency before, during and after a broker outage.

A live source sends one site's telemetry (the demo site's replay streams, round robin) at ``rate``
points/s, event time = wall clock, to a scratch single-node broker of its own (``LocalKafka`` on a
free port). ``opsloop worker --agents rollup`` runs in its own process with 1-s windows and 1-s grace.
A snapshot's latency is its broker timestamp (stamped when the rollup produced it) minus the moment it
could first be emitted (window end + grace): source, broker, rollup and delivery together. After
``warm_s`` the broker is stopped for ``outage_s``, started again, and the run goes on for ``after_s``.

Printed: the rate the source sustained, the worker's state (it must still run), p99 per 5-s bucket
of emission time, and how long after the broker's return p99 is back under 1 s for good. Run with
``python -m opsloop.ops.bench.broker_restart [--rate 10000] [--outage 30] [--after 60]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from opsloop.config.catalog import cached_catalog, load_catalog
from opsloop.config.settings import Settings
from opsloop.config.site import load_site
from opsloop.ops.kafka import free_port_pair

BUCKET_S = 5.0


def _source(settings: Settings, rate: float, stop: threading.Event, sent: list) -> None:
    """Points at ``rate``/s, in 10-ms slices, event time now; counts what it handed to the producer."""
    from opsloop.connectors.kafka import producer, send, wait_delivered
    from opsloop.schemas.codec import Codec

    spec = load_site(settings.topology).replay
    raw = cached_catalog(settings.topics_file)["telemetry.raw"]
    topic, encode, prod = settings.topic("telemetry.raw"), Codec.default().encode, producer(settings)
    began, n = time.monotonic(), 0
    while not stop.is_set():
        due = int((time.monotonic() - began) * rate)
        now_ms = int(time.time() * 1000)
        while n < due:
            s = spec.streams[n % len(spec.streams)]
            p = {"ts_ms": now_ms, "site": spec.site, "device": s.device, "device_type": s.device_type,
                 "metric": s.metric, "value": float(n % 97), "unit": s.unit, "source": "bench"}
            send(prod, topic, raw.key_of(p), encode(raw.record, p))
            n += 1
        prod.poll(0)
        sent[0] = n
        time.sleep(0.01)
    wait_delivered(prod, None)


def _sink(settings: Settings, stop: threading.Event, seen: list) -> None:
    """(emitted at, latency s) of every snapshot, read as it comes (not in a group)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from opsloop.connectors.kafka import consumer
    from opsloop.schemas.codec import Codec

    codec, topic = Codec.default(), settings.topic("telemetry.site")
    cons = consumer(settings, "bench-latency", **{"enable.partition.eof": False})
    parts = len(cons.list_topics(topic, timeout=30).topics[topic].partitions)
    cons.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(parts)])
    grace_ms = settings.grace_s * 1000
    try:
        while not stop.is_set():
            for msg in cons.consume(1000, timeout=0.2):
                if msg.error() is None:
                    snap = codec.decode_as("SiteSnapshot", msg.value())
                    emitted = msg.timestamp()[1]
                    seen.append((emitted / 1000.0, (emitted - snap["window_end_ms"] - grace_ms) / 1000.0))
    finally:
        cons.close()


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def run(rate: float, warm_s: float, outage_s: float, after_s: float) -> dict:
    from opsloop.connectors.kafka import apply_catalog
    from opsloop.ops.kafka import LocalKafka

    base = Settings.from_env()
    work = Path(tempfile.mkdtemp(prefix="opsloop-restart-"))
    kafka = LocalKafka(base.cache_dir, work / "kafka", port=free_port_pair())
    kafka.start()
    settings = base.replace(broker=kafka.bootstrap, topic_prefix="b.", data_dir=work, window_s=1, grace_s=1)
    apply_catalog(settings, load_catalog(settings.topics_file).values())
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLOOP_")}
    env.update(OPSLOOP_BROKER=settings.broker, OPSLOOP_TOPIC_PREFIX="b.", OPSLOOP_DATA_DIR=str(work),
               OPSLOOP_WINDOW_S="1", OPSLOOP_GRACE_S="1", OPSLOOP_IDLE_CLOSE_S="3600")
    log = work / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "opsloop.ops.cli", "worker", "--agents", "rollup"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True)
    stop, sent, seen = threading.Event(), [0], []
    threads = [threading.Thread(target=_source, args=(settings, rate, stop, sent)),
               threading.Thread(target=_sink, args=(settings, stop, seen))]
    try:
        began = time.time()
        for t in threads:
            t.start()
        time.sleep(warm_s)
        kafka.stop()
        down_at = time.time()
        lines_before = log.read_text().count("\n")
        time.sleep(outage_s)
        kafka.start()
        back_at = time.time()
        outage_lines = log.read_text().count("\n") - lines_before
        time.sleep(after_s)
        alive = worker.poll() is None
    finally:
        stop.set()
        for t in threads:
            t.join(120)
        worker.terminate()
        worker.wait(60)
        kafka.stop()
    buckets: dict[int, list[float]] = {}
    for emitted, latency in seen:
        buckets.setdefault(int((emitted - back_at) // BUCKET_S), []).append(latency)
    p99 = {int(b * BUCKET_S): round(_p99(v), 3) for b, v in sorted(buckets.items())}
    late = [b for b, v in p99.items() if b >= 0 and v >= 1.0]
    recovered = max(late) + BUCKET_S if late else 0.0
    before = [lat for emitted, lat in seen if emitted < down_at]
    return {"rate_target": rate, "rate_sent": round(sent[0] / (time.time() - began), 0), "outage_s": outage_s,
            "broker_down_for_s": round(back_at - down_at, 1), "worker_alive_after": alive,
            "worker_exit_code_on_stop": worker.returncode, "worker_log_lines_during_outage": outage_lines,
            "snapshots": len(seen), "p99_before_s": round(_p99(before), 3) if before else None,
            "p99_by_5s_after_return": p99, "p99_under_1s_for_good_after_s": recovered}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=10_000)
    p.add_argument("--warm", type=float, default=20)
    p.add_argument("--outage", type=float, default=30)
    p.add_argument("--after", type=float, default=60)
    args = p.parse_args(argv)
    print(json.dumps(run(args.rate, args.warm, args.outage, args.after), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
