"""docker-compose.yml checked without Docker: against the official Compose
Specification JSON schema (fetched by ops.compose_schema, never vendored) and
against the stack's own wiring rules."""

from __future__ import annotations

import copy
import json
import re
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator
from jsonschema.validators import validator_for

REPO_ROOT = Path(__file__).resolve().parents[2]
from opsloop.ops import compose_schema
from opsloop.config.settings import Settings

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
CORE_SERVICES = {"kafka", "topics", "rollup", "views"}
GPU_SERVICES = {"vllm", "vllm-small", "llm-balancer", "narrate", "llm-sink"}  # LLM serving and its lever
VLLM_SERVICES = {"vllm": "large", "vllm-small": "small"}  # each vLLM service and its server in the balancer
SOURCE_SERVICES = {"sources"}  # live sources: started with --profile sources, once their config names the site's systems
TWIN_SERVICES = {"twin-topics", "twin-slurm", "twin", "twin-pcs", "twin-sources", "twin-worker",
                 "twin-noc"}  # the closed loop on the site twin
TWIN_SLURM_CLIENTS = {"twin", "twin-worker"}  # the twin reads job states, the worker's slurm-sink holds jobs


def _cache_dir() -> Path:
    return Settings.from_env().cache_dir


@pytest.fixture(scope="module")
def compose() -> dict:
    with COMPOSE_FILE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def validator():
    schema = compose_schema.load_compose_schema(_cache_dir())
    cls = validator_for(schema, default=Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def _errors(validator, document) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def _opsloop_services(compose: dict) -> dict:
    # opsloop services are the ones built from this repo's Dockerfile.
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


@pytest.mark.unit
def test_compose_file_matches_compose_spec(compose, validator):
    assert _errors(validator, compose) == []


@pytest.mark.unit
@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda c: c["services"]["kafka"].__setitem__("ports", "not-a-list"), id="ports-not-a-list"),
        pytest.param(lambda c: c.__setitem__("servicez", {}), id="unknown-top-level-key"),
        pytest.param(lambda c: c["services"]["rollup"].__setitem__("restrat", "always"), id="unknown-service-key"),
        pytest.param(
            lambda c: c["services"]["rollup"]["depends_on"]["topics"].__setitem__("condition", "service_done"),
            id="bad-depends-on-condition",
        ),
    ],
)
def test_broken_compose_is_rejected(compose, validator, breakage):
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert _errors(validator, broken), "validator accepted a broken compose file"


@pytest.mark.unit
def test_expected_services_exist(compose):
    assert CORE_SERVICES | GPU_SERVICES <= set(compose["services"])
    assert {"topics", "rollup", "views", "narrate", "llm-sink"} <= set(_opsloop_services(compose))


@pytest.mark.unit
def test_gpu_services_only_in_gpu_profile(compose):
    services = compose["services"]
    for name in GPU_SERVICES:
        assert services[name].get("profiles") == ["gpu"], name
    for name in SOURCE_SERVICES:
        assert services[name].get("profiles") == ["sources"], name
    for name in TWIN_SERVICES:
        assert services[name].get("profiles") == ["twin"], name
    # Everything else must start with a plain `docker compose up`.
    for name in set(services) - GPU_SERVICES - SOURCE_SERVICES - TWIN_SERVICES:
        assert not services[name].get("profiles"), name
    for name in VLLM_SERVICES:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), name


@pytest.mark.unit
def test_each_sources_service_runs_a_registered_kind_on_an_example_config_that_loads(compose):
    from opsloop.config.sources import load_sources
    from opsloop.connectors.sources import KINDS

    for name in SOURCE_SERVICES:
        command = compose["services"][name]["command"]
        assert command[0] == "source" and command[1] in KINDS and command[2] == "--config", name
        assert [c.kind for c in load_sources(REPO_ROOT / command[3])].count(command[1]) >= 1, name


