"""Two workers in one consumer group, one killed (SIGKILL) and one added mid-stream: the agents that share
partitions (anomaly, dedup) lose nothing and count nothing twice."""

from __future__ import annotations

import json
import os
import pickle
import signal
import threading
import time
from pathlib import Path

import pytest

from opsloop.config.catalog import cached_catalog
from opsloop.config.site import load_site
from opsloop.connectors.changelog import Changelog
from opsloop.connectors.kafka import producer, send_record, wait_delivered
from opsloop.connectors.replay import replay, replay_spec
from opsloop.models.dedup import DedupConfig, fold
from opsloop.models.noise import NoiseScorer
from opsloop.models.topology import Topology
from opsloop.ops.cli import BUNDLED_DATA
from opsloop.ops.evals.storm import generate_storm
from opsloop.schemas.codec import Codec

from faults import lag, start_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

COLO = Path(__file__).resolve().parents[1] / "data" / "topology_colo.yaml"
DAYS = 14  # 672 half-hours, 11,424 points
STREAM_S = 20.0  # wall time the sources take


def learnt_per_series(settings, partitions: int) -> dict[str, int]:
    """Points each anomaly detector has learnt, from the latest checkpoints in its changelog."""
    states = Changelog(settings, "anomaly-state", partitions).restore(list(range(partitions)))
    return {key.decode(): pickle.loads(value).warning.detector._seen
            for keys in states.values() for key, value in keys.items()}


def offline_clean(alarms: list[dict]) -> set[str]:
    """What dedup announces for these alarms, folded per device in send order (the partition order)."""
    config, scorer, states, out = DedupConfig(), NoiseScorer(), {}, set()
    for offset, alarm in enumerate(alarms):
        for clean in fold(states.setdefault(alarm["device"], {}), alarm, offset, config, scorer) or ():
            out.add(json.dumps(clean, sort_keys=True, default=repr))
    return out


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_worker_killed_and_one_added_mid_stream_lose_nothing_and_count_nothing_twice(kafka_settings, read_topic,
                                                                                       tmp_path, delivery):
    """Proves: while telemetry and an alarm storm stream in, worker A runs anomaly + dedup; worker B joins the
    group (partitions split), A is killed with SIGKILL (B takes A's partitions after the session timeout,
    restoring their state from the changelogs), then worker C joins. At the end every telemetry point was
    learnt by its detector exactly once (the detectors' own counts, from their checkpoints), and the clean
    alarms are exactly what dedup announces for the storm offline: none missing, none with another count. With
    exactly-once delivery a reader that reads committed sees each clean alarm once."""
    settings = kafka_settings.replace(topology=COLO, delivery=delivery)
    spec = replay_spec(load_site(kafka_settings.topology))
    storm = [a for a, _ in generate_storm(Topology.from_site(load_site(COLO)), seed=5, failures=3, background=5,
                                          horizon_s=3600).alarms]
    env = dict(OPSLOOP_BATCH_SIZE=200, OPSLOOP_ANOMALY_CHECKPOINT_S=1, OPSLOOP_IDLE_CLOSE_S=3600,
               OPSLOOP_TOPOLOGY=COLO, OPSLOOP_UNKNOWN_NAMES="accept",  # demo telemetry beside colo alarms
               OPSLOOP_DELIVERY=delivery)

    def alarms_source() -> None:
        prod = producer(settings)
        for i, alarm in enumerate(storm):
            send_record(prod, settings, "alarms.raw", alarm)
            if i % 20 == 0:
                prod.flush(10)
                time.sleep(STREAM_S / (len(storm) / 20))
        wait_delivered(prod)

    sources = [threading.Thread(target=replay, args=(kafka_settings, spec, BUNDLED_DATA),
                                kwargs=dict(start="2000-06-05T00:00:00", days=DAYS, speedup=DAYS * 86_400 / STREAM_S)),
               threading.Thread(target=alarms_source)]
    workers = {}
    try:
        workers["a"] = start_worker(settings, "anomaly,dedup", tmp_path / "a.log", **env)
        for s in sources:
            s.start()
        time.sleep(STREAM_S * 0.2)
        workers["b"] = start_worker(settings, "anomaly,dedup", tmp_path / "b.log", **env)
        wait_for(lambda: "assigned partitions" in (tmp_path / "b.log").read_text(), 60, "worker B's assignment",
                 workers["b"])
        time.sleep(2.0)
        os.killpg(workers["a"].pid, signal.SIGKILL)
        workers["a"].wait()
        time.sleep(STREAM_S * 0.2)
        workers["c"] = start_worker(settings, "anomaly,dedup", tmp_path / "c.log", **env)
        for s in sources:
            s.join(120)
        # C joins the groups (a rebalance) before they are judged caught up: on a loaded machine its start-up may
        # outlast the sources
        wait_for(lambda: "assigned partitions" in (tmp_path / "c.log").read_text(), 60, "worker C's assignment",
                 workers["c"])
        wait_for(lambda: lag(settings, "anomaly", "telemetry.raw") == 0 and lag(settings, "dedup", "alarms.raw") == 0,
                 120, "both groups caught up", workers["b"])
        assert workers["c"].poll() is None, (tmp_path / "c.log").read_text()[-3000:]
        assert "assigned partitions" in (tmp_path / "c.log").read_text()
    finally:
        for name, proc in workers.items():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)

    partitions = cached_catalog(settings.topics_file)["telemetry.raw"].partitions
    every_point_once = {f"{spec.site}|{s.device}|{s.metric}": DAYS * 48 for s in spec.streams}
    if delivery == "exactly-once":  # the killed worker's open transaction holds readers back until the broker aborts it
        wait_for(lambda: learnt_per_series(settings, partitions) == every_point_once, 60,
                 "the checkpoints past the killed worker's transaction")
    learnt = learnt_per_series(settings, partitions)
    assert len(learnt) == len(spec.streams)
    assert learnt == every_point_once

    codec = Codec.default()
    expected = offline_clean(storm)

    def clean_alarms() -> list[str]:
        return [json.dumps(codec.decode_as("CleanAlarm", m.value()), sort_keys=True, default=repr)
                for m in read_topic(settings, "alarms.clean")]

    if delivery == "exactly-once":  # the killed worker's open transaction holds readers back until the broker aborts it
        wait_for(lambda: expected <= set(clean_alarms()), 60, "the clean alarms past the killed worker's transaction")
    copies = clean_alarms()
    clean = set(copies)
    if delivery == "exactly-once":
        assert len(copies) == len(clean)
    demo = {c for c in clean if json.loads(c)["alarm"]["site"] == spec.site}  # the anomaly agent's own alarms
    assert clean - demo == expected
