"""`opsloop bench --suite sources`: live sources into Kafka, points/s per process, against a bare producer loop.

- bare: the same TelemetryPoints encoded and produced in a plain loop (confluent-kafka, the
  publisher's producer settings), delivered: what one Python process can put into Kafka at all.
- scrape: the ``prometheus`` kind polling one DCGM-exporter exposition of the demo site's 1,024
  GPUs (15 mapped series each, served from memory by a thread of the same process), parse, map,
  publish, delivered.
- remote-write: the ``remote-write`` receiver taking snappy protobuf bodies of 2,000 samples (the
  size Prometheus sends) over HTTP from a sender thread of the same process, into Kafka: every
  sample mapped (the worst case), then a stream where one series in ten has a mapped name (a
  server forwarding all it scrapes; the rest is skipped by the selection, as most of node-exporter).

Each reports points (samples) per second from the first request to the last delivery report,
and the process CPU seconds per 10,000 points/s (all threads: parser, producer, librdkafka; the
HTTP server or sender thread included, so the figure is an upper bound).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opsloop.config.settings import Settings

SCRAPE_TARGET = 10_000  # points/s per process (issue 14)
REMOTE_WRITE_TARGET = 50_000  # samples/s
TOKEN = "bench-token"
GAUGES = [("DCGM_FI_DEV_POWER_USAGE", 600.0), ("DCGM_FI_DEV_GPU_TEMP", 55.0), ("DCGM_FI_DEV_MEMORY_TEMP", 48.0),
          ("DCGM_FI_DEV_GPU_UTIL", 93.0), ("DCGM_FI_DEV_MEM_COPY_UTIL", 40.0), ("DCGM_FI_DEV_SM_CLOCK", 1980.0),
          ("DCGM_FI_DEV_MEM_CLOCK", 2619.0), ("DCGM_FI_DEV_FB_USED", 70000.0), ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", 0.0),
          ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 0.0), ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", 0.0),
          ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", 0.0), ("DCGM_FI_DEV_ROW_REMAP_FAILURE", 0.0),
          ("DCGM_FI_DEV_XID_ERRORS", 0.0)]


def demo_gpus() -> list[str]:
    """The demo site's GPUs, as its topology names them."""
    from opsloop.config.site import load_site
    from opsloop.models.topology import Topology

    types = Topology.from_site(load_site(Settings().topology)).types
    return [name for name, kind in types.items() if kind == "gpu"]


def dcgm_text(gpus: int, step: int) -> bytes:
    """A dcgm-exporter exposition of ``gpus`` GPUs; ``step`` advances the energy counter."""
    lines = []
    for name, value in GAUGES + [("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", None)]:
        lines.append(f"# TYPE {name} {'counter' if value is None else 'gauge'}")
        for g in range(gpus):
            v = 1_000_000_000 + step * 9_000_000 + g if value is None else value + g % 7
            lines.append(f'{name}{{gpu="{g}",UUID="GPU-{g:08d}",device="nvidia{g % 8}",'
                         f'modelName="NVIDIA H100 80GB HBM3",Hostname="node-{g // 8}"}} {v}')
    return ("\n".join(lines) + "\n").encode()


