"""`opsloop bench --suite loop`: the closed loop's latency, from a telemetry point to the PCS register write it causes.

The site twin's physics (models/twin.py; ESS power and state of charge read back from the PCS simulator's
battery) makes ``rate`` points/s (10,000 by default), each stamped with the run's clock as it is sent to
``telemetry.raw`` of a scratch broker of its own. ``opsloop worker --agents rollup,peaks,guard,pcs-sink`` runs
in its own process, as in production, on the same clock (``speed`` twin seconds per wall second), with 1-minute
windows, 1-minute planning steps and the grid-limit control, so every window that closes is a planning step
and proposes a PCS action; the guard approves it and the sink writes it to the simulator over Modbus TCP.

The point that causes an action is the first one sent with an event time at or past its step's end plus the
rollup's grace (the point that lets the window close; ``created_ms`` of a peaks action is its step's end).
The write is the simulator's first register write of that action (its register log, on the run's clock,
between the sink's previous result and this action's). Latency = write (wall) - send of that point (wall).

Baseline, in the same run and on the same broker: a bare one-hop loop, one producer and one consumer at the
same rate, latency = consumed - sent. Printed: p50/p99/max of both, their ratios, and the p99 target (< 1 s).

    opsloop bench --suite loop [--loop-rate 10000] [--loop-seconds 60]
"""

from __future__ import annotations

import bisect
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from opsloop.config.clock import Clock
from opsloop.config.settings import Settings
from opsloop.ops.bench.actuation import percentile

TARGET_P99_S = 1.0
TICK_S = 0.01  # the source sends in 10-ms slices, all points of a slice with the slice's event time
START_S = 960_163_200 + 14 * 3600  # twin time: an afternoon of the bundled Taylor curve
AGENTS = "rollup,peaks,guard,pcs-sink"
HOP_TOPIC = "bench.hop"
WARM_S = 10.0  # neither loop is measured in its first seconds: clients connect, groups join, the worker starts


def bare_hop(settings: Settings, rate: float, seconds: float) -> list[float]:
    """Produce -> consume latencies (s) of a bare confluent-kafka loop at ``rate`` messages/s."""
    from confluent_kafka import OFFSET_END, TopicPartition
    from confluent_kafka.admin import NewTopic

    from opsloop.connectors.kafka import admin, consumer, producer, send, wait_delivered

    topic = settings.topic(HOP_TOPIC)
    client = admin(settings)  # held until the topic exists: a dropped handle cancels the request
    client.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    cons = consumer(settings, f"bench-hop-{uuid.uuid4().hex[:6]}", **{"enable.partition.eof": False})
    cons.assign([TopicPartition(topic, 0, OFFSET_END)])
    cons.consume(1, timeout=1.0)  # joined and positioned before the first message is sent
    latencies: list[float] = []
    done, measured_from = threading.Event(), float("inf")

    def receive() -> None:
        while not done.is_set():
            for msg in cons.consume(1000, timeout=0.1):
                if msg.error() is None:
                    sent = struct.unpack("!d", msg.value())[0]
                    if sent >= measured_from:
                        latencies.append(time.time() - sent)

    reader = threading.Thread(target=receive, name="bench-hop-consumer")
    reader.start()
    prod = producer(settings)
    began, n = time.monotonic(), 0
    measured_from = time.time() + WARM_S
    try:
        while time.monotonic() - began < WARM_S + seconds:
            due = int((time.monotonic() - began) * rate)
            while n < due:
                send(prod, topic, None, struct.pack("!d", time.time()))
                n += 1
            prod.poll(0)
            time.sleep(TICK_S)
        wait_delivered(prod)
        deadline = time.monotonic() + 10
        last = -1
        while time.monotonic() < deadline and len(latencies) != last:  # until the consumer has caught up
            last = len(latencies)
            time.sleep(0.5)
    finally:
        done.set()
        reader.join(30)
        cons.close()
    return latencies


