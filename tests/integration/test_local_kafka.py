"""ops/kafka.py: the local broker's lifecycle, for real."""

import time
import uuid

import pytest

from opsloop.ops.kafka import LocalKafka, broker_ready
from opsloop.config.settings import Settings

pytestmark = pytest.mark.integration


def test_up_and_down_are_idempotent_and_survive_a_dash_leading_cluster_id(tmp_path, monkeypatch, free_port_pair):
    # 0xfb... encodes to "-w..." in base64url: an id that looks like a command-line option.
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(bytes=bytes([0xFB]) + bytes(15)))
    kafka = LocalKafka(Settings.from_env().cache_dir, tmp_path / "kafka", port=free_port_pair)
    assert "ready" in kafka.start()
    try:
        assert "already running" in kafka.start()
        assert broker_ready(kafka.bootstrap, 5)
    finally:
        assert "stopped" in kafka.stop()
    assert kafka.stop() == "Kafka is not running"
    assert not broker_ready(kafka.bootstrap, 1)
    assert "ready" in kafka.start()  # restarts on the storage formatted before
    assert "stopped" in kafka.stop()


def test_prefixed_topics_delete_the_catalog_topics_and_the_processors_private_ones(kafka_settings):
    from opsloop.connectors.changelog import Changelog
    from opsloop.connectors.kafka import admin
    from opsloop.ops.kafka import prefixed_topics

    client = admin(kafka_settings)
    prefix = f"scratch-{uuid.uuid4().hex[:6]}."
    with prefixed_topics(kafka_settings, prefix, extra_topics=("bench.copy",)) as scratch:
        changelog = Changelog(scratch, "dedup", partitions=2).topic  # what a keyed processor creates
        expected = {scratch.topic("alarms.raw"), scratch.topic("bench.copy"), changelog}
        assert expected <= topics_containing(client, prefix, until=lambda found: expected <= found)
    assert topics_containing(client, prefix, until=lambda found: not found) == set()


def topics_containing(client, part: str, until, tries: int = 50) -> set[str]:
    """Topic names containing ``part``, polled until ``until(names)`` holds (topic metadata is eventual)."""
    for _ in range(tries):
        found = {t for t in client.list_topics(timeout=10).topics if part in t}
        if until(found):
            break
        time.sleep(0.2)
    return found


def test_a_broker_left_by_a_killed_demo_is_stopped_by_the_next_run_but_a_users_broker_is_not(tmp_path, free_port_pair):
    import os
    import signal
    import subprocess
    import sys

    from opsloop.ops.kafka import scratch_topics

    settings = Settings(data_dir=tmp_path, kafka_port=free_port_pair, broker=f"127.0.0.1:{free_port_pair}",
                        cache_dir=Settings.from_env().cache_dir)
    kafka = LocalKafka(settings.cache_dir, tmp_path / "kafka", port=free_port_pair)
    # a run that starts the broker and is SIGKILLed inside it, as a killed `opsloop demo`
    script = ("import time\nfrom pathlib import Path\nfrom opsloop.config.settings import Settings\n"
              "from opsloop.ops.kafka import scratch_topics\n"
              f"s = Settings(data_dir=Path({str(tmp_path)!r}), kafka_port={free_port_pair}, "
              f"broker='127.0.0.1:{free_port_pair}', cache_dir=Path({str(settings.cache_dir)!r}))\n"
              "with scratch_topics(s, 'killed.'):\n    print('inside', flush=True)\n    time.sleep(600)\n")
    killed = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in killed.stdout:
            lines.append(line)
            if line.startswith("inside"):
                break
        assert lines and lines[-1].startswith("inside"), "".join(lines)
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        assert kafka.pid() is not None, "the killed run's broker should still run"
        with scratch_topics(settings, "next."):
            pass
        assert kafka.pid() is None and not broker_ready(kafka.bootstrap, 1), "the next run left the orphan running"

        kafka.start()  # a broker the user started (`opsloop up`): a run uses it and leaves it running
        with scratch_topics(settings, "next."):
            pass
        assert kafka.pid() is not None
    finally:
        if killed.poll() is None:
            os.kill(killed.pid, signal.SIGKILL)
        kafka.stop()
