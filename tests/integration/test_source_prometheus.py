"""The prometheus and remote-write kinds on the real broker, against real parts: Debian's node-exporter
scraped, the real vLLM scrapes and the DCGM fixture served over HTTP, and Debian's Prometheus server
scraping a node-exporter and forwarding it by remote_write."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cramjam
import httpx
import pytest

from opsloop.config.site import load_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources import KINDS
from opsloop.connectors.sources.loop import SourceRun
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "data"
SITE = load_site(ROOT / "config" / "sites" / "demo.yaml")
TOKEN = "rw-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer in {timeout_s:.0f} s")
        time.sleep(0.2)


@pytest.fixture
def node_exporter(tmp_path):
    binary = shutil.which("prometheus-node-exporter")
    if binary is None:
        pytest.skip("Debian's prometheus-node-exporter is not installed (make system-deps)")
    port = free_port()
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "node-exporter.log", "wb"))
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


class Exposition:
    """An HTTP server answering /metrics with whatever text it is given (a recorded scrape)."""

    def __init__(self):
        self.text = ""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                data = owner.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def exposition():
    server = Exposition()
    yield server
    server.close()


def source_run(settings, block: dict, clock=time.time) -> SourceRun:
    config = parse_sources({"site": "demo", "sources": [block]}, "sources.yaml")[0]
    return SourceRun(settings, config, SITE, KINDS[config.kind].build(config, SITE, clock), clock=clock)


def finish(run: SourceRun) -> None:
    stopped = threading.Event()
    stopped.set()
    run.run(stopped)  # stopped already: reports and flushes


def topic(settings, read_topic, name: str, record: str) -> list[dict]:
    codec = Codec.default()
    return [codec.decode_as(record, m.value()) for m in read_topic(settings, name)]


def test_debian_node_exporter_scraped_into_kafka(kafka_settings, read_topic, node_exporter):
    run = source_run(kafka_settings, {"kind": "prometheus", "name": "prom-node",
                                      "devices": {node_exporter: "rack-a01-n1"},
                                      "options": {"url": f"http://{node_exporter}/metrics", "mapping": "node"}})
    run.poll_once()
    time.sleep(1.5)  # counters need a second scrape to become rates
    run.poll_once()
    finish(run)
    points = topic(kafka_settings, read_topic, "telemetry.raw", "TelemetryPoint")
    last = {p["metric"]: p for p in points}
    assert {"load_1m", "mem_available_gb", "mem_total_gb", "cpu_idle_cores", "net_rx_mbps"} <= set(last)
    assert 0 < last["mem_available_gb"]["value"] <= last["mem_total_gb"]["value"]
    assert last["cpu_idle_cores"]["value"] >= 0 and last["cpu_idle_cores"]["unit"] == "cores"
    assert {(p["device"], p["device_type"], p["site"], p["source"]) for p in points} == {
        ("rack-a01-n1", "gpu_node", "demo", "prometheus:prom-node")}
    health = topic(kafka_settings, read_topic, "sources.health", "SourceHealth")
    assert health[-1]["status"] == "ok" and health[-1]["dead_letters"] == 0


def test_vllm_and_dcgm_scrapes_over_http_give_workload_points_gpu_points_and_an_xid_alarm(
        kafka_settings, read_topic, exposition):
    now = [1_760_000_000.0]
    vllm = source_run(kafka_settings, {"kind": "prometheus", "name": "prom-vllm",
                                       "devices": {exposition.target: "rack-b01-n1"},
                                       "options": {"url": f"http://{exposition.target}/metrics", "mapping": "vllm"}},
                      clock=lambda: now[0])
    exposition.text = (DATA / "vllm" / "metrics-busy.prom").read_text()
    vllm.poll_once()
    now[0] += 10
    exposition.text = (DATA / "vllm" / "metrics-idle.prom").read_text()
    vllm.poll_once()
    finish(vllm)
    gpus = {f"{exposition.target}/gpu{i}": f"rack-a01-n1-g{i}" for i in (0, 1)}
    dcgm = source_run(kafka_settings, {"kind": "prometheus", "name": "prom-dcgm", "devices": gpus,
                                       "options": {"url": f"http://{exposition.target}/metrics", "mapping": "dcgm"}},
                      clock=lambda: now[0])
    for scrape in (1, 2):
        exposition.text = (DATA / "dcgm" / f"metrics-{scrape}.prom").read_text()
        dcgm.poll_once()
        now[0] += 15
    finish(dcgm)
    points = topic(kafka_settings, read_topic, "telemetry.raw", "TelemetryPoint")
    llm = {(p["metric"], p["ts_ms"]): p["value"] for p in points if p["device"] == "rack-b01-n1"}
    assert llm[("llm_requests_running", 1_760_000_000_000)] == 4.0
    assert llm[("llm_requests_running", 1_760_000_010_000)] == 0.0
    assert llm[("generation_tokens_per_s", 1_760_000_010_000)] == pytest.approx(4.9)
    assert llm[("kv_cache_usage_pct", 1_760_000_000_000)] == pytest.approx(1.1019, abs=1e-3)
    gpu1 = {p["metric"]: p["value"] for p in points if p["device"] == "rack-a01-n1-g1"}
    assert gpu1["gpu_power_kw"] == pytest.approx(0.69987) and gpu1["gpu_temp_c"] == 55.0
    alarms = topic(kafka_settings, read_topic, "alarms.raw", "Alarm")
    assert [(a["code"], a["device"], a["severity"], a["source"]) for a in alarms] == [
        ("XID_79", "rack-a01-n1-g1", "critical", "prometheus:prom-dcgm")]


def test_bad_exposition_lines_nan_and_unknown_metrics_are_dead_letters_and_nothing_else_is_lost(
        kafka_settings, read_topic, exposition):
    good = (DATA / "dcgm" / "metrics-1.prom").read_text()
    exposition.text = good.replace("# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n", "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n"
                                   'DCGM_FI_DEV_GPU_TEMP{gpu="0" 38\n') + (
        'DCGM_FI_DEV_POWER_USAGE{gpu="2"} NaN\n'
        'DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL{gpu="0"} 1234\n')
    gpus = {f"{exposition.target}/gpu{i}": f"rack-a01-n1-g{i}" for i in (0, 1, 2)}
    run = source_run(kafka_settings, {"kind": "prometheus", "name": "prom-dcgm", "devices": gpus,
                                      "options": {"url": f"http://{exposition.target}/metrics", "mapping": "dcgm",
                                                  "keep": "DCGM_FI_DEV_.*"}})
    run.poll_once()
    finish(run)
    dead = topic(kafka_settings, read_topic, "deadletter", "DeadLetter")
    assert Counter((d["error_kind"], d["value"].split(b"{")[0].decode()) for d in dead) == Counter({
        ("decode", "DCGM_FI_DEV_GPU_TEMP"): 1, ("invalid", "DCGM_FI_DEV_POWER_USAGE"): 1,
        ("unknown", "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"): 1,  # kept by the regex, mapped by nothing
        **{("unknown", f"DCGM_FI_DEV_{name}"): 2
           for name in ("PCIE_REPLAY_COUNTER", "ENC_UTIL", "DEC_UTIL", "FB_FREE")}})
    assert all(d["topic"] == "source:prom-dcgm" and d["error"] for d in dead)
    points = topic(kafka_settings, read_topic, "telemetry.raw", "TelemetryPoint")
    # every good sample of the scrape arrived: 2 GPUs x the mapped gauges (the energy counter needs a second scrape)
    assert len(points) == 2 * 13 and {p["device"] for p in points} == {"rack-a01-n1-g0", "rack-a01-n1-g1"}


PROMETHEUS_YML = """
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: node
    static_configs: [{{targets: ["{node}"]}}]