class TwinSource:
    """The twin's points at ``rate``/s, stamped with the run's clock; ``ticks`` keeps (event ms, wall s sent)."""

    def __init__(self, settings: Settings, site, clock: Clock, sim, rate: float):
        from opsloop.models.twin import SiteTwin
        from opsloop.ops.twin import DEFAULT_DATA, read_curve

        self.settings, self.clock, self.sim, self.rate = settings, clock, sim, rate
        self.twin = SiteTwin(site, read_curve(DEFAULT_DATA))
        self.ticks: list[tuple[int, float]] = []
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        from opsloop.config.catalog import cached_catalog
        from opsloop.connectors.kafka import producer, send, wait_delivered
        from opsloop.schemas.codec import Codec

        raw = cached_catalog(self.settings.topics_file)["telemetry.raw"]
        topic, encode, prod = self.settings.topic("telemetry.raw"), Codec.default().encode, producer(self.settings)
        points, sampled = [], -1.0
        began = time.monotonic()
        while not self.stop.is_set():
            wall = time.time()
            now_ms = int(self.clock() * 1000)
            if wall - sampled >= 0.1:  # a new sample of the site every 100 ms wall: the PCS's power and SoC with it
                battery = self.sim.battery
                state = self.twin.measure(now_ms, battery.power_kw)
                self.sim.measure_site(state.facility_kw)  # the PCS's grid-limit mode follows the site meter
                points, sampled = self.twin.points(state, battery.soc_pct, battery.battery.soh_pct), wall
            due = int((time.monotonic() - began) * self.rate)
            if due > self.sent:
                self.ticks.append((now_ms, wall))
            while self.sent < due:
                p = dict(points[self.sent % len(points)], ts_ms=now_ms)
                send(prod, topic, raw.key_of(p), encode(raw.record, p))
                self.sent += 1
            prod.poll(0)
            time.sleep(TICK_S)
        wait_delivered(prod, 30)

    def sent_at(self, ts_ms: int) -> float | None:
        return first_sent_at(self.ticks, ts_ms)


def first_sent_at(ticks: list[tuple[int, float]], ts_ms: int) -> float | None:
    """Wall time the first point with an event time at or past ``ts_ms`` was sent (``ticks``: (event ms, wall s)
    in send order), None when none was.

    >>> first_sent_at([(1_000, 10.0), (1_600, 10.01), (1_600, 10.02)], 1_100), first_sent_at([(1_000, 10.0)], 1_001)
    (10.01, None)
    """
    i = bisect.bisect_left(ticks, (ts_ms, float("-inf")))
    return ticks[i][1] if i < len(ticks) else None


