"""`opsloop bench` (alarms): dedup + correlate throughput and raw-alarm → incident-update latency.

One run, one broker, fresh topics:

* baseline: a bare confluent-kafka loop over the same ``alarms.raw`` records (consume, decode,
  re-encode, produce), the least any agent must do per alarm;
* throughput: storm corpora (models/storm.py on the demo topology) loaded into ``alarms.raw``,
  then dedup and correlate in one process (as batch processors, then as Faust agents), timed
  from the first raw alarm taken to the last clean alarm folded into incidents;
* latency: with the same worker caught up, a storm is sent at ``rate`` alarms/s with event
  time = send time; every incident update's delay is its arrival time minus its
  ``updated_ms`` (the send time of the newest alarm in it). The same is measured for the
  baseline loop (arrival of the copy minus send time) in the same run.

The batch processors (streams/dedup_processor.py, streams/correlate_processor.py) are what
the worker runs; the Faust agents (streams/dedup.py, streams/correlate.py) are measured
beside them because the difference is the reason.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from pathlib import Path

from opsloop.ops.bench.common import baseline
from opsloop.config.settings import Settings
from opsloop.config.site import Site, load_site

TARGET_RATE, TARGET_P99_MS = 5_000, 100.0
DEADLINE_S = 300.0
WARM_UP_MS = 1000.0


def storm_records(site: Site, seeds: int) -> list[dict]:
    from opsloop.ops.evals.storm import generate_storm
    from opsloop.models.topology import Topology

    topo = Topology.from_site(site)
    alarms = []
    for seed in range(seeds):  # corpora one after the other in event time
        storm = generate_storm(topo, seed=seed, start_ms=1_780_000_000_000 + seed * 4 * 3_600_000)
        alarms += [a for a, _ in storm.alarms]
    return alarms


def _send(settings: Settings, alarms: list[dict]) -> None:
    from opsloop.connectors.kafka import producer, send_record, wait_delivered
    from opsloop.schemas.codec import Codec

    codec, prod = Codec.default(), producer(settings)
    for alarm in alarms:
        send_record(prod, settings, "alarms.raw", alarm, codec)
    wait_delivered(prod)


class _Paced:
    """Sends alarms at ``rate``/s with event time = send time (the wall clock is the bench's, not a model's)."""

    def __init__(self, settings: Settings, alarms: list[dict], rate: float):
        self.settings, self.alarms, self.rate = settings, alarms, rate

    def run(self) -> None:
        from opsloop.connectors.kafka import producer, send_record, wait_delivered
        from opsloop.schemas.codec import Codec

        codec, prod = Codec.default(), producer(self.settings, **{"linger.ms": 0})
        start = time.perf_counter()
        for i, alarm in enumerate(self.alarms):
            due = start + i / self.rate
            while (ahead := due - time.perf_counter()) > 0:
                time.sleep(min(ahead, 0.001))
            send_record(prod, self.settings, "alarms.raw", {**alarm, "ts_ms": int(time.time() * 1000)}, codec)
            prod.poll(0)
        wait_delivered(prod)


def _collect(settings: Settings, topic: str, record: str, ts_field, stop: threading.Event, out: list[float],
             ready: threading.Event) -> None:
    """Delays (ms) of records arriving on ``topic`` from now on: arrival minus ``ts_field(record)``.

    Records dated before the paced run (old incidents resolved by the first new alarm) and in its
    first second (consumer and producer warm-up) are left out, for every contender alike."""
    from confluent_kafka import OFFSET_END, TopicPartition

    from opsloop.connectors.kafka import consumer
    from opsloop.schemas.codec import Codec

    codec = Codec.default()
    cons = consumer(settings, f"bench-lat-{uuid.uuid4().hex[:6]}", **{"enable.partition.eof": False,
                                                                        "fetch.wait.max.ms": 5})
    parts = cons.list_topics(topic, timeout=30).topics[topic].partitions
    cons.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])
    cons.consume(1, timeout=1.0)  # settle the assignment before anything is sent
    since_ms = time.time() * 1000 + WARM_UP_MS
    ready.set()
    try:
        while not stop.is_set():
            msg = cons.poll(0.05)  # returns as soon as one record is there: adds no wait of its own
            if msg is not None:
                if msg.error() is None:
                    arrived = time.time() * 1000
                    stamp = ts_field(codec.decode_as(record, msg.value()))
                    if stamp >= since_ms:
                        out.append(arrived - stamp)
    finally:
        cons.close()


def _latency_of(settings: Settings, alarms: list[dict], rate: float, topic: str, record: str, ts_field,
                drain_s: float = 3.0) -> list[float]:
    stop, ready, delays = threading.Event(), threading.Event(), []
    reader = threading.Thread(target=_collect, args=(settings, topic, record, ts_field, stop, delays, ready))
    reader.start()
    ready.wait(30)
    _Paced(settings, alarms, rate).run()
    time.sleep(drain_s)
    stop.set()
    reader.join()
    return delays


def _baseline_latency(settings: Settings, alarms: list[dict], rate: float, copy_topic: str) -> list[float]:
    """The bare loop running while paced alarms go through it: delay of each copy."""
    from opsloop.connectors.kafka import consumer, producer, send
    from opsloop.schemas.codec import Codec

    codec, stop = Codec.default(), threading.Event()
    cons = consumer(settings, f"bench-alarm-baseline-lat-{uuid.uuid4().hex[:6]}",
                    **{"enable.partition.eof": False, "auto.offset.reset": "latest", "fetch.wait.max.ms": 5})
    prod = producer(settings, **{"linger.ms": 0})
    cons.subscribe([settings.topic("alarms.raw")])
    while not cons.assignment():
        cons.consume(1, timeout=0.2)

    def loop() -> None:
        while not stop.is_set():
            for msg in cons.consume(1000, timeout=0.05):
                if msg.error() is None:
                    send(prod, copy_topic, msg.key(), codec.encode("Alarm", codec.decode_as("Alarm", msg.value())))
            prod.poll(0)
        prod.flush(10)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        return _latency_of(settings, alarms, rate, copy_topic, "Alarm", lambda a: a["ts_ms"])
    finally:
        stop.set()
        thread.join()
        cons.close()


def processors_phase(bench: Settings, site: Site, n: int, paced: list[dict],
                     rate: float) -> tuple[float, list[float], dict]:
    """The dedup and correlate batch processors in one process (two threads)."""
    from opsloop.streams.correlate import CorrelateProcessor
    from opsloop.streams.dedup import DedupProcessor

    settings = bench.replace(app_id=f"bench-alarm-proc-{uuid.uuid4().hex[:6]}")
    dedup, correlate = DedupProcessor(settings), CorrelateProcessor(settings, [site])
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,)) for p in (dedup, correlate)]
    for t in threads:
        t.start()
    first = done = None
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline and all(t.is_alive() for t in threads):
            if first is None and dedup.stats["in"]:
                first = time.perf_counter()
            if dedup.stats["in"] >= n and correlate.stats["in"] >= dedup.stats["out"]:
                done = time.perf_counter()
                break
            time.sleep(0.002)
        if done is None:
            raise RuntimeError(f"the processors did not finish {n:,} alarms: {dedup.stats}, {correlate.stats}")
        delays = _latency_of(settings, paced, rate, settings.topic("incidents"), "Incident", lambda r: r["updated_ms"])
        return n / (done - first), delays, {"clean": dedup.stats["out"]}
    finally:
        stop.set()
        for t in threads:
            t.join()


def faust_phase(bench: Settings, n: int, paced: list[dict], rate: float) -> tuple[float, list[float], dict]:
    """The dedup and correlate Faust agents in one worker."""
    from opsloop.ops.bench.faust_twins import correlate, dedup
    from opsloop.streams.worker import run_faust

    stop, marks, apps = threading.Event(), {}, []

    def monitor(app, settings: Settings) -> None:
        apps.append(app)

    def control() -> None:
        while not stop.is_set() and (not apps or "raw" not in apps[0].__dict__.get("opsloop_stats", {})):
            time.sleep(0.01)
        stats = apps[0].opsloop_stats if apps else {}
        while not stop.is_set():
            if "first" not in marks and stats["raw"]:
                marks["first"] = time.perf_counter()
            if stats["raw"] >= n and stats["clean_in"] >= stats["clean"]:
                marks["done"] = time.perf_counter()
                break
            time.sleep(0.002)
        if "done" in marks:
            marks["delays"] = _latency_of(bench, paced, rate, bench.topic("incidents"), "Incident",
                                          lambda r: r["updated_ms"])
            marks["stats"] = dict(stats)
        stop.set()

    controller = threading.Thread(target=control)
    timer = threading.Timer(DEADLINE_S, stop.set)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            controller.start()
            timer.start()
            run_faust(bench.replace(app_id=f"bench-alarms-{uuid.uuid4().hex[:6]}", data_dir=Path(tmp)),
                      {"dedup": dedup.register, "correlate": correlate.register, "monitor": monitor}, stop)
        finally:
            stop.set()
            timer.cancel()
            controller.join()
    if "done" not in marks:
        raise RuntimeError(f"the Faust agents did not finish {n:,} alarms within {DEADLINE_S:.0f} s")
    return n / (marks["done"] - marks["first"]), marks["delays"], marks["stats"]


def run_alarm_bench(settings: Settings, seeds: int = 6, rate: float = 1000.0, latency_s: float = 10.0) -> int:
    from opsloop.ops.kafka import scratch_topics

    site = load_site(settings.topology)
    alarms = storm_records(site, seeds)
    n = len(alarms)
    paced = storm_records(site, 1)[: int(rate * latency_s)]
    quiet = {name: logging.getLogger(name) for name in ("faust", "mode", "aiokafka")}
    levels = {name: log.level for name, log in quiet.items()}
    try:
        for log in quiet.values():
            log.setLevel(logging.ERROR)
        with scratch_topics(settings, f"bench-alarms-{uuid.uuid4().hex[:6]}.", extra_topics=("bench.copy",)) as bench:
            _send(bench, alarms)
            base = baseline(bench, n, bench.topic("bench.copy"), source="alarms.raw", record="Alarm")
            base_delays = _baseline_latency(bench, paced, rate, bench.topic("bench.copy"))
            proc_rate, proc_delays, proc_stats = processors_phase(bench, site, n, paced, rate)
            # the Faust agents read everything on alarms.raw: the corpora and both paced runs so far
            faust_rate, faust_delays, faust_stats = faust_phase(bench, n + 2 * len(paced), paced, rate)
    finally:
        for name, log in quiet.items():
            log.setLevel(levels[name])
    base_p99, proc_p99, faust_p99 = _p99(base_delays), _p99(proc_delays), _p99(faust_delays)
    print(f"\nbench (alarms): {n:,} raw alarms from {seeds} storm corpora on {Path(site.source).name}, "
          "one worker each")
    print(f"  baseline    bare confluent-kafka loop: consume, decode, re-encode, produce  {base:>9,.0f} alarms/s")
    print(f"  processors  dedup + correlate batch processors (the worker's default)      {proc_rate:>9,.0f} alarms/s "
          f"(target >= {TARGET_RATE:,}; {proc_stats['clean']:,} clean alarms)")
    print(f"  faust       dedup + correlate Faust agents (take_events, tables)           {faust_rate:>9,.0f} alarms/s")
    print(f"  ratio       processors / baseline = {proc_rate / base:.2f}; faust / baseline = {faust_rate / base:.2f}")
    print(f"  latency     raw alarm -> incident update at {rate:,.0f} alarms/s for {latency_s:g} s, p99 (p50): "
          f"processors {proc_p99:.1f} ms ({_p(proc_delays, 0.5):.1f}) over {len(proc_delays):,} updates, "
          f"faust {faust_p99:.1f} ms ({_p(faust_delays, 0.5):.1f}) over {len(faust_delays):,}; "
          f"target < {TARGET_P99_MS:.0f} ms")
    print(f"  baseline    raw -> copy p99 {base_p99:.1f} ms ({_p(base_delays, 0.5):.1f}); "
          f"ratio processors / baseline = {proc_p99 / base_p99:.1f}")
    return 0


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[int(q * (len(values) - 1))] if values else float("nan")


def _p99(values: list[float]) -> float:
    return _p(values, 0.99)
