"""How many points per second the site twin can publish: physics, encoding and the producer, to a scratch broker.

The twin must never be the bottleneck of what it measures (target: >= 20,000 points/s). Each poll has
``SAMPLES_PER_POLL`` samples due (as when the clock runs fast); the PCS and Slurm are left out (one Modbus read and one
``squeue`` per poll, not per point). The physics alone (no Kafka) is measured beside it.

    python -m opsloop.ops.bench.twin --seconds 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from opsloop.config.catalog import load_catalog
from opsloop.config.clock import Clock
from opsloop.config.settings import Settings
from opsloop.config.site import load_site


SAMPLES_PER_POLL = 20  # e.g. 30-s samples, polled every 0.1 s at 6,000x


def physics_rate(site, seconds: float) -> float:
    from opsloop.models.twin import SiteTwin
    from opsloop.ops.twin import DEFAULT_DATA, read_curve

    twin = SiteTwin(site, read_curve(DEFAULT_DATA))
    points, ts, began = 0, 960_163_200_000, time.perf_counter()
    while time.perf_counter() - began < seconds:
        points += len(twin.points(twin.measure(ts), 50.0))
        ts += 30_000
    return points / (time.perf_counter() - began)


def publish_rate(settings: Settings, site, seconds: float, sample_s: float) -> tuple[float, int]:
    from opsloop.ops import twin as twin_process

    start_ms = 960_163_200_000
    twin = twin_process.build(settings, site, clock=Clock(start_ms / 1000), start_ms=start_ms, sample_s=sample_s,
                              pcs=False, slurm=None)
    run, poller, now_ms = twin.run, twin.poller, start_ms
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:  # a poll with samples_per_poll samples due, as at a high speed
        now_ms += int(sample_s * 1000) * SAMPLES_PER_POLL
        run.deliver(poller.poll(now_ms), now_ms)
    left = run.publisher.flush(60.0)
    wall = time.perf_counter() - began
    return twin.poller.points / wall, left


def main(argv: list[str] | None = None) -> int:
    from opsloop.connectors.kafka import apply_catalog
    from opsloop.ops.kafka import LocalKafka, free_port_pair

    p = argparse.ArgumentParser(prog="python -m opsloop.ops.bench.twin")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--sample-s", type=float, default=30.0, help="twin seconds between samples")
    args = p.parse_args(argv)
    base = Settings.from_env()
    site = load_site(base.topology)
    print(f"twin physics alone: {physics_rate(site, min(5.0, args.seconds)):,.0f} points/s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="opsloop-twin-bench-"))
    kafka = LocalKafka(base.cache_dir, work / "kafka", port=free_port_pair())
    kafka.start()
    try:
        settings = base.replace(broker=kafka.bootstrap, topic_prefix="tb.", data_dir=work)
        apply_catalog(settings, load_catalog(settings.topics_file).values())
        rate, left = publish_rate(settings, site, args.seconds, args.sample_s)
        print(f"twin published to Kafka: {rate:,.0f} points/s over {args.seconds:g} s "
              f"({left} not delivered at the end)", flush=True)
    finally:
        kafka.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
