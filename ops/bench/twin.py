"""How many points per second the site twin can make: physics, then publishing them to Kafka or showing them
on its SunSpec meters and Prometheus page (what `opsloop demo` does: the sources read them there).

The twin must never be the bottleneck of what it measures (target: >= 20,000 points/s on every path). Each poll
has ``SAMPLES_PER_POLL`` samples due (as when the clock runs fast); the PCS and Slurm are left out (one Modbus
read and one ``squeue`` per poll, not per point). Beside them, in the same run and broker, a bare producer loop
produces the same points, encoded beforehand (the ceiling): the ratio to it is the figure to compare between runs.

    opsloop bench --suite twin          (also in `make bench`)
    python -m opsloop.ops.bench.twin --seconds 20
"""

from __future__ import annotations

import argparse
import time
import uuid

from opsloop.config.clock import Clock
from opsloop.config.settings import Settings
from opsloop.config.site import load_site

SAMPLES_PER_POLL = 20  # e.g. 30-s samples, polled every 0.1 s at 6,000x
TARGET = 20_000
START_MS = 960_163_200_000  # the bundled curve's first day


def physics_rate(site, seconds: float) -> float:
    from opsloop.models.twin import SiteTwin
    from opsloop.ops.twin import DEFAULT_DATA, read_curve

    twin = SiteTwin(site, read_curve(DEFAULT_DATA))
    points, ts, began = 0, 960_163_200_000, time.perf_counter()
    while time.perf_counter() - began < seconds:
        points += len(twin.points(twin.measure(ts), 50.0))
        ts += 30_000
    return points / (time.perf_counter() - began)


def twin_rate(settings: Settings, site, seconds: float, sample_s: float, publish: bool) -> tuple[float, int]:
    """Points per wall second the twin measures and publishes (``publish``) or shows on its meters and page; and
    how many published points were not delivered at the end."""
    from opsloop.ops import twin as twin_process
    from opsloop.ops.kafka import free_ports

    options = {} if publish else dict(zip(("prometheus_port", "sunspec_port"), free_ports(2)))
    twin = twin_process.build(settings, site, clock=Clock(START_MS / 1000), start_ms=START_MS, sample_s=sample_s,
                              pcs=False, slurm=None, publish=publish, **options)
    run, poller, now_ms = twin.run, twin.poller, START_MS
    try:
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:  # a poll with SAMPLES_PER_POLL samples due, as at a high speed
            now_ms += int(sample_s * 1000) * SAMPLES_PER_POLL
            run.deliver(poller.poll(now_ms), now_ms)
        left = run.publisher.flush(60.0)
        return poller.measured / (time.perf_counter() - began), left
    finally:
        twin.close()


def bare_rate(settings: Settings, site, seconds: float) -> float:
    """Produce the twin's own points, encoded beforehand: what the broker and client take, the ceiling."""
    from opsloop.config.catalog import cached_catalog
    from opsloop.connectors.kafka import producer, send
    from opsloop.models.twin import SiteTwin
    from opsloop.ops.twin import DEFAULT_DATA, read_curve
    from opsloop.schemas.codec import Codec

    twin = SiteTwin(site, read_curve(DEFAULT_DATA))
    codec, spec = Codec.default(), cached_catalog(settings.topics_file)["telemetry.raw"]
    encoded = [(spec.key_of(p), codec.encode(spec.record, p)) for k in range(SAMPLES_PER_POLL)
               for p in twin.points(twin.measure(START_MS + k * 30_000), 50.0)]
    prod = producer(settings, **{"queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 2_097_151})
    topic, sent, began = settings.topic("telemetry.raw"), 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        for key, value in encoded:
            send(prod, topic, key, value)  # waits for room when the client's queue is full
        prod.poll(0)
        sent += len(encoded)
    prod.flush(60)
    return sent / (time.perf_counter() - began)


def run_twin_bench(settings: Settings, seconds: float = 10.0, sample_s: float = 30.0) -> int:
    """Prints the table; returns 1 when a path misses the target."""
    from opsloop.ops.kafka import scratch_topics

    site = load_site(settings.topology)
    physics = physics_rate(site, min(5.0, seconds))
    with scratch_topics(settings, f"bench-twin-{uuid.uuid4().hex[:6]}.") as bench:
        bare = bare_rate(bench, site, seconds)
        published, left = twin_rate(bench, site, seconds, sample_s, publish=True)
        shown, _ = twin_rate(bench, site, seconds, sample_s, publish=False)
    rows = [("bare producer loop (the twin's points, encoded beforehand)", bare, "-"),
            ("twin physics alone", physics, "-"),
            ("twin published to Kafka", published, f">= {TARGET:,}"),
            ("twin shown on its SunSpec meters and page (the demo)", shown, f">= {TARGET:,}")]
    print(f"\ntwin: points per wall second, one process, {SAMPLES_PER_POLL} samples due per poll")
    print(f"{'path':<58} {'per s':>10} {'x bare':>7}  target")
    for name, rate, target in rows:
        print(f"{name:<58} {rate:>10,.0f} {rate / bare:>7.2f}  {target}")
    print(f"published points not delivered at the end: {left}")
    return int(published < TARGET or shown < TARGET or left > 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m opsloop.ops.bench.twin")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--sample-s", type=float, default=30.0, help="twin seconds between samples")
    args = p.parse_args(argv)
    return run_twin_bench(Settings.from_env(), args.seconds, args.sample_s)


if __name__ == "__main__":
    raise SystemExit(main())
