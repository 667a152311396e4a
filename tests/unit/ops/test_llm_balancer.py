"""The balancer's HAProxy configuration: the local one keeps its UNIX socket and loopback binds, the compose one is
the committed file, and Debian's haproxy accepts both without resolving a server name."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from opsloop.ops.llm_balancer import (BACKEND, COMPOSE_FILE, COMPOSE_RUNTIME_PORT, COMPOSE_SERVERS, FULL_WEIGHT,
                                      compose_config_text, config_text)

pytestmark = pytest.mark.unit

HAPROXY = shutil.which("haproxy")
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (make system-deps)")
LOCAL = {"large": ("127.0.0.1", 18001, FULL_WEIGHT), "small": ("127.0.0.1", 18002, 0)}


def _check(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    return subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)


def test_the_local_configuration_keeps_its_unix_socket_for_the_owner_and_listens_on_loopback_only():
    text = config_text(LOCAL, 18000, 18405, Path("/tmp/lb/admin.sock"))
    assert "    stats socket /tmp/lb/admin.sock mode 600 level admin\n" in text
    assert {line.split()[1] for line in text.splitlines() if line.strip().startswith("bind")} == {
        "127.0.0.1:18000", "127.0.0.1:18405"}
    assert "resolvers" not in text and "check" not in text  # the tests' llama.cpp servers are taken as they are


def test_the_compose_balancers_file_is_the_one_the_builder_writes():
    assert COMPOSE_FILE.read_text() == compose_config_text()


def test_the_compose_balancer_has_the_large_server_take_every_request_and_a_tcp_runtime_api():
    lines = [line.split() for line in compose_config_text().splitlines()]
    servers = {words[1]: words[2:] for words in lines if words[:1] == ["server"]}
    assert servers == {name: [f"{host}:{port}", "weight", str(weight), "maxconn", "64"]
                       for name, (host, port, weight) in COMPOSE_SERVERS.items()}
    assert servers["large"][2] == str(FULL_WEIGHT) and servers["small"][2] == "0"
    assert ["backend", BACKEND] in lines
    assert ["stats", "socket", f"0.0.0.0:{COMPOSE_RUNTIME_PORT}", "level", "admin"] in lines


@needs_haproxy
def test_haproxy_accepts_the_committed_compose_file_without_resolving_its_server_names():
    check = subprocess.run([HAPROXY, "-c", "-f", str(COMPOSE_FILE)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


@needs_haproxy
def test_haproxy_accepts_the_local_configuration(tmp_path):
    check = _check(config_text(LOCAL, 18000, 18405, tmp_path / "admin.sock"), tmp_path)
    assert check.returncode == 0, check.stderr


@needs_haproxy
def test_haproxy_refuses_the_compose_servers_without_a_resolver(tmp_path):
    # Without one, every name must resolve when HAProxy starts: what the compose file must not depend on.
    text = config_text(COMPOSE_SERVERS, 8000, 8405, f"0.0.0.0:{COMPOSE_RUNTIME_PORT}", host="0.0.0.0")
    check = _check(text, tmp_path)
    assert check.returncode != 0 and "could not resolve address 'vllm'" in check.stderr
