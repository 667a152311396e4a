"""What every bench suite shares: the bench's telemetry, the bare confluent-kafka baseline, rate timers."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from pathlib import Path

from opsloop.config.settings import Settings

SITES, DEVICES_PER_SITE = 2, 50
FAUST_MAX_EVENTS = 50_000
FAUST_DEADLINE_S = 300.0
METRICS = [("grid_meter", "grid_kw"), ("pdu", "it_kw"), ("gpu_node", "gpu_kw"), ("facility_meter", "facility_kw")]


def make_points(n: int, start_ms: int = 1_717_200_000_000) -> list[tuple[bytes, bytes]]:
    """n encoded TelemetryPoints: every device reports once a second, in event-time order."""
    from opsloop.config.catalog import cached_catalog
    from opsloop.schemas.codec import Codec

    codec, raw = Codec.default(), cached_catalog()["telemetry.raw"]
    devices = [(f"site-{s}", f"dev-{s}-{d}", *METRICS[d % len(METRICS)])
               for s in range(SITES) for d in range(DEVICES_PER_SITE)]
    out = []
    for i in range(n):
        site, device, device_type, metric = devices[i % len(devices)]
        ts = start_ms + (i // len(devices)) * 1000
        value = {"ts_ms": ts, "site": site, "device": device, "device_type": device_type, "metric": metric,
                 "value": 100.0 + i % 37, "unit": "kW", "source": "bench"}
        out.append((raw.key_of(value), codec.encode(raw.record, value)))
    return out


def baseline(settings: Settings, n: int, out_topic: str, source: str = "telemetry.raw",
             record: str = "TelemetryPoint") -> float:
    """Events/s of a bare consume → decode → encode → produce loop over a catalog topic."""
    from opsloop.connectors.kafka import consumer, producer, send, wait_delivered
    from opsloop.schemas.codec import Codec

    codec = Codec.default()
    cons = consumer(settings, f"bench-baseline-{uuid.uuid4().hex[:6]}", **{"enable.partition.eof": False})
    prod = producer(settings)
    cons.subscribe([settings.topic(source)])
    seen, first = 0, None
    try:
        while seen < n:
            for msg in cons.consume(1000, timeout=0.5):
                if msg.error():
                    continue
                first = first or time.perf_counter()
                send(prod, out_topic, msg.key(), codec.encode(record, codec.decode_as(record, msg.value())))
                seen += 1
            prod.poll(0)
        wait_delivered(prod)
        return n / (time.perf_counter() - first)
    finally:
        cons.close()


def processor_rate(proc, n: int, counter: str) -> float:
    """Events/s of a batch processor run in a thread, from its first event counted to its n-th."""
    stop = threading.Event()
    thread = threading.Thread(target=proc.run, args=(stop,), kwargs={"exit_when_idle": False})
    thread.start()
    first = None
    try:
        while proc.stats[counter] < n and thread.is_alive():
            if first is None and proc.stats[counter]:
                first = time.perf_counter()
            time.sleep(0.002)
        if proc.stats[counter] < n:
            raise RuntimeError(f"{proc.name} stopped early: {proc.stats}")
        return n / (time.perf_counter() - first)
    finally:
        stop.set()
        thread.join()


def run_faust_quietly(settings: Settings, agents: dict, stop: threading.Event, deadline_s: float | None = None,
                      quiet: tuple[str, ...] = ()) -> None:
    """Run Faust agents in a throwaway app (own app id, temporary app dir) until ``stop`` or the deadline.

    Faust and aiokafka log start-up and rebalances at info level: held at warning to keep bench output readable.
    """
    from opsloop.streams.worker import run_faust

    loggers = {name: logging.getLogger(name) for name in ("faust", "mode", "aiokafka", *quiet)}
    levels = {name: log.level for name, log in loggers.items()}
    timer = threading.Timer(deadline_s or FAUST_DEADLINE_S, stop.set)
    with tempfile.TemporaryDirectory() as tmp:  # Faust's app dir: nothing left behind
        try:
            for log in loggers.values():
                log.setLevel(logging.WARNING)
            timer.start()
            run_faust(settings.replace(app_id=f"bench-faust-{uuid.uuid4().hex[:6]}", data_dir=Path(tmp)), agents, stop)
        finally:
            timer.cancel()
            for name, log in loggers.items():
                log.setLevel(levels[name])


def runs(values: list[float]) -> str:
    return ", ".join(f"{v / 1000:.0f}k" for v in values)
