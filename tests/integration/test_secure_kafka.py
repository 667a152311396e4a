"""The secure tier: a TLS + SASL/SCRAM broker with the ACL authorizer on, every client as its own principal.

Every refusal here comes from the broker (an authorization or authentication error on the wire),
never from opsloop's code: the clients are plain confluent-kafka clients with a principal's settings.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from actuation import Running, action, free_port, publish
from opsloop.config.policy import load_policy
from opsloop.config.site import load_site
from opsloop.connectors.kafka import admin, consumer, producer, security_config
from opsloop.connectors.replay import replay, replay_spec
from opsloop.ops.cli import BUNDLED_DATA as TAYLOR
from opsloop.ops.pcs_sim import from_site
from opsloop.schemas.codec import Codec
from opsloop.streams.guard import GuardProcessor
from opsloop.streams.pcs_sink import PcsSink
from opsloop.streams.rollup import RollupProcessor

pytestmark = [pytest.mark.integration, pytest.mark.secure]
SAFETY_NET_S = 90.0


def produce_error(settings, topic: str) -> str | None:
    """Produce one message as ``settings``' principal; the broker's error name, or None when it was accepted."""
    errors = []
    prod = producer(settings, **{"message.timeout.ms": 10_000})
    prod.produce(settings.topic(topic), key=b"k", value=b"\xc3\x01 forged",
                 on_delivery=lambda err, msg: errors.append(err))
    prod.flush(15)
    assert len(errors) == 1, "no delivery report within 15 s"
    return None if errors[0] is None else errors[0].name()


def consume_error(settings, topic: str, timeout_s: float = 30.0) -> str | None:
    """Subscribe to a topic as ``settings``' principal, in its agent's group; the broker's error name, or None once
    the end of a partition is reached."""
    cons = consumer(settings, settings.group(settings.kafka_sasl_username))
    cons.subscribe([settings.topic(topic)])  # as the agents do
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for msg in cons.consume(100, timeout=0.5):
                if msg.error() is None:
                    continue
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return None
                return msg.error().name()
        raise AssertionError(f"neither data, end nor error from {topic} within {timeout_s} s")
    finally:
        cons.close()


def test_the_broker_refuses_what_a_principal_is_not_granted(secure_settings):
    # only the guard writes approvals: a sink, the NOC, a source and the views are refused by the broker
    for principal in ("pcs-sink", "slurm-sink", "noc", "source", "views"):
        assert produce_error(secure_settings(principal), "actions.approved") == "TOPIC_AUTHORIZATION_FAILED", principal
    assert produce_error(secure_settings("guard"), "actions.approved") is None
    # only the NOC writes operator feedback
    for principal in ("pcs-sink", "guard", "source"):
        assert produce_error(secure_settings(principal), "operator.feedback") == "TOPIC_AUTHORIZATION_FAILED", principal
    assert produce_error(secure_settings("noc"), "operator.feedback") is None
    # approvals are read by the sinks (and the views), not by other agents
    assert consume_error(secure_settings("pcs-sink"), "actions.approved") is None
    for principal in ("rollup", "peaks", "guard"):
        assert consume_error(secure_settings(principal), "actions.approved") == "TOPIC_AUTHORIZATION_FAILED", principal


def test_no_identity_no_access(secure_settings):
    settings = secure_settings("guard")
    base = {"bootstrap.servers": settings.broker, "socket.timeout.ms": 3000, "log_level": 0}
    secure = security_config(settings)
    wrong_password = {**secure, "sasl.password": "wrong-" + uuid.uuid4().hex}
    untrusting = {k: v for k, v in secure.items() if k != "ssl.ca.location"}  # system CAs: ours is not among them
    # a plaintext client on the TLS listener, a wrong password and a client that does not trust our CA: no metadata
    for config in (base, {**base, **wrong_password}, {**base, **untrusting}):
        with pytest.raises(KafkaException):
            AdminClient(config).list_topics(timeout=3)


def test_rollup_guard_and_pcs_sink_run_as_their_own_principals(secure_kafka, secure_settings, read_topic, caplog):
    caplog.set_level(logging.DEBUG)
    as_source, as_rollup = secure_settings("source"), secure_settings("rollup")
    stats = replay(as_source, replay_spec(load_site(as_source.topology)), TAYLOR, start="2000-06-05T00:00:00",
                   days=0.25)
    rollup = RollupProcessor(as_rollup).run(__import__("threading").Event(), exit_when_idle=True)
    assert rollup["points"] == stats.points and rollup["snapshots"] == 12 and rollup["dead_letters"] == 0

    now = int(time.time() * 1000)
    publish(as_rollup, "telemetry.site", "SiteSnapshot", [{
        "site": "demo", "window_start_ms": now - 5000, "window_end_ms": now, "grid_kw": 30000.0, "it_kw": 25000.0,
        "facility_kw": 30000.0, "ess_soc_pct": 80.0, "ess_soh_pct": 97.0, "ess_kw": 0.0, "gpu_kw": None,
        "pue": 1.2, "price_per_mwh": None, "samples": 3, "devices": 3}], key=lambda r: r["site"].encode())  # after the rest
    site = load_site(as_rollup.topology)
    with from_site(site, free_port(), soc_pct=80.0) as sim:
        guard_settings = secure_settings("guard")
        sink_settings = secure_settings("pcs-sink").replace(pcs_modbus=f"127.0.0.1:{sim.port}",
                                                             data_dir=guard_settings.data_dir / "sink")
        guard = GuardProcessor(guard_settings, load_policy(guard_settings.policy), site)
        sink = PcsSink(sink_settings, load_policy(sink_settings.policy), site)
        done = []
        sink.on_result = done.append
        with Running(guard, SAFETY_NET_S) as g, Running(sink, SAFETY_NET_S) as s:
            wait_until(lambda: guard.ess.get("demo") and guard.ess["demo"].ts_ms >= now, g, s)  # the fresh window
            publish(secure_settings("peaks"), "actions.proposed", "Action",
                    [action("sec-1", "pcs_discharge", setpoint_kw=1500.0)])
            wait_until(lambda: done or guard.stats["rejected"], g, s)
        assert [r["status"] for r in done] == ["executed"], (guard.stats, sink.stats)
        assert sim.register_log and sim.register_log[0][2][0] == 3000  # 1500 kW, in the PCS's scaled units
    codec = Codec.default()
    admin_view = secure_settings("admin")
    [verdict] = [codec.decode_as("ApprovedAction", m.value()) for m in read_topic(admin_view, "actions.approved")]
    assert verdict["verdict"] == "approved" and verdict["action"]["action_id"] == "sec-1"
    assert not [secret for secret in _secrets(secure_kafka) if secret in caplog.text]  # the agents' logs


def wait_until(condition, *runners) -> None:
    deadline = time.monotonic() + SAFETY_NET_S  # a safety net only
    while not condition():
        for runner in runners:
            if runner.error is not None:
                raise runner.error
        assert time.monotonic() < deadline, f"never happened: {[r.processor.stats for r in runners]}"
        time.sleep(0.05)


def _secrets(secure_kafka) -> list[str]:
    return [p.read_text().strip() for p in (secure_kafka.secure_dir / "users").glob("*.password")] + [
        (secure_kafka.secure_dir / "keystore.password").read_text().strip()]


def test_no_secret_in_logs_exception_texts_or_cli_output(secure_kafka, secure_settings, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    texts = []
    guard = secure_settings("guard")
    password = guard.kafka_password()
    # a refused write, a wrong password and a broken setting: their errors and the logs around them
    texts.append(str(produce_error(secure_settings("noc"), "actions.approved")))
    bad = guard.replace(kafka_sasl_password="not-" + password, kafka_sasl_password_file=None)
    try:
        admin(bad, **{"socket.timeout.ms": 3000, "log_level": 7}).list_topics(timeout=5)
    except KafkaException as exc:
        texts.append(repr(exc))
    texts += [repr(guard), str(guard), repr(bad)]
    # the CLI as a deployment runs it: credentials in its environment, debug logging
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OPSLOOP_")}
    env.update(guard.replace(kafka_sasl_password=password, kafka_sasl_password_file=None).kafka_env(),
               OPSLOOP_LOG_LEVEL="debug", OPSLOOP_TOPIC_PREFIX=guard.topic_prefix, OPSLOOP_DATA_DIR=str(guard.data_dir))
    for args in (["topics", "create"], ["acl", "apply"]):  # refused: the guard may neither create topics nor grant
        run = subprocess.run([sys.executable, "-m", "opsloop.ops.cli", *args], env=env, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode != 0, run.stdout
        assert "AUTHORIZATION_FAILED" in run.stderr, run.stderr[-2000:]
        texts += [run.stdout, run.stderr]
    out, err = capfd.readouterr()
    texts += [caplog.text, out, err, (secure_kafka.state_dir / "kafka.log").read_text(errors="replace")]
    found = [i for i, text in enumerate(texts) for secret in _secrets(secure_kafka) if secret in text]
    assert found == [], "a secret leaked"
    assert any("uthoriz" in t or "AUTHORIZATION" in t for t in texts)  # the refusals were seen, and said why


def test_the_faust_narrator_runs_over_tls_and_scram_as_its_own_principal(secure_settings, read_topic):
    import threading

    from opsloop.ops.evals.narrate import load_labelled
    from opsloop.streams import worker

    as_narrate, as_admin, codec = secure_settings("narrate"), secure_settings("admin"), Codec.default()
    [incident] = [incident for incident, _ in load_labelled()[:1]]
    publish(secure_settings("correlate"), "incidents", "Incident", [incident], key=lambda r: r["site"].encode())
    stop, narratives = threading.Event(), []

    def watch() -> None:
        deadline = time.monotonic() + SAFETY_NET_S
        while not stop.is_set() and time.monotonic() < deadline and not narratives:
            narratives[:] = [codec.decode_as("Narrative", m.value()) for m in read_topic(as_admin, "narratives")]
            time.sleep(0.5)
        stop.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    worker.run(as_narrate, ["narrate"], stop=stop)  # aiokafka: an SSL context with our CA, SCRAM-SHA-512
    watcher.join()
    assert [n["incident_id"] for n in narratives] == [incident["incident_id"]]
