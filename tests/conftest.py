"""Shared fixtures. Integration tests run against one real Kafka broker per session.

The broker is the local Apache Kafka (KRaft) that ops/ installs, started on a free
port in a temporary directory and stopped at the end. Set OPSLOOP_TEST_BROKER to
use a broker that is already running instead. Each test gets its own topic prefix,
so tests never see each other's data.
"""

from __future__ import annotations

import gc
import os
import uuid

import pytest

from opsloop.config.settings import Settings
from opsloop.ops.kafka import free_port_pair as pick_ports


@pytest.fixture
def free_port_pair() -> int:
    return pick_ports()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    existing = os.environ.get("OPSLOOP_TEST_BROKER")
    if existing:
        yield existing
        return
    from opsloop.ops.kafka import LocalKafka

    broker = LocalKafka(Settings.from_env().cache_dir, tmp_path_factory.mktemp("kafka"), port=pick_ports())
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        gc.collect()  # destroy leftover clients first, or they log reconnect failures at exit
        broker.stop()


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory):
    """A second session broker, the secure one: SASL_SSL (SCRAM-SHA-512), TLS and the ACL authorizer, with its
    certificates and one SCRAM user per principal generated at start (``LocalKafka(secure=True)``)."""
    from opsloop.ops.kafka import LocalKafka

    broker = LocalKafka(Settings.from_env().cache_dir, tmp_path_factory.mktemp("kafka-secure"), port=pick_ports(),
                        secure=True, heap="512m")  # a second broker beside the plaintext one: keep it small
    broker.start()
    try:
        yield broker
    finally:
        gc.collect()
        broker.stop()


@pytest.fixture
def secure_settings(secure_kafka, tmp_path):
    """``principal → Settings`` on the secure broker, with this test's topics created by the super user and
    every principal's ACLs on them applied (``opsloop acl apply``)."""
    from opsloop.config.access import plan
    from opsloop.config.catalog import load_catalog
    from opsloop.connectors.kafka import apply_acls, apply_catalog

    from actuation import TEST_FEEDBACK_KEY, TEST_VERDICT_KEY  # the integration tier's helpers

    base = Settings(topic_prefix=f"s{uuid.uuid4().hex[:8]}.", app_id="opsloop-test", data_dir=tmp_path,
                    idle_close_s=1.5, cache_dir=Settings.from_env().cache_dir,
                    verdict_key=TEST_VERDICT_KEY, feedback_key=TEST_FEEDBACK_KEY)
    admin = secure_kafka.client_settings(base, "admin")
    apply_catalog(admin, load_catalog().values())
    apply_acls(admin, plan(admin))
    return lambda principal: secure_kafka.client_settings(base, principal)


@pytest.fixture
def kafka_settings(kafka_bootstrap, tmp_path) -> Settings:
    """Settings on the session broker with this test's own topics, created from the catalog."""
    from opsloop.connectors.kafka import apply_catalog
    from opsloop.config.catalog import load_catalog

    from actuation import TEST_FEEDBACK_KEY, TEST_VERDICT_KEY  # the integration tier's helpers

    settings = Settings(broker=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}.", app_id="opsloop-test",
                        data_dir=tmp_path, idle_close_s=1.5, cache_dir=Settings.from_env().cache_dir,
                        verdict_key=TEST_VERDICT_KEY, feedback_key=TEST_FEEDBACK_KEY)
    apply_catalog(settings, load_catalog().values())
    return settings


def read_all(settings: Settings, name: str, timeout_s: float = 30.0) -> list:
    """Every message of a catalog topic, read to the end each partition had when the read began."""
    from opsloop.connectors.kafka import read_to_end

    return read_to_end(settings, settings.topic(name), timeout_s)


@pytest.fixture
def read_topic():
    return read_all


def _local_slurm(tmp_path_factory, folder: str, nodes: int | None = None):
    """A real Slurm on this host with the demo site's partitions, started for the session and stopped after."""
    from opsloop.config.site import load_site
    from opsloop.ops.slurm import LocalSlurm

    cluster = LocalSlurm.for_site(tmp_path_factory.mktemp(folder), load_site(Settings().topology), nodes=nodes)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node Slurm (slurmctld, slurmd, munge) with the demo site's partitions and 8 fake GPUs."""
    yield from _local_slurm(tmp_path_factory, "slurm")


@pytest.fixture(scope="session")
def slurm_nodes(tmp_path_factory):
    """A real four-node Slurm on this host (four slurmd, 8 fake GPUs each), the demo site's partitions."""
    yield from _local_slurm(tmp_path_factory, "slurm-nodes", nodes=4)


@pytest.fixture(scope="session")
def llm_url(tmp_path_factory) -> str:
    """A real OpenAI-compatible server (llama-cpp-python, packaged SmolLM2-135M) for the session."""
    try:
        from opsloop.ops.llm_server import LocalLlm
        import llama_cpp  # noqa: F401  (built by `make llm-deps`)

        server = LocalLlm(pick_ports(), tmp_path_factory.mktemp("llm") / "server.log")
    except (ImportError, RuntimeError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no local LLM server ({exc}); run `make llm-deps`")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
