"""The peaks agent's throughput in `opsloop bench`: site snapshots/s per worker, against a bare loop.

One site's 1-minute snapshots (a synthetic daily curve: the planner does real
work at every 15-minute step) go to ``telemetry.site``. The baseline is a bare
confluent-kafka loop that consumes, decodes, re-encodes and produces each
snapshot; the peaks processor (streams/peaks_processor.py, what the worker
runs) decodes, folds, learns, forecasts, plans and publishes; the same agent as
a Faust agent (streams/peaks.py) is measured beside it, because the difference
is the reason for the processor. All are timed from their first snapshot (the
Faust agent: the end of its first batch) to their last, in the same run on the same records;
the baseline loop and the processor timer are ops/bench/common.py's.
"""

from __future__ import annotations

import math
import threading
import time
import uuid

from opsloop.ops.bench.common import run_faust_quietly
from opsloop.config.settings import Settings
from opsloop.config.site import Site, load_site

TARGET_PER_S = 5000
DEADLINE_S = 300.0


def make_snapshots(n: int, site: str, start_ms: int = 1_717_200_000_000) -> list[tuple[bytes, bytes]]:
    from opsloop.config.catalog import cached_catalog
    from opsloop.schemas.codec import Codec

    codec, site_topic = Codec.default(), cached_catalog()["telemetry.site"]
    out = []
    for i in range(n):
        ts = start_ms + i * 60_000
        hour = (ts / 3_600_000) % 24
        grid = 25_000 + 8_000 * max(0.0, math.sin(math.pi * (hour - 6) / 14)) + 300 * math.sin(i * 0.7)
        snap = {"site": site, "window_start_ms": ts, "window_end_ms": ts + 60_000, "grid_kw": grid,
                "it_kw": grid / 1.2, "facility_kw": grid, "ess_soc_pct": 80.0, "ess_soh_pct": 97.0, "ess_kw": 0.0,
                "gpu_kw": None, "pue": 1.2, "price_per_mwh": None, "samples": 16, "devices": 16}
        out.append((site_topic.key_of(snap), codec.encode(site_topic.record, snap)))
    return out


class _Marks:
    """Counts an agent's batches: timed from the end of the first (start-up, not counted) to the n-th snapshot."""

    def __init__(self, n: int, stop: threading.Event):
        self.n, self.stop = n, stop
        self.first = self.last = None
        self.seen = self.counted = 0

    def __call__(self, decisions, events) -> None:
        self.seen += events
        if self.first is None:
            self.first = time.perf_counter()
        else:
            self.counted += events
        if self.seen >= self.n:
            self.last = time.perf_counter()
            self.stop.set()

    def rate(self, who: str) -> float:
        if self.last is None or not self.counted:
            raise RuntimeError(f"the {who} read {self.seen:,} of {self.n:,} snapshots within {DEADLINE_S:.0f} s")
        return self.counted / (self.last - self.first)


def peaks_processor(settings: Settings, site: Site, n: int) -> float:
    """Snapshots/s of the peaks batch processor (a fresh consumer group and changelog), first snapshot to n-th."""
    from opsloop.ops.bench.common import processor_rate
    from opsloop.streams.peaks import PeaksProcessor

    return processor_rate(PeaksProcessor(settings.replace(app_id=f"bench-peaks-{uuid.uuid4().hex[:6]}"), site), n,
                          "in")


def peaks_agent(settings: Settings, n: int) -> float:
    """Snapshots/s of the Faust peaks agent, from the end of its first batch to the batch holding the n-th snapshot."""
    from opsloop.ops.bench.faust_twins.peaks import register

    stop = threading.Event()
    marks = _Marks(n, stop)

    run_faust_quietly(settings, {"peaks": lambda app, s: register(app, s, marks)}, stop, DEADLINE_S,
                      quiet=("opsloop.peaks",))
    return marks.rate("Faust peaks agent")


def run(settings: Settings, snapshots: int = 50_000, rounds: int = 2) -> list[str]:
    """Both measurements on fresh topics of their own; returns the report lines."""
    from opsloop.connectors.kafka import producer, send, wait_delivered
    from opsloop.ops.bench.common import baseline
    from opsloop.ops.kafka import scratch_topics
    site = load_site(settings.topology)
    with scratch_topics(settings, f"bench-peaks-{uuid.uuid4().hex[:6]}.", extra_topics=("bench.copy",)) as bench:
        prod = producer(bench)
        for key, value in make_snapshots(snapshots, site.id):
            send(prod, bench.topic("telemetry.site"), key, value)
        wait_delivered(prod)
        del prod
        base, proc, agent = [], [], []
        for _ in range(rounds):
            base.append(baseline(bench, snapshots, bench.topic("bench.copy"), "telemetry.site", "SiteSnapshot"))
            proc.append(peaks_processor(bench, site, snapshots))
            agent.append(peaks_agent(bench, snapshots))
    b, p, a = max(base), max(proc), max(agent)
    runs = lambda values: ", ".join(f"{v / 1000:.1f}k" for v in values)  # noqa: E731
    return [f"\nbench peaks: {snapshots:,} one-minute site snapshots of one site, best of {rounds} "
            f"(baseline {runs(base)}; peaks {runs(proc)}; faust {runs(agent)})",
            f"  baseline  bare confluent-kafka loop: consume, decode, re-encode, produce  {b:>9,.0f} snapshots/s",
            f"  peaks     telemetry.site -> forecasts.peak + actions.proposed, 1 worker  {p:>9,.0f} snapshots/s",
            f"  faust     the same agent as a Faust agent (take_events, pickled table)   {a:>9,.0f} snapshots/s",
            f"  ratio     peaks / baseline = {p / b:.2f}; {p:,.0f} snapshots/s per worker (target >= {TARGET_PER_S:,})",
            f"  ratio     faust / baseline = {a / b:.2f}; peaks / faust = {p / a:.1f}"]