def bare_rate(settings: Settings, points: list[dict], rounds: int) -> tuple[float, float]:
    """Points/s and CPU s per 10k points/s of encode + produce + deliver, nothing else."""
    from opsloop.config.catalog import cached_catalog
    from opsloop.connectors.kafka import producer
    from opsloop.schemas.codec import Codec

    codec, spec = Codec.default(), cached_catalog(settings.topics_file)["telemetry.raw"]
    prod = producer(settings, **{"queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 2_097_151})
    topic = settings.topic("telemetry.raw")
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        for p in points:
            prod.produce(topic, key=spec.key_of(p), value=codec.encode(spec.record, p))
        prod.poll(0)
    prod.flush(60)
    return _rates(len(points) * rounds, t0, c0)


def _rates(n: int, t0: float, c0: float) -> tuple[float, float]:
    """Points per wall second, and CPU seconds per 10,000 points (= cores busy at 10k points/s)."""
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / wall, cpu * 10_000 / n


def _serve(body: list[bytes]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            data = body[0]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def scrape_rate(settings: Settings, gpus: list[str], polls: int) -> tuple[float, float, int]:
    from opsloop.config.site import load_site
    from opsloop.config.sources import parse_sources
    from opsloop.connectors.sources.loop import SourceRun
    from opsloop.connectors.sources.prometheus import PrometheusScrape

    body = [dcgm_text(len(gpus), 0)]
    server = _serve(body)
    target = f"127.0.0.1:{server.server_address[1]}"
    config = parse_sources({"site": "demo", "sources": [{
        "kind": "prometheus", "name": "prom-dcgm", "devices": {f"{target}/gpu{g}": name for g, name in enumerate(gpus)},
        "options": {"url": f"http://{target}/metrics", "mapping": "dcgm"}}]}, "bench")[0]
    site = load_site(settings.topology)
    clock = [time.time()]
    run = SourceRun(settings, config, site, PrometheusScrape(config, site), clock=lambda: clock[0])
    try:
        run.poll_once()  # first scrape: counters have no rate yet; not timed
        run.publisher.flush(60)
        delivered0 = run.publisher.delivered
        t0, c0 = time.perf_counter(), time.process_time()
        for step in range(1, polls + 1):
            body[0] = dcgm_text(len(gpus), step)
            clock[0] += 15
            run.poll_once()
        run.publisher.flush(60)
        n = run.publisher.delivered - delivered0
        return (*_rates(n, t0, c0), run.health.dead_letters)
    finally:
        server.shutdown()
        server.server_close()


UNMAPPED = ["node_filesystem_avail_bytes", "node_disk_io_time_seconds_total", "node_vmstat_pgfault",
            "node_netstat_Tcp_InSegs", "go_gc_duration_seconds", "node_schedstat_running_seconds_total",
            "node_softnet_processed_total", "node_interrupts_total", "process_cpu_seconds_total"]


def remote_write_bodies(gpus: int, requests: int, per_request: int = 2_000, mapped_in: int = 1) -> list[bytes]:
    """Bodies as Prometheus sends them; ``mapped_in``: one series in that many has a mapped name (the rest are
    what a server forwards that opsloop does not read, e.g. most of node-exporter)."""
    import cramjam

    from opsloop.connectors.sources.remote_write import WriteRequest

    series = [(name, g) for name, _ in GAUGES[:-1] for g in range(gpus)]
    if mapped_in > 1:
        series = [(name if i % mapped_in == 0 else UNMAPPED[i % len(UNMAPPED)], g)
                  for i, (name, g) in enumerate(series)]
    bodies, i = [], 0
    for r in range(requests):
        request = WriteRequest()
        for _ in range(per_request):
            name, g = series[i % len(series)]
            ts = request.timeseries.add()
            for k, v in (("__name__", name), ("instance", "dcgm:9400"), ("job", "dcgm"), ("gpu", str(g)),
                         ("UUID", f"GPU-{g:08d}"), ("Hostname", f"node-{g // 8}")):
                ts.labels.add(name=k, value=v)
            ts.samples.add(value=float(i % 97), timestamp=1_760_000_000_000 + (i // len(series)) * 15_000)
            i += 1
        bodies.append(bytes(cramjam.snappy.compress_raw(request.SerializeToString())))
    return bodies


def remote_write_rate(settings: Settings, gpus: list[str], requests: int,
                      mapped_in: int = 1) -> tuple[float, float, dict]:
    """Samples taken per second (all of them: mapped into Kafka, or skipped by the selection) and CPU per 10k."""
    import httpx

    from opsloop.config.site import load_site
    from opsloop.config.sources import parse_sources
    from opsloop.connectors.sources.loop import SourceRun
    from opsloop.connectors.sources.remote_write import RemoteWriteReceiver, Token

    bodies = remote_write_bodies(len(gpus), requests, mapped_in=mapped_in)
    config = parse_sources({"site": "demo", "sources": [{
        "kind": "remote-write", "name": "prom-remote-write", "interval_s": 1,
        "devices": {f"dcgm:9400/gpu{g}": name for g, name in enumerate(gpus)},
        "options": {"listen": "127.0.0.1:0", "mapping": "dcgm"}}]}, "bench")[0]
    site = load_site(settings.topology)
    receiver = RemoteWriteReceiver(config, site, token=Token(TOKEN))
    run = SourceRun(settings, config, site, receiver)
    stop = threading.Event()
    thread = threading.Thread(target=run.run, args=(stop,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{receiver.port}/api/v1/write"
    try:
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            t0, c0 = time.perf_counter(), time.process_time()
            for body in bodies:
                while client.post(url, content=body).status_code == 503:
                    time.sleep(0.05)
            run.publisher.flush(60)
            rate, cpu = _rates(receiver.stats["samples"] + receiver.stats["skipped"], t0, c0)
    finally:
        stop.set()
        thread.join(60)
    return rate, cpu, dict(receiver.stats)


def run_sources_bench(settings: Settings, polls: int = 10, requests: int = 100) -> int:
    """Prints the table; returns 1 when a target is missed."""
    from opsloop.ops.kafka import scratch_topics

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    gpus = demo_gpus()
    with scratch_topics(settings, f"bench-src-{uuid.uuid4().hex[:6]}.") as bench:
        scrape, scrape_cpu, dead = scrape_rate(bench, gpus, polls)
        sample = [{"ts_ms": 1_760_000_000_000 + i, "site": "demo", "device": gpus[i % len(gpus)],
                   "device_type": "gpu", "metric": "gpu_power_kw", "value": 0.6, "unit": "kW",
                   "source": "prometheus:prom-dcgm"} for i in range(len(gpus) * len(GAUGES))]
        bare, bare_cpu = bare_rate(bench, sample, polls)
        rw, rw_cpu, stats = remote_write_rate(bench, gpus, requests)
        mixed, mixed_cpu, mixed_stats = remote_write_rate(bench, gpus, requests, mapped_in=10)
    rows = [("bare producer loop (encode + produce)", bare, bare_cpu, "-"),
            (f"prometheus scrape, {len(gpus)} GPUs x 14 series", scrape, scrape_cpu, f">= {SCRAPE_TARGET:,}"),
            ("remote-write, 2,000-sample bodies, all mapped", rw, rw_cpu, f">= {REMOTE_WRITE_TARGET:,}"),
            ("remote-write, 1 sample in 10 mapped", mixed, mixed_cpu, f">= {REMOTE_WRITE_TARGET:,}")]
    print("\nsources: points (remote-write: samples taken) per second into Kafka, one process "
          "(wall: this machine's share of its cores; per core: one busy core)")
    print(f"{'path':<46} {'per s':>10} {'x bare':>7} {'cores @10k/s':>13} {'per core':>10}  target")
    for name, rate, cpu, target in rows:
        print(f"{name:<46} {rate:>10,.0f} {rate / bare:>7.2f} {cpu:>13.2f} {10_000 / cpu:>10,.0f}  {target}")
    print(f"scrape dead letters: {dead}; remote-write answers: {stats}, {mixed_stats}")
    return int(scrape < SCRAPE_TARGET or rw < REMOTE_WRITE_TARGET or dead > 0)
