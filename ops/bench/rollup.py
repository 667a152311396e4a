"""The rollup suite of `opsloop bench`: rollup throughput against a bare confluent-kafka loop and a Faust agent, in one run;
and the same rollup over TLS + SASL/SCRAM with ACLs on (a second, secure broker; `--no-secure` skips it).

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
from contextlib import contextmanager, nullcontext
from pathlib import Path

from opsloop.config.settings import Settings
from opsloop.ops.kafka import free_port_pair
from opsloop.ops.bench.common import (FAUST_DEADLINE_S, FAUST_MAX_EVENTS, baseline, make_points, processor_rate,
                                      run_faust_quietly, runs)


def rollup(settings: Settings, n: int) -> float:
    """Events/s of the rollup processor, first record to last record folded in."""
    from opsloop.streams.rollup import RollupProcessor

    return processor_rate(RollupProcessor(settings.replace(app_id=f"bench-{uuid.uuid4().hex[:6]}")), n, "points")


def faust_rollup(settings: Settings, n: int) -> float:
    """Events/s of the rollup as a Faust agent, first record to the n-th folded in."""
    from opsloop.models.rollup import LaneWatermarks, SiteRollup, fold
    from opsloop.config.catalog import load_catalog
    from opsloop.schemas.codec import Codec
    from opsloop.streams.app import catalog_topic

    codec = Codec.default()
    catalog = load_catalog(settings.topics_file)
    partitions, site_topic = catalog["telemetry.raw"].partitions, catalog["telemetry.site"]
    stop = threading.Event()
    marks = {"points": 0, "late": 0, "first": None, "last": None}

    def register(app, settings: Settings) -> None:
        app.conf.consumer_auto_offset_reset = "earliest"  # Faust's default, but an env var could change it
        sink = catalog_topic(app, settings, "telemetry.site")
        windows = SiteRollup(settings.window_s, settings.grace_s)
        watermark = LaneWatermarks(range(partitions), int(settings.idle_close_s * 1000))  # read unevenly (notes, 5.)

        @app.agent(catalog_topic(app, settings, "telemetry.raw"), name="bench-faust-rollup")
        async def agent(stream):
            async for events in stream.take_events(1000, within=0.05):
                marks["first"] = marks["first"] or time.perf_counter()
                now_ms = int(time.time() * 1000)
                for event in events:
                    point = codec.decode_as("TelemetryPoint", event.value)
                    if fold(windows, watermark, point, event.message.partition, event.message.offset, now_ms):
                        marks["late"] += 1  # the rollup dead-letters these; the bench data has none
                        continue
                    marks["points"] += 1
                    if marks["points"] == n:
                        marks["last"] = time.perf_counter()
                closed = windows.advance(lanes=watermark.marks(now_ms))
                await asyncio.gather(*(sink.send(key=site_topic.key_of(s), value=codec.encode(site_topic.record, s))
                                       for s in closed))
                if marks["last"]:
                    stop.set()

    # Faust and aiokafka log start-up and rebalances at info level: keep the bench output readable.
    run_faust_quietly(settings, {"bench-faust-rollup": register}, stop)
    if marks["last"] is None:
        raise RuntimeError(f"the Faust rollup folded in {marks['points']:,} of {n:,} points "
                           f"({marks['late']:,} late or invalid) within {FAUST_DEADLINE_S:.0f} s")
    return n / (marks["last"] - marks["first"])


@contextmanager
def secure_bench(settings: Settings, events: int):
    """A TLS + SASL/SCRAM broker with ACLs on, started for the bench alone (state in a temporary directory), with
    the bench's points on its telemetry.raw, written by the super user. Yields ``(broker, admin settings)``."""
    import gc

    from opsloop.connectors.kafka import producer, send, wait_delivered
    from opsloop.ops.kafka import LocalKafka, prefixed_topics

    with tempfile.TemporaryDirectory(prefix="opsloop-bench-secure-") as state:
        kafka = LocalKafka(settings.cache_dir, Path(state), port=free_port_pair(), secure=True)
        print(kafka.start())
        try:
            admin = kafka.client_settings(settings, "admin")
            with prefixed_topics(admin, f"bench-{uuid.uuid4().hex[:6]}.") as bench:
                prod = producer(bench)
                for key, value in make_points(events):
                    send(prod, bench.topic("telemetry.raw"), key, value)
                wait_delivered(prod)
                del prod
                yield kafka, bench
        finally:
            gc.collect()  # no client may outlive the broker
            print(kafka.stop())