def read_all(settings: Settings, topic: str, record: str) -> list[dict]:
    """Every record of a catalog topic, each with ``_produced_s``: the producer's timestamp (wall s)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from opsloop.connectors.kafka import consumer, watermark_offsets
    from opsloop.schemas.codec import Codec

    codec, name = Codec.default(), settings.topic(topic)
    cons = consumer(settings, f"bench-read-{uuid.uuid4().hex[:6]}", **{"enable.partition.eof": False})
    out: list[dict] = []
    try:
        parts = cons.list_topics(name, timeout=30).topics[name].partitions
        for p in parts:
            tp = TopicPartition(name, p, OFFSET_BEGINNING)
            _, high = watermark_offsets(cons, tp)
            if high <= 0:
                continue
            cons.assign([tp])
            got, deadline = 0, time.monotonic() + 30
            while got < high and time.monotonic() < deadline:
                for msg in cons.consume(1000, timeout=1.0):
                    if msg.error() is None:
                        out.append({**codec.decode_as(record, msg.value()), "_produced_s": msg.timestamp()[1] / 1000})
                    got = msg.offset() + 1
    finally:
        cons.close()
    return out


def loop_latencies(settings: Settings, source: TwinSource, sim, clock: Clock, sink_name: str,
                   measured_from: float) -> tuple[list[float], dict]:
    """(latency s of every peaks action the sink wrote, counts): see the module's docstring."""
    verdicts = read_all(settings, "actions.approved", "ApprovedAction")
    decided = {v["action"]["action_id"]: v["_produced_s"] for v in verdicts}
    proposed = {a["action_id"]: a["_produced_s"] for a in read_all(settings, "actions.proposed", "Action")}
    snapshots = {s["window_end_ms"]: s["_produced_s"] for s in read_all(settings, "telemetry.site", "SiteSnapshot")}
    approved = {v["action"]["action_id"]: v["action"] for v in verdicts if v["verdict"] == "approved"}
    refused = [v for v in verdicts if v["verdict"] != "approved" and v["action"]["proposer"] == "peaks"]
    results = sorted((r for r in read_all(settings, "actions.results", "ActionResult") if r["executor"] == sink_name),
                     key=lambda r: r["ts_ms"])
    writes = [t for t, _, _ in sim.register_log]
    grace_ms = settings.grace_s * 1000
    latencies, stages, previous_s = [], [], float("-inf")
    counts = {"approved": sum(1 for a in approved.values() if a["proposer"] == "peaks"), "written": 0,
              "unmatched": 0, "refused": len(refused),
              "first_refusal": "; ".join(refused[0]["reasons"])[:300] if refused else ""}
    for result in results:
        done_s = result["ts_ms"] / 1000
        mine = [t for t in writes if previous_s < t <= done_s + 0.001]
        previous_s = done_s
        action = approved.get(result["action_id"])
        if action is None or action["proposer"] != "peaks" or result["status"] != "executed":
            continue
        sent = source.sent_at(action["created_ms"] + grace_ms)
        if sent is not None and sent < measured_from:  # warming up
            continue
        if not mine or sent is None:
            counts["unmatched"] += 1
            continue
        counts["written"] += 1
        write = clock.anchor_s + (mine[0] - clock.epoch_s) / clock.speed  # in wall s
        latencies.append(write - sent)
        marks = (snapshots.get(action["created_ms"]), proposed.get(action["action_id"]),
                 decided.get(action["action_id"]), write)
        if None not in marks:
            stages.append([b - a for a, b in zip((sent, *marks[:-1]), marks)])
    counts["stages"] = stages
    return latencies, counts


