"""A local HAProxy in front of the LLM servers: the balancer the LLM sink steers (tests and development).

It writes a configuration into its work folder and runs Debian's ``haproxy`` in
the foreground (``-db``): one frontend for the OpenAI-compatible API, one backend
(``llm``) with a server per model (``large`` takes every request at first, ``small``
none), the runtime API on a UNIX socket at ``level admin``, and HAProxy's
Prometheus exporter on a stats frontend (``/metrics``); one log line per request (HAProxy's
timers: queue, connect, response head, total) in ``haproxy.log``. Production runs the same
shape in front of vLLM (README, "LLM-serving lever"): ``compose_config_text`` is the
configuration of docker-compose's ``llm-balancer`` (``ops/llm/haproxy.cfg``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

BACKEND = "llm"
FULL_WEIGHT = 100  # the first server's weight: every request, until a shift moves part of it

CONFIG = """\
global
    log stdout format raw local0
    stats socket {socket} level admin
    maxconn 2000
{resolvers}
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    # a request over a server's maxconn waits this long in the queue before HAProxy answers 503
    timeout queue 300s

frontend llm_api
    bind {host}:{port}
    default_backend {backend}

backend {backend}
    balance roundrobin
{health}{servers}

frontend stats
    bind {host}:{metrics_port}
    no log
    http-request use-service prometheus-exporter if {{ path /metrics }}
"""

RESOLVERS = """
# server names are looked up here, again while running (a restarted container comes back with a new address)
resolvers dns
    nameserver dns1 {nameserver}
    hold valid 10s
