"""docker-compose.yml checked without Docker: against the official Compose
Specification JSON schema (fetched by ops.compose_schema, never vendored) and
against the stack's own wiring rules."""

from __future__ import annotations

import copy
import json
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
CORE_SERVICES = {"kafka", "topics", "rollup", "views"}
GPU_SERVICES = {"vllm", "narrate"}
SOURCE_SERVICES = {"sources"}  # live sources: started with --profile sources, once their config names the site's systems
TWIN_SERVICES = {"twin-topics", "twin", "twin-pcs", "twin-sources", "twin-worker", "twin-noc"}  # the closed loop on the site twin


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
    assert {"topics", "rollup", "views", "narrate"} <= set(_opsloop_services(compose))


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
    devices = services["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


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
    for name in TWIN_SERVICES - {"twin-topics"}:
        assert services[name]["depends_on"]["twin-topics"]["condition"] == "service_completed_successfully", name


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
    for name in ("rollup", "views", "narrate"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert services[name]["restart"] == "unless-stopped"
    assert _env(services["narrate"])["OPSLOOP_LLM_URL"] == "http://vllm:8000/v1"


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
    assert sorted(users["source"]) == ["pcs-sim", "sources"]  # "source" is every producer of raw data
    assert all(len(services) == 1 for user, services in users.items() if user not in (ADMIN, "source")), users