def secure_rollup(kafka, bench: Settings, n: int) -> float:
    """Events/s of the rollup processor on the secure broker, as its own principal: the rollup's ACLs are granted
    for a fresh app id (a fresh consumer group), then it runs with the rollup user's SCRAM credentials."""
    from opsloop.config.access import plan
    from opsloop.connectors.kafka import apply_acls
    from opsloop.streams.rollup import RollupProcessor

    app = bench.replace(app_id=f"bench-{uuid.uuid4().hex[:6]}")
    apply_acls(app, plan(app, ["rollup"]))
    return processor_rate(RollupProcessor(kafka.client_settings(app, "rollup")), n, "points")


def run_rollup_bench(settings: Settings, events: int = 200_000, rounds: int = 3, secure: bool = True) -> int:
    from opsloop.connectors.kafka import producer, send, wait_delivered
    from opsloop.config.catalog import load_catalog
    from opsloop.ops.kafka import KAFKA_VERSION, scratch_topics

    raw_partitions = load_catalog(settings.topics_file)["telemetry.raw"].partitions
    with scratch_topics(settings, f"bench-{uuid.uuid4().hex[:6]}.", extra_topics=("bench.copy",)) as bench, \
            (secure_bench(settings, events) if secure else nullcontext((None, None))) as (secure_kafka, secure_topics):
        prod = producer(bench)
        for key, value in make_points(events):
            send(prod, bench.topic("telemetry.raw"), key, value)
        wait_delivered(prod)
        del prod  # no client may outlive the broker it talks to
        base, roll, fst, sec = [], [], [], []
        faust_events = min(events, FAUST_MAX_EVENTS)
        for _ in range(rounds):
            base.append(baseline(bench, events, bench.topic("bench.copy")))
            roll.append(rollup(bench, events))
            if secure:  # right after the plaintext rollup: the same load on this shared machine
                sec.append(secure_rollup(secure_kafka, secure_topics, events))
            fst.append(faust_rollup(bench, faust_events))
    best_base, best_roll, best_faust = max(base), max(roll), max(fst)
    print(f"\nbench: {events:,} telemetry points, {raw_partitions} partitions, Apache Kafka {KAFKA_VERSION} "
          f"on loopback, best of {rounds} (all runs: baseline {runs(base)}; rollup {runs(roll)}; "
          f"faust {runs(fst)})")
    if faust_events < events:
        print(f"  (the Faust agent reads the first {faust_events:,} points of each round: its runs are long)")
    print(f"  baseline  bare confluent-kafka loop: consume, decode, re-encode, produce  {best_base:>9,.0f} events/s")
    print(f"  rollup    telemetry.raw -> telemetry.site (streams/rollup.py)            {best_roll:>9,.0f} events/s")
    print(f"  faust     the same rollup as a Faust agent (take_events, gathered sends) {best_faust:>9,.0f} events/s")
    print(f"  ratio     rollup / baseline = {best_roll / best_base:.2f}  (target >= 0.50)")
    print(f"  ratio     faust / baseline = {best_faust / best_base:.2f}; rollup / faust = {best_roll / best_faust:.1f}")
    if secure:  # the cost of TLS + SASL/SCRAM (+ ACL checks) on the same path, in the same run
        best_sec = max(sec)
        print(f"  secure    the rollup over TLS + SASL/SCRAM, ACLs on, as its own principal {best_sec:>9,.0f} events/s "
              f"(all runs: {runs(sec)})")
        paired = ", ".join(f"{s / r:.2f}" for s, r in zip(sec, roll))
        print(f"  ratio     secure / plaintext rollup = {best_sec / best_roll:.2f} (best of each; round by round: "
              f"{paired})")
    return 0
