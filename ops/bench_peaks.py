"""The peaks agent's throughput in `opsloop bench`: site snapshots/s per worker, against a bare loop.

One site's 1-minute snapshots (a synthetic daily curve: the planner does real
work at every 15-minute step) go to ``telemetry.site``. The baseline is a bare
confluent-kafka loop that consumes, decodes, re-encodes and produces each
snapshot; the peaks agent (streams/peaks.py, one Faust worker) decodes, folds,
learns, forecasts, plans and publishes. Both are timed from their first
snapshot to their last, in the same run on the same records.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
import uuid
from pathlib import Path

from ops.settings import Settings

TARGET_PER_S = 5000
DEADLINE_S = 300.0


def make_snapshots(n: int, site: str, start_ms: int = 1_717_200_000_000) -> list[tuple[bytes, bytes]]:
    from schemas.codec import Codec

    codec = Codec.default()
    out = []
    for i in range(n):
        ts = start_ms + i * 60_000
        hour = (ts / 3_600_000) % 24
        grid = 25_000 + 8_000 * max(0.0, math.sin(math.pi * (hour - 6) / 14)) + 300 * math.sin(i * 0.7)
        snap = {"site": site, "window_start_ms": ts, "window_end_ms": ts + 60_000, "grid_kw": grid,
                "it_kw": grid / 1.2, "facility_kw": grid, "ess_soc_pct": 80.0, "ess_soh_pct": 97.0, "ess_kw": 0.0,
                "gpu_kw": None, "pue": 1.2, "price_per_mwh": None, "samples": 16, "devices": 16}
        out.append((site.encode(), codec.encode("SiteSnapshot", snap)))
    return out


def baseline(settings: Settings, n: int) -> float:
    from connectors.kafka import consumer, producer, send, wait_delivered
    from schemas.codec import Codec

    codec = Codec.default()
    cons = consumer(settings, f"bench-peaks-baseline-{uuid.uuid4().hex[:6]}", **{"enable.partition.eof": False})
    prod = producer(settings)
    cons.subscribe([settings.topic("telemetry.site")])
    seen, first = 0, None
    try:
        while seen < n:
            for msg in cons.consume(1000, timeout=0.5):
                if msg.error():
                    continue
                first = first or time.perf_counter()
                value = codec.decode_as("SiteSnapshot", msg.value())
                send(prod, settings.topic("bench.copy"), msg.key(), codec.encode("SiteSnapshot", value))
                seen += 1
            prod.poll(0)
        wait_delivered(prod)
        return n / (time.perf_counter() - first)
    finally:
        cons.close()


def peaks_agent(settings: Settings, n: int) -> float:
    """Snapshots/s of the peaks agent, from the end of its first batch to the batch holding the n-th snapshot."""
    from streams.peaks import register
    from streams.worker import run_faust

    stop = threading.Event()
    marks = {"first": None, "last": None, "seen": 0, "counted": 0}

    def observe(decisions, events) -> None:
        marks["seen"] += events
        if marks["first"] is None:
            marks["first"] = time.perf_counter()  # the first batch includes start-up: not counted
        else:
            marks["counted"] += events
        if marks["seen"] >= n:
            marks["last"] = time.perf_counter()
            stop.set()

    quiet = {name: logging.getLogger(name) for name in ("faust", "mode", "aiokafka", "opsloop.peaks")}
    levels = {name: log.level for name, log in quiet.items()}
    timer = threading.Timer(DEADLINE_S, stop.set)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for log in quiet.values():
                log.setLevel(logging.WARNING)
            timer.start()
            run_faust(settings.replace(app_id=f"bench-peaks-{uuid.uuid4().hex[:6]}", data_dir=Path(tmp)),
                      {"peaks": lambda app, s: register(app, s, observe)}, stop)
        finally:
            timer.cancel()
            for name, log in quiet.items():
                log.setLevel(levels[name])
    if marks["last"] is None or not marks["counted"]:
        raise RuntimeError(f"the peaks agent read {marks['seen']:,} of {n:,} snapshots within {DEADLINE_S:.0f} s")
    return marks["counted"] / (marks["last"] - marks["first"])


def run(settings: Settings, snapshots: int = 50_000, rounds: int = 2) -> list[str]:
    """Both measurements on fresh topics of their own; returns the report lines."""
    from connectors.kafka import producer, send, wait_delivered
    from ops.kafka import scratch_topics
    from ops.peak_site import load_loop_config

    site = load_loop_config(settings.topology).site
    with scratch_topics(settings, f"bench-peaks-{uuid.uuid4().hex[:6]}.", extra_topics=("bench.copy",)) as bench:
        prod = producer(bench)
        for key, value in make_snapshots(snapshots, site):
            send(prod, bench.topic("telemetry.site"), key, value)
        wait_delivered(prod)
        del prod
        base, agent = [], []
        for _ in range(rounds):
            base.append(baseline(bench, snapshots))
            agent.append(peaks_agent(bench, snapshots))
    b, a = max(base), max(agent)
    runs = lambda values: ", ".join(f"{v / 1000:.1f}k" for v in values)  # noqa: E731
    return [f"\nbench peaks: {snapshots:,} one-minute site snapshots of one site, best of {rounds} "
            f"(baseline {runs(base)}; peaks {runs(agent)})",
            f"  baseline  bare confluent-kafka loop: consume, decode, re-encode, produce  {b:>9,.0f} snapshots/s",
            f"  peaks     telemetry.site -> forecasts.peak + actions.proposed, 1 worker  {a:>9,.0f} snapshots/s",
            f"  ratio     peaks / baseline = {a / b:.2f}; {a:,.0f} snapshots/s per worker (target >= {TARGET_PER_S:,})"]