remote_write:
  - url: http://127.0.0.1:{port}/api/v1/write
    authorization: {{credentials_file: {token_file}}}
    queue_config: {{batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s}}
"""


@pytest.fixture
def prometheus_server(tmp_path, node_exporter):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus is not installed (make system-deps)")

    def start(receiver_port: int):
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN)
        (tmp_path / "prometheus.yml").write_text(PROMETHEUS_YML.format(node=node_exporter, port=receiver_port,
                                                                       token_file=token_file))
        web = free_port()
        proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
        started.append(proc)
        return proc

    started: list[subprocess.Popen] = []
    yield start
    for proc in started:
        proc.terminate()
        proc.wait(15)


def test_a_real_prometheus_server_remote_writes_node_exporter_samples_into_kafka(
        kafka_settings, read_topic, node_exporter, prometheus_server, monkeypatch):
    monkeypatch.setenv("OPSLOOP_REMOTE_WRITE_TOKEN", TOKEN)
    port = free_port()
    run = source_run(kafka_settings, {
        "kind": "remote-write", "name": "prom-remote-write", "interval_s": 1,
        "devices": {node_exporter: "rack-a01-n1"},
        "options": {"listen": f"127.0.0.1:{port}", "max_body_bytes": 1_000_000,
                    "relabel": [{"action": "keep", "source_labels": ["job"], "regex": "node"},
                                {"action": "drop", "source_labels": ["__name__", "device"],
                                 "regex": "node_network_.*;lo"}]}})
    receiver = run.kind
    stop = threading.Event()
    thread = threading.Thread(target=run.run, args=(stop,))
    thread.start()
    try:
        prometheus_server(port)
        deadline = time.monotonic() + 90
        while receiver.stats["accepted"] < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/api/v1/write"
        body = bytes(cramjam.snappy.compress_raw(b""))
        wrong = httpx.post(url, content=body, headers={"Authorization": "Bearer nope"})
        garbage = httpx.post(url, content=b"not snappy at all", headers={"Authorization": f"Bearer {TOKEN}"})
        huge = httpx.post(url, content=b"\0" * 1_000_001, headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        stop.set()
        thread.join(30)
    assert receiver.stats["accepted"] >= 3, dict(receiver.stats)
    assert (wrong.status_code, garbage.status_code, huge.status_code) == (401, 400, 413)
    assert (receiver.stats["unauthorized"], receiver.stats["bad_body"], receiver.stats["too_large"]) == (1, 1, 1)
    points = topic(kafka_settings, read_topic, "telemetry.raw", "TelemetryPoint")
    metrics = {p["metric"] for p in points}
    assert {"load_1m", "mem_available_gb", "cpu_idle_cores"} <= metrics, metrics
    assert {(p["device"], p["source"]) for p in points} == {("rack-a01-n1", "remote-write:prom-remote-write")}
    stamps = sorted({p["ts_ms"] for p in points if p["metric"] == "load_1m"})
    assert len(stamps) >= 2 and all(b - a >= 900 for a, b in zip(stamps, stamps[1:]))  # Prometheus' scrape times
    dead = topic(kafka_settings, read_topic, "deadletter", "DeadLetter")
    assert [(d["error_kind"], d["value"]) for d in dead] == [("decode", b"not snappy at all")]
