"""The correlate agent in a consumer group that changes mid-stream: a second worker joins, the first is killed
(SIGKILL), a third joins. Every site's incidents come out as one correlator folding its alarms in order makes
them: none lost, none opened twice."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from opsloop.config.catalog import cached_catalog
from opsloop.config.site import load_site
from opsloop.connectors.kafka import producer, send, wait_delivered
from opsloop.models.correlate import CorrelateConfig, SiteCorrelator
from opsloop.models.dedup import DedupConfig, fold
from opsloop.models.noise import NoiseScorer
from opsloop.models.topology import Topology
from opsloop.ops.evals.storm import generate_storm
from opsloop.schemas.codec import Codec

from faults import lag, start_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

COLO = Path(__file__).resolve().parents[1] / "data" / "topology_colo.yaml"
SITES = 4
STREAM_S = 20.0  # wall time the source takes


def site_files(directory: Path) -> list[Path]:
    """``SITES`` copies of the colo site, ids colo-0 ...: the worker correlates each on its own topology."""
    text = COLO.read_text()
    directory.mkdir()
    paths = [directory / f"colo-{k}.yaml" for k in range(SITES)]
    for k, path in enumerate(paths):
        path.write_text(text.replace("id: colo\n", f"id: colo-{k}\n", 1))
    return paths


def clean_alarms(alarms: list[dict]) -> list[dict]:
    """What dedup announces for a site's storm, in order (the correlator's input)."""
    config, scorer, states, out = DedupConfig(), NoiseScorer(), {}, []
    for offset, alarm in enumerate(alarms):
        out += fold(states.setdefault(alarm["device"], {}), alarm, offset, config, scorer) or []
    return out


def live_incidents(records) -> dict[str, tuple]:
    """incident id → (root device, members) of the latest record of each incident not merged into another."""
    latest = {}
    for record in records:
        latest[record["incident_id"]] = record
    return {i: (r["root_device"], r["member_count"]) for i, r in latest.items() if not r["merged_into"]}


def offline(site: str, topology: Topology, cleans: list[dict]) -> dict[str, tuple]:
    correlator, records = SiteCorrelator(site, topology, CorrelateConfig()), []
    for clean in cleans:
        correlator.on_alarm(clean)
        correlator.expire()
        records += correlator.flush()
    return live_incidents(records)


def test_a_correlate_worker_killed_and_one_added_lose_no_incident_and_open_none_twice(kafka_settings, read_topic,
                                                                                      tmp_path):
    """Proves: while four sites' clean alarms stream in (each site on its own partition), worker A runs correlate;
    worker B joins (the sites split between them), A is killed with SIGKILL (B takes A's sites after the
    session timeout, restoring their correlators from the changelog and folding the uncommitted alarms again),
    then worker C joins. At the end each site's live incidents are exactly those one correlator makes from the
    site's alarms in order: the same ids, roots and member counts, none missing and none extra."""
    paths = site_files(tmp_path / "sites")
    settings = kafka_settings.replace(topology=paths[0])
    partitions = cached_catalog(settings.topics_file)["alarms.clean"].partitions
    codec, streams, expected = Codec.default(), {}, {}
    for k, path in enumerate(paths):
        topology = Topology.from_site(load_site(path))
        storm = generate_storm(topology, seed=20 + k, failures=3, background=5, horizon_s=3600)
        streams[topology.site] = clean_alarms([a for a, _ in storm.alarms])
        expected.update(offline(topology.site, topology, streams[topology.site]))
    assert len(expected) >= SITES * 3  # every site has incidents to lose

    def source() -> None:  # the sites interleaved in event time, each on a partition of its own
        prod = producer(settings)
        merged = sorted(((c["alarm"]["ts_ms"], k, c) for k, (site, cleans) in enumerate(streams.items())
                         for c in cleans), key=lambda t: (t[0], t[1]))
        for i, (_, k, clean) in enumerate(merged):
            send(prod, settings.topic("alarms.clean"), clean["alarm"]["site"].encode(),
                 codec.encode("CleanAlarm", clean), partition=k % partitions)
            if i % 20 == 0:
                prod.flush(10)
                time.sleep(STREAM_S / (len(merged) / 20))
        wait_delivered(prod)

    env = dict(OPSLOOP_BATCH_SIZE=50, OPSLOOP_TOPOLOGY=paths[0])
    sending = threading.Thread(target=source)
    workers = {}
    try:
        workers["a"] = start_worker(settings, "correlate", tmp_path / "a.log", **env)
        wait_for(lambda: "assigned partitions" in (tmp_path / "a.log").read_text(), 90, "worker A's assignment",
                 workers["a"])
        sending.start()
        time.sleep(STREAM_S * 0.2)
        workers["b"] = start_worker(settings, "correlate", tmp_path / "b.log", **env)
        wait_for(lambda: "assigned partitions" in (tmp_path / "b.log").read_text(), 90, "worker B's assignment",
                 workers["b"])
        time.sleep(2.0)
        os.killpg(workers["a"].pid, signal.SIGKILL)
        workers["a"].wait()
        time.sleep(STREAM_S * 0.2)
        workers["c"] = start_worker(settings, "correlate", tmp_path / "c.log", **env)
        sending.join(120)
        wait_for(lambda: "assigned partitions" in (tmp_path / "c.log").read_text(), 90, "worker C's assignment",
                 workers["c"])
        wait_for(lambda: lag(settings, "correlate", "alarms.clean") == 0, 120, "the correlate group caught up",
                 workers["b"])
        assert workers["c"].poll() is None, (tmp_path / "c.log").read_text()[-3000:]
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)

    incidents = [codec.decode_as("Incident", m.value()) for m in read_topic(settings, "incidents")]
    assert live_incidents(incidents) == expected
