"""The live-source loop on the real broker: readings, bad readings, health and the monitoring-loss alarm."""

from __future__ import annotations

import pytest

from opsloop.config.site import parse_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources.base import Readings, Reject, SourceUnavailable
from opsloop.connectors.sources.loop import SourceRun
from opsloop.models.records import telemetry_point
from opsloop.schemas.codec import Codec

from source_run import finish_and_read

pytestmark = pytest.mark.integration

SITE = parse_site({"site": {"id": "lab"}, "devices": [{"id": "meter-1", "type": "grid_meter"},
                                                      {"id": "scraper", "type": "collector"}]}, "lab.yaml")


class Scripted:
    """A system that answers, fails three polls in a row, then answers again."""

    def __init__(self):
        self.polls = 0

    def poll(self, now_ms: int) -> Readings:
        self.polls += 1
        if 2 <= self.polls <= 4:
            raise SourceUnavailable("connection refused")
        return Readings(points=[telemetry_point(now_ms, "lab", "meter-1", "grid_meter", "grid_kw", 100.0 + self.polls,
                                                "kW", "test")],
                        rejects=[Reject(b"grid_kw NaN", "invalid", "not a number")] if self.polls == 1 else [])

    def close(self) -> None:
        pass


def test_a_source_publishes_points_dead_letters_health_and_raises_then_clears_monitoring_loss(kafka_settings,
                                                                                                read_topic):
    config = parse_sources({"site": "lab", "sources": [{"kind": "scripted", "name": "scraper", "fail_after": 3,
                                                         "interval_s": 0.01, "backoff_max_s": 0.01}]}, "s.yaml")[0]
    clock = iter(range(1_000, 10**9, 1_000))
    run = SourceRun(kafka_settings, config, SITE, Scripted(), clock=lambda: next(clock))
    for _ in range(6):
        run.poll_once()
    published = finish_and_read(run, kafka_settings, read_topic)  # reports and flushes
    points, alarms = published["TelemetryPoint"], published["Alarm"]
    health, dead = published["SourceHealth"], published["DeadLetter"]
    assert [p["value"] for p in points] == [101.0, 105.0, 106.0]
    assert [(a["code"], a["state"], a["device"]) for a in alarms] == [("COLLECTOR_DOWN", "raise", "scraper"),
                                                                      ("COLLECTOR_DOWN", "clear", "scraper")]
    assert [h["status"] for h in health][:5] == ["ok", "degraded", "degraded", "down", "ok"]
    assert health[-1]["failures"] == 3 and health[-1]["points"] == 3 and health[-1]["dead_letters"] == 1
    assert [(d["error_kind"], d["value"], d["topic"]) for d in dead] == [("invalid", b"grid_kw NaN", "source:scraper")]


def test_a_source_whose_names_the_site_does_not_declare_is_refused_with_the_names(kafka_settings):
    config = parse_sources({"site": "lab", "sources": [{"kind": "scripted", "name": "other",
                                                         "devices": {"10.0.0.9": "meter-9"}}]}, "s.yaml")[0]
    with pytest.raises(ValueError, match=r"meter-9.*not declared.*'other' is not a device"):
        SourceRun(kafka_settings, config, SITE, Scripted())


def test_opsloop_worker_runs_the_live_sources_of_a_config_file_beside_its_agents(kafka_settings, read_topic,
                                                                                   tmp_path):
    """Proves: ``opsloop worker --sources FILE`` runs the file's sources in the worker's process: the hwmon
    example reads a captured sysfs tree into telemetry.raw and reports its health, and the views agent beside
    it stores those points; stopping the worker (here: idle) stops and flushes the sources."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from faults import worker_env

    root = tmp_path / "sys"
    shutil.copytree(Path(__file__).parents[1] / "data" / "sysfs-host", root, symlinks=True)
    example = yaml.safe_load((Path(__file__).parents[2] / "ops" / "sources" / "hwmon.yaml").read_text())
    example["sources"][0]["options"]["root"] = str(root)
    example["sources"][0]["interval_s"] = 60  # one poll, then the worker goes idle
    config = tmp_path / "sources.yaml"
    config.write_text(yaml.safe_dump(example))
    done = subprocess.run([sys.executable, "-m", "opsloop.ops.cli", "worker", "--agents", "views", "--exit-when-idle",
                           "--sources", str(config)], env=worker_env(kafka_settings), capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    codec = Codec.default()
    points = [codec.decode_as("TelemetryPoint", m.value()) for m in read_topic(kafka_settings, "telemetry.raw")]
    health = [codec.decode_as("SourceHealth", m.value()) for m in read_topic(kafka_settings, "sources.health")]
    assert points and {p["source"] for p in points} == {"hwmon"} and "rack-a01-n1" in {p["device"] for p in points}
    assert health and health[-1]["source"] == "hwmon-node" and health[-1]["status"] == "ok"
    assert b"views stopped" in done.stderr