"""

#: docker-compose's balancer (profile gpu): the two vLLM services, the runtime API on a TCP port of the compose
#: network (never published: it takes weight changes from anyone who reaches it), Docker's embedded DNS.
COMPOSE_FILE = Path(__file__).resolve().parent / "llm" / "haproxy.cfg"
COMPOSE_SERVERS = {"large": ("vllm", 8000, FULL_WEIGHT), "small": ("vllm-small", 8000, 0)}
COMPOSE_PORT, COMPOSE_METRICS_PORT, COMPOSE_RUNTIME_PORT = 8000, 8405, 9999
DOCKER_DNS = "127.0.0.11:53"
COMPOSE_HEADER = """\
# docker-compose's LLM balancer (service llm-balancer, profile gpu): HAProxy in front of the two vLLM services.
# Written by ops/llm_balancer.py (`opsloop llm-balancer --compose-config > ops/llm/haproxy.cfg`);
# tests/unit/ops/test_llm_balancer.py keeps it so. The runtime API (stats socket, level admin, no password)
# listens on the compose network only and is published nowhere: the llm-sink service steers it.
"""


def config_text(servers: dict[str, tuple[str, int, int]], port: int, metrics_port: int, socket: Path | str,
                maxconn: int = 64, host: str = "127.0.0.1", nameserver: str | None = None,
                health_path: str | None = None) -> str:
    """HAProxy's configuration; ``servers``: name → (host, port, initial weight).

    ``socket``: the runtime API, a UNIX path (owner only) or ``host:port``; ``host``: where the API and the
    exporter listen. With ``nameserver`` (``ip:port``), server names are resolved there at run time and a name
    that does not resolve yet leaves its server down instead of failing the start; with ``health_path``,
    a server is sent requests only while that path answers 2xx/3xx.
    """
    socket = str(socket)
    lines = "\n".join(f"    server {name} {srv_host}:{srv_port} weight {weight} maxconn {maxconn}"
                      for name, (srv_host, srv_port, weight) in servers.items())
    health = ""
    if health_path:
        health += f"    option httpchk GET {health_path}\n"
    if nameserver or health_path:
        health += "    default-server" + (" init-addr libc,none resolvers dns" if nameserver else "") + (
            " check inter 5s" if health_path else "") + "\n"
    return CONFIG.format(socket=f"{socket} mode 600" if socket.startswith("/") else socket, host=host, port=port,
                         metrics_port=metrics_port, backend=BACKEND, servers=lines, health=health,
                         resolvers=RESOLVERS.format(nameserver=nameserver) if nameserver else "")


def compose_config_text() -> str:
    """The committed ``ops/llm/haproxy.cfg``: listens on every interface of the container."""
    return COMPOSE_HEADER + config_text(COMPOSE_SERVERS, COMPOSE_PORT, COMPOSE_METRICS_PORT,
                                        f"0.0.0.0:{COMPOSE_RUNTIME_PORT}", host="0.0.0.0", nameserver=DOCKER_DNS,
                                        health_path="/health")


class LocalBalancer:
    """Runs HAProxy over ``servers`` (name → (host, port, initial weight)); ``url``, ``socket``, ``metrics_url``."""

    def __init__(self, workdir: Path, servers: dict[str, tuple[str, int, int]], port: int, metrics_port: int,
                 maxconn: int = 64, start_timeout_s: float = 15.0):
        self.workdir = Path(workdir)
        self.servers, self.port, self.metrics_port, self.maxconn = servers, port, metrics_port, maxconn
        self.start_timeout_s = start_timeout_s
        self.socket = self.workdir / "admin.sock"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> "LocalBalancer":
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise RuntimeError("haproxy is not installed (apt-get install haproxy; make system-deps)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "haproxy.cfg"
        config.write_text(config_text(self.servers, self.port, self.metrics_port, self.socket, self.maxconn))
        check = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused {config}: {check.stderr.strip()[:500]}")
        with open(self.workdir / "haproxy.log", "ab") as log:
            self._proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self._proc.returncode}; see {self.workdir / 'haproxy.log'}")
            try:
                with urllib.request.urlopen(self.metrics_url, timeout=1) as reply:
                    if reply.status == 200 and self.socket.exists():
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"haproxy did not answer within {self.start_timeout_s:.0f} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


def parse_server(spec: str) -> tuple[str, str, int]:
    """``name=host:port`` → (name, host, port).

    >>> parse_server("large=10.0.0.5:8000")
    ('large', '10.0.0.5', 8000)
    """
    name, _, address = spec.partition("=")
    host, _, port = address.rpartition(":")
    if not (name and host and port.isdigit()):
        raise ValueError(f"expected name=host:port, got {spec!r}")
    return name, host, int(port)


def serve_forever(workdir: Path, port: int, metrics_port: int, servers: list[str]) -> int:
    """Run HAProxy over ``servers`` (``name=host:port``; the first takes every request at first), or, with none,
    over two local llama.cpp servers (``large``, ``small``) on free ports; until SIGINT or SIGTERM."""
    import signal
    import threading

    from opsloop.ops.kafka import free_port_pair
    from opsloop.ops.llm_server import LocalLlm

    local: list[LocalLlm] = []
    if not servers:
        local = [LocalLlm(free_port_pair(), workdir / f"{name}.log", threads=1, interrupt_requests=False)
                 for name in ("large", "small")]
        for llm in local:
            llm.start()
        servers = [f"{name}=127.0.0.1:{llm.port}" for name, llm in zip(("large", "small"), local)]
    parsed = [parse_server(s) for s in servers]
    balancer = LocalBalancer(workdir, {name: (host, srv_port, FULL_WEIGHT if i == 0 else 0)
                                       for i, (name, host, srv_port) in enumerate(parsed)}, port, metrics_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        balancer.start()
        print(f"OpenAI-compatible API through HAProxy: {balancer.url}")
        print(f"export OPSLOOP_HAPROXY_SOCKET={balancer.socket} OPSLOOP_HAPROXY_METRICS_URL={balancer.metrics_url}")
        print("Ctrl-C stops it", flush=True)
        stop.wait()
        return 0
    finally:
        balancer.stop()
        for llm in local:
            llm.stop()