@pytest.mark.unit
def test_the_twin_profile_closes_one_loop_on_one_clock_and_its_own_topics(compose):
    from opsloop.config.sources import load_sources

    services = compose["services"]
    envs = {name: _env(services[name]) for name in TWIN_SERVICES}
    shared = ("OPSLOOP_TOPIC_PREFIX", "OPSLOOP_CLOCK_EPOCH_S", "OPSLOOP_CLOCK_ANCHOR_S", "OPSLOOP_CLOCK_SPEED",
              "OPSLOOP_DATA_DIR", "OPSLOOP_APP_ID")
    for key in shared:
        assert len({env.get(key) for env in envs.values()}) == 1, key
    assert envs["twin"]["OPSLOOP_TOPIC_PREFIX"] not in ("", None)  # apart from the default stack's topics
    twin = services["twin"]["command"]
    port = twin[twin.index("--prometheus-port") + 1]
    assert twin[twin.index("--listen-host") + 1] == "0.0.0.0"
    # the twin publishes no telemetry: twin-sources reads its SunSpec meters, the PCS and its page
    assert "--no-telemetry" in twin
    sources = services["twin-sources"]["command"]
    assert sources[:2] == ["source", "--config"]
    [sunspec, page] = load_sources(REPO_ROOT / sources[2])
    meter_port = int(twin[twin.index("--sunspec-port") + 1])
    assert {"name": "meter", "host": "twin", "port": meter_port} in sunspec.option("targets")
    assert page.option("url") == f"http://twin:{twin[twin.index('--prometheus-port') + 1]}/metrics"
    meter = services["twin-pcs"]["command"]
    assert meter[meter.index("--meter-url") + 1] == f"http://twin:{port}/metrics"
    pcs_host, pcs_port = envs["twin"]["OPSLOOP_PCS_MODBUS"].split(":")
    assert pcs_host == "twin-pcs" and envs["twin-pcs"]["OPSLOOP_PCS_MODBUS"].endswith(f":{pcs_port}")
    assert {"name": "pcs", "host": "twin-pcs", "port": int(pcs_port)} in sunspec.option("targets")
    worker = services["twin-worker"]["command"]
    agents = set(worker[worker.index("--agents") + 1].split(","))
    assert {"rollup", "anomaly", "dedup", "correlate", "narrate", "peaks", "guard", "pcs-sink"} <= agents
    assert envs["twin-worker"]["OPSLOOP_PEAKS_CONTROL"] == "grid_limit"
    assert services["twin-topics"]["command"] == ["topics", "create"]
    for name in TWIN_SERVICES - {"twin-topics", "twin-slurm"}:  # Slurm needs no Kafka
        assert services[name]["depends_on"]["twin-topics"]["condition"] == "service_completed_successfully", name


def _mounts(service: dict) -> dict[str, tuple[str, str]]:
    """A service's volumes as mount point -> (volume, mode)."""
    mounts = {}
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        mounts[target] = (source, mode[0] if mode else "rw")
    return mounts


@pytest.mark.unit
def test_the_twin_and_its_slurm_sink_reach_twin_slurm_through_slurmrestd_with_a_token_from_a_file(compose):
    from opsloop.ops.cli import parser

    services = compose["services"]
    slurm = services["twin-slurm"]
    args = parser().parse_args(slurm["command"])
    assert (args.command, args.action, args.rest, args.foreground) == ("slurm", "up", True, True)
    assert args.rest_host == "0.0.0.0" and args.rest_port  # reachable from the other containers, on a fixed port
    token_dir = str(args.token_file.parent)
    volume, mode = _mounts(slurm)[token_dir]
    assert mode == "rw" and slurm["user"] == "root" and slurm["init"] is True
    assert slurm["healthcheck"]["test"] == ["CMD", "test", "-s", str(args.token_file)]  # up once the token is there
    assert "--no-slurm" not in services["twin"]["command"]
    worker = services["twin-worker"]["command"]
    assert "slurm-sink" in worker[worker.index("--agents") + 1].split(",")
    for name in TWIN_SLURM_CLIENTS:
        env = _env(services[name])
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("OPSLOOP_SLURM_")})
        assert settings.slurm_backend == "slurmrestd", name
        assert settings.slurm_rest_url == f"http://twin-slurm:{args.rest_port}", name
        assert settings.slurm_jwt_file == args.token_file, name
        assert _mounts(services[name])[token_dir] == (volume, "ro"), name
        assert _mounts(services[name])["/app/var"][0] == "opsloop-data", name  # still the loop's data volume
        assert services[name]["depends_on"]["twin-slurm"]["condition"] == "service_healthy", name
    for name, service in services.items():  # the token is never a setting in this file
        assert not any("JWT" in key and "FILE" not in key for key in _env(service)), name
    # The token volume lives in memory, readable only by the user the clients run as (the image's).
    options = dict(opt.split("=", 1) for opt in compose["volumes"][volume]["driver_opts"]["o"].split(","))
    assert compose["volumes"][volume]["driver_opts"]["type"] == "tmpfs" and options["mode"] == "0700"
    assert options["uid"] == re.search(r"useradd .*--uid (\d+)", DOCKERFILE.read_text()).group(1)