def wait_assigned(log: Path, worker: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Until the worker's rollup and peaks have their partitions (its log says so)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "rollup assigned" in text and "peaks assigned" in text:
            time.sleep(1.0)  # the guard and the sink join their groups alongside
            return
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}): {text[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"the worker's agents had no partitions after {timeout_s:.0f} s: see {log}")


def _worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLOOP_")}
    env.update(settings.kafka_env())
    for name in ("topic_prefix", "data_dir", "window_s", "grace_s", "idle_close_s", "peaks_step_s", "peaks_control",
                 "pcs_modbus", "batch_size", "verdict_key", "feedback_key", "verify_window_s", "topology", "policy"):
        value = getattr(settings, name)
        if value not in (None, ""):
            env[f"OPSLOOP_{name.upper()}"] = str(value)
    return env


def run_loop_bench(settings: Settings, rate: float = 10_000, seconds: float = 100.0, speed: float = 60.0,
                   hop_seconds: float = 15.0, batch_size: int | None = None) -> int:
    from opsloop.config.catalog import load_catalog
    from opsloop.config.site import load_site
    from opsloop.connectors.kafka import apply_catalog
    from opsloop.ops.actuation_demo import with_run_keys
    from opsloop.ops.kafka import LocalKafka, free_port_pair
    from opsloop.ops.pcs_sim import from_site
    from opsloop.ops.bench.actuation import _free_port

    site = load_site(settings.topology)
    work = Path(tempfile.mkdtemp(prefix="opsloop-loop-bench-"))
    kafka = LocalKafka(settings.cache_dir, work / "kafka", port=free_port_pair())
    kafka.start()
    worker = None
    try:
        clock = Clock.starting(START_S, speed)
        pcs_port = _free_port()
        bench = with_run_keys(settings.replace(
            broker=kafka.bootstrap, topic_prefix="lb.", data_dir=work, window_s=60, grace_s=10, idle_close_s=3600.0,
            peaks_step_s=60, peaks_control="grid_limit", batch_size=batch_size or settings.batch_size,
            pcs_modbus=f"127.0.0.1:{pcs_port}", verify_window_s=600.0, clock_epoch_s=clock.epoch_s, clock_anchor_s=clock.anchor_s,
            clock_speed=clock.speed))
        apply_catalog(bench, load_catalog(bench.topics_file).values())

        hop = bare_hop(bench, rate, hop_seconds)

        with from_site(site, pcs_port, clock=bench.clock(), soc_pct=80.0) as sim:
            log = work / "worker.log"
            with open(log, "wb") as out:
                worker = subprocess.Popen([sys.executable, "-m", "opsloop.ops.cli", "worker", "--agents", AGENTS],
                                          env=_worker_env(bench), stdout=out, stderr=out, start_new_session=True)
            wait_assigned(log, worker)  # the source starts on a worker that reads: no backlog to catch up on
            source = TwinSource(bench, site, bench.clock(), sim, rate)
            thread = threading.Thread(target=source.run, name="bench-twin-source")
            began = time.monotonic()
            measured_from = time.time() + WARM_S
            thread.start()
            time.sleep(WARM_S + seconds)
            source.stop.set()
            thread.join(60)
            sent_rate = source.sent / (time.monotonic() - began)
            time.sleep(3.0)  # the last steps' actions reach the PCS
            alive = worker.poll() is None
            worker.terminate()
            worker.wait(60)
            latencies, counts = loop_latencies(bench, source, sim, clock, "pcs-sink", measured_from)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        kafka.stop()
    print(f"\nbench: closed loop, telemetry point -> PCS register write; {rate:,.0f} points/s of the site twin "
          f"(sent {sent_rate:,.0f}/s) into {AGENTS} (one worker process, batches of at most {bench.batch_size:,}), "
          f"clock {speed:g}x, 1-min windows and steps")
    if not alive:
        print(f"  the worker stopped during the run: see {log}")
    if counts["first_refusal"]:
        print(f"  the guard refused {counts['refused']} peaks action(s), the first because: {counts['first_refusal']}")
    if not latencies or not hop:
        print(f"  no latency measured ({counts}, {len(hop)} hop messages); worker log: {log}")
        return 1
    h50, h99, l50, l99 = (percentile(hop, 50), percentile(hop, 99), percentile(latencies, 50),
                          percentile(latencies, 99))
    print(f"  baseline  bare one hop, produce -> consume, {len(hop):,} messages   "
          f"p50 {h50 * 1000:7.1f} ms   p99 {h99 * 1000:7.1f} ms   max {max(hop) * 1000:.1f} ms")
    print(f"  loop      point -> rollup -> peaks -> guard -> pcs-sink -> register, {len(latencies)} actions   "
          f"p50 {l50 * 1000:7.1f} ms   p99 {l99 * 1000:7.1f} ms   max {max(latencies) * 1000:.1f} ms")
    print(f"  ratio     loop / hop: p50 {l50 / h50:.1f}x, p99 {l99 / h99:.1f}x; peaks actions approved "
          f"{counts['approved']}, written {counts['written']}, unmatched {counts['unmatched']}, "
          f"refused by the guard {counts['refused']}")
    if counts["stages"]:
        names = ("point -> snapshot", "snapshot -> proposed", "proposed -> approved", "approved -> register write")
        print("  stages    " + ", ".join(f"{n} p50 {percentile([s[i] for s in counts['stages']], 50) * 1000:.0f} / "
                                       f"p99 {percentile([s[i] for s in counts['stages']], 99) * 1000:.0f} ms"
                                       for i, n in enumerate(names)))
    print(f"  target    p99 < {TARGET_P99_S:g} s wall-clock at {rate:,.0f} points/s: "
          f"{'met' if l99 < TARGET_P99_S and sent_rate >= 0.95 * rate else 'NOT met'}")
    return 0 if l99 < TARGET_P99_S else 1
