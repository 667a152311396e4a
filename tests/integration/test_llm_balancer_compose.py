"""docker-compose's balancer shape on a real HAProxy, moved to loopback ports: the LLM sink's connector steers its
TCP runtime API and reads its exporter, and it starts while the vLLM names do not resolve yet (as in compose
before the servers are up). Docker's DNS (127.0.0.11) is not there: nothing ever resolves, which is the point."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request

import pytest

from actuation import free_port
from opsloop.connectors.haproxy import BalancerMetrics, HaproxyRuntime
from opsloop.ops.llm_balancer import BACKEND, COMPOSE_SERVERS, DOCKER_DNS, FULL_WEIGHT, config_text

pytestmark = pytest.mark.integration


def _start(tmp_path, servers: dict[str, tuple[str, int, int]]):
    """HAProxy over ``servers`` with the compose file's options; its runtime address and metrics URL."""
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed (make system-deps)")
    runtime, metrics_port = f"127.0.0.1:{free_port()}", free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(config_text(servers, free_port(), metrics_port, runtime, nameserver=DOCKER_DNS,
                                  health_path="/health"))
    proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return proc, runtime, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    pytest.fail(f"haproxy did not serve {url} (exit code {proc.poll()})")


@pytest.fixture
def haproxy(tmp_path):
    started = []

    def start(servers):
        started.append(_start(tmp_path, servers))
        return started[-1][1:]

    yield start
    for proc, *_ in started:
        proc.terminate()
        proc.wait(timeout=10)


def test_it_starts_before_the_vllm_names_resolve_and_its_runtime_api_answers_over_tcp(haproxy):
    runtime, _ = haproxy(COMPOSE_SERVERS)
    servers = HaproxyRuntime(runtime).servers(BACKEND)
    assert {name: s.weight for name, s in servers.items()} == {"large": FULL_WEIGHT, "small": 0}


def test_the_sinks_connector_shifts_weight_over_tcp_and_reads_the_exporter(haproxy):
    # Resolvable servers that do not answer: health-checked down, their weights are still the balancer's state.
    runtime, url = haproxy({"large": ("127.0.0.1", free_port(), FULL_WEIGHT), "small": ("127.0.0.1", free_port(), 0)})
    api = HaproxyRuntime(runtime)
    api.set_weight(BACKEND, "small", 50)
    api.set_weight(BACKEND, "large", 50)
    assert {name: s.weight for name, s in api.servers(BACKEND).items()} == {"large": 50, "small": 50}
    assert BalancerMetrics(url).load(BACKEND) is not None