@pytest.mark.unit
def test_the_image_has_debians_slurm_with_slurmrestd_and_no_munge_key():
    text = DOCKERFILE.read_text()
    install = re.search(r"apt-get install ([^&]+)&&", text, re.S).group(1).split()
    assert {"slurmctld", "slurmd", "slurm-client", "slurmrestd", "slurm-wlm-jwt-plugin", "munge"} <= set(install)
    assert "/etc/munge/munge.key" in text.split("apt-get install", 1)[1].split("\n\n", 1)[0]  # removed, same layer
    assert re.search(r"^FROM python:[\d.]+-slim-bookworm$", text, re.M)  # Debian 12: the Slurm (22.05) tested here


@pytest.mark.unit
def test_every_opsloop_service_points_at_kafka(compose):
    kafka_env = compose["services"]["kafka"]["environment"]
    advertised = {
        listener.split("://", 1)[1] for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    for name, svc in _opsloop_services(compose).items():
        broker = _env(svc).get("OPSLOOP_BROKER")
        assert broker, f"{name} has no OPSLOOP_BROKER"
        host = broker.split(":", 1)[0]
        assert host == "kafka", f"{name}: {broker}"
        assert broker in advertised, f"{name}: {broker} is not a listener kafka advertises"


@pytest.mark.unit
def test_startup_ordering(compose):
    services = compose["services"]
    assert "healthcheck" in services["kafka"]
    assert services["topics"]["command"] == ["topics", "create"]
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("rollup", "views", "narrate", "llm-sink"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert services[name]["restart"] == "unless-stopped"
    assert services["vllm-small"]["depends_on"]["vllm"]["condition"] == "service_healthy"  # one GPU, in turn


def _balancer_config(compose: dict) -> tuple[Path, dict[str, list[list[str]]]]:
    """The committed HAProxy file llm-balancer mounts read-only, as section ("backend llm") → its lines' words."""
    mounts = [v.split(":") for v in compose["services"]["llm-balancer"]["volumes"]]
    source = next(REPO_ROOT / host for host, inside, *mode in mounts
                  if inside == "/usr/local/etc/haproxy/haproxy.cfg" and mode == ["ro"])
    sections: dict[str, list[list[str]]] = {}
    for line in source.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if line[0].isspace():
            sections[current].append(words)
        else:
            current = " ".join(words)
            sections[current] = []
    return source, sections


def _vllm_command_value(service: dict, flag: str) -> str:
    command = service["command"]
    return command[command.index(flag) + 1]


def _served_names(service: dict) -> set[str]:
    command = service["command"]
    start = command.index("--served-model-name") + 1
    end = next((i for i in range(start, len(command)) if command[i].startswith("--")), len(command))
    return set(command[start:end])


@pytest.mark.unit
def test_the_llm_balancer_runs_the_committed_config_over_the_two_vllm_servers(compose):
    from opsloop.ops.llm_balancer import BACKEND, COMPOSE_FILE, FULL_WEIGHT

    services = compose["services"]
    balancer = services["llm-balancer"]
    image, _, tag = balancer["image"].partition(":")
    assert image == "haproxy" and tag.startswith("2.") and tag.count(".") == 2  # official, a pinned 2.x release
    source, sections = _balancer_config(compose)
    assert source == COMPOSE_FILE  # the file tests/unit/ops/test_llm_balancer.py keeps equal to the builder
    servers = {words[1]: words[2] for words in sections[f"backend {BACKEND}"] if words[0] == "server"}
    assert servers == {server: f"{name}:{_vllm_command_value(services[name], '--port')}"
                       for name, server in VLLM_SERVICES.items()}
    weights = {words[1]: words[words.index("weight") + 1] for words in sections[f"backend {BACKEND}"]
               if words[0] == "server"}
    assert weights == {"large": str(FULL_WEIGHT), "small": "0"}
    for name in VLLM_SERVICES:
        assert services[name]["image"] == services["vllm"]["image"] and "ports" not in services[name], name
    # Every client goes through the balancer: only its API frontend is published, not its exporter or runtime API.
    api_port = next(w[1] for w in sections["frontend llm_api"] if w[0] == "bind").rpartition(":")[2]
    assert [p.rpartition(":")[2] for p in balancer["ports"]] == [api_port]


@pytest.mark.unit
def test_the_llm_sink_steers_the_balancer_and_reads_its_exporter_and_both_vllm_servers(compose):
    services = compose["services"]
    _, sections = _balancer_config(compose)
    socket = next(w for w in sections["global"] if w[:2] == ["stats", "socket"])
    assert socket[-2:] == ["level", "admin"]
    runtime_port = socket[2].rpartition(":")[2]
    metrics_port = next(w[1] for w in sections["frontend stats"] if w[0] == "bind").rpartition(":")[2]
    env = _env(services["llm-sink"])
    assert services["llm-sink"]["command"] == ["worker", "--agents", "llm-sink"]
    assert env["OPSLOOP_HAPROXY_SOCKET"] == f"llm-balancer:{runtime_port}"
    assert env["OPSLOOP_HAPROXY_METRICS_URL"] == f"http://llm-balancer:{metrics_port}/metrics"
    assert env["OPSLOOP_VLLM_METRICS_URLS"].split(",") == [
        f"http://{name}:{_vllm_command_value(services[name], '--port')}/metrics" for name in VLLM_SERVICES]
    assert "OPSLOOP_VERDICT_KEY" in env  # a sink executes only verdicts the guard signed


@pytest.mark.unit
def test_narrate_calls_the_balancer_for_a_model_name_both_vllm_servers_serve(compose):
    services = compose["services"]
    _, sections = _balancer_config(compose)
    api_port = next(w[1] for w in sections["frontend llm_api"] if w[0] == "bind").rpartition(":")[2]
    env = _env(services["narrate"])
    assert env["OPSLOOP_LLM_URL"] == f"http://llm-balancer:{api_port}/v1"
    for name in VLLM_SERVICES:  # a shift sends the same request to either server
        assert env["OPSLOOP_LLM_MODEL"] in _served_names(services[name]), name
        assert services[name]["command"][0] in _served_names(services[name]), name  # its own id still answers


@pytest.mark.unit
def test_load_compose_schema_downloads_once_then_uses_cache(tmp_path, monkeypatch):
    spec = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "docker_compose-1.29.2-py2.py3-none-any.whl", "w") as whl:
            whl.writestr(compose_schema.SPEC_MEMBER, json.dumps(spec))

    monkeypatch.setattr(compose_schema.subprocess, "run", fake_run)
    assert compose_schema.load_compose_schema(tmp_path / "cache") == spec
    assert compose_schema.load_compose_schema(tmp_path / "cache") == spec
    assert len(calls) == 1
    assert calls[0][:3] == [sys.executable, "-m", "pip"]
    assert "docker-compose==1.29.2" in calls[0] and "--only-binary=:all:" in calls[0]
    assert (tmp_path / "cache" / "compose_spec.json").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["compose_spec.json"]


SECURE_FILE = REPO_ROOT / "docker-compose.secure.yml"


@pytest.fixture(scope="module")
def secure() -> dict:
    with SECURE_FILE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.mark.unit
def test_secure_override_matches_compose_spec(secure, validator):
    assert _errors(validator, secure) == []


@pytest.mark.unit
def test_secure_override_runs_every_opsloop_service_as_its_own_principal_with_secrets_by_file(compose, secure):
    from opsloop.config.access import ADMIN, PRINCIPALS

    kafka = secure["services"]["kafka"]["environment"]
    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false" and kafka["KAFKA_SUPER_USERS"] == "User:admin"
    assert "PLAINTEXT" not in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert "kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    declared = set(secure["secrets"])
    opsloop = set(_opsloop_services(compose)) | {n for n, s in secure["services"].items() if s.get("image") == "opsloop:local"}
    opsloop -= TWIN_SERVICES  # the twin profile is a local demo on the plaintext broker, not a site to secure
    users = {}
    for name in opsloop:
        svc = secure["services"][name]  # every opsloop service is overridden
        env = _env(svc)
        assert env["OPSLOOP_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert "OPSLOOP_KAFKA_SASL_PASSWORD" not in env, f"{name}: passwords only by file"
        user = env["OPSLOOP_KAFKA_SASL_USERNAME"]
        assert user == ADMIN or user in PRINCIPALS, name
        assert env["OPSLOOP_KAFKA_SASL_PASSWORD_FILE"] == f"/run/secrets/kafka-{user}", name
        assert {"kafka-ca", f"kafka-{user}"} <= set(svc["secrets"]) <= declared, name
        command = svc.get("command") or compose["services"].get(name, {}).get("command")
        if command[0] == "worker":  # a worker runs the agents of its own principal only
            assert command[2].split(",") == [user], name
        users.setdefault(user, []).append(name)
    assert users["noc"] == ["views"] and sorted(users["admin"]) == ["acls", "topics"]
    assert users["llm-sink"] == ["llm-sink"]
    acls = set(secure["services"]["acls"]["secrets"])  # it creates the SCRAM user of every principal in use
    assert {f"kafka-{user}" for user in users} <= acls <= declared
    assert sorted(users["source"]) == ["pcs-sim", "sources"]  # "source" is every producer of raw data
    assert all(len(services) == 1 for user, services in users.items() if user not in (ADMIN, "source")), users
