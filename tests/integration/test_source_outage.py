"""A 30 s broker outage while a prometheus scrape produces 10,000 points/s: the producer's bounded buffer holds
them, and every point arrives once when the broker is back; nothing dropped, no TELEMETRY_GAP."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from opsloop.config.site import load_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources.loop import SourceRun
from opsloop.connectors.sources.prometheus import PrometheusScrape
from opsloop.ops.bench.sources import GAUGES, demo_gpus

from faults import OwnKafka, fresh_settings

pytestmark = [pytest.mark.integration, pytest.mark.faults]

GPUS, SERIES = 1000, 10  # 10,000 points per poll, one poll a second
OUTAGE_S = 30.0


def exposition() -> bytes:
    lines = [f'{name}{{gpu="{g}"}} {value + g % 5}' for name, value in GAUGES[:SERIES] for g in range(GPUS)]
    return ("\n".join(lines) + "\n").encode()


def serve(body: bytes) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_30_s_broker_outage_at_10k_points_per_second_loses_no_point(tmp_path, free_port_pair, read_topic):
    server = serve(exposition())
    target = f"127.0.0.1:{server.server_address[1]}"
    gpus = demo_gpus()[:GPUS]
    with OwnKafka(tmp_path / "kafka", free_port_pair) as own:
        settings = fresh_settings(own.bootstrap, tmp_path)
        site = load_site(settings.topology)
        config = parse_sources({"site": "demo", "sources": [{
            "kind": "prometheus", "name": "prom-dcgm", "interval_s": 1.0, "fail_after": 3,
            "devices": {f"{target}/gpu{g}": name for g, name in enumerate(gpus)},
            "options": {"url": f"http://{target}/metrics", "mapping": "dcgm"}}]}, "outage.yaml")[0]
        run = SourceRun(settings, config, site, PrometheusScrape(config, site))
        stop = threading.Event()
        thread = threading.Thread(target=run.run, args=(stop,))
        thread.start()
        try:
            time.sleep(5.0)
            own.kafka.stop()
            polls_before = run.health.polls
            time.sleep(OUTAGE_S)
            polls_during = run.health.polls - polls_before
            own.kafka.start()
            time.sleep(5.0)
        finally:
            stop.set()
            thread.join(300)
            server.shutdown()
        assert not thread.is_alive()
        health = run.health
        rate = polls_during * GPUS * SERIES / OUTAGE_S
        assert rate >= 9_000, f"the source produced {rate:,.0f} points/s during the outage, not ~10,000"
        assert health.failures == 0 and health.dropped == 0 and health.points == health.polls * GPUS * SERIES
        points = read_topic(settings, "telemetry.raw", timeout_s=300)
        print(f"outage {OUTAGE_S:.0f} s: {polls_during} polls ({rate:,.0f} points/s) during it; "
              f"{health.points:,} points produced, {len(points):,} on the topic")
        assert len(points) == health.points  # every point, once (an idempotent producer: retries add none)
        assert len({(m.key(), m.value()) for m in points}) == len(points)
        alarms = read_topic(settings, "alarms.raw")
        assert alarms == []  # no TELEMETRY_GAP: nothing was dropped
