"""Replay → rollup → DuckDB on the real broker, checked against the CSV computed independently."""

from __future__ import annotations

import csv
import threading
import time
from datetime import datetime

import pytest

from opsloop.ops.cli import BUNDLED_DATA as TAYLOR
from opsloop.connectors.duckdb import query
from opsloop.connectors.kafka import producer, wait_delivered
from opsloop.config.site import load_site
from opsloop.connectors.replay import replay, replay_spec
from opsloop.schemas.codec import Codec
from opsloop.streams import worker
from opsloop.streams.rollup import PartialAssignment, RollupProcessor

pytestmark = pytest.mark.integration


def expected_day_one() -> dict[datetime, dict]:
    """The demo site's stated split, computed straight from the CSV (not from the site file)."""
    out = {}
    with open(TAYLOR) as f:
        for row in csv.DictReader(f):
            ts = datetime.fromisoformat(row["timestamp"])
            if ts.date().isoformat() != "2000-06-05":
                continue
            grid = float(row["demand_mw"])  # national MW / 1000 = site MW = 1 kW per national MW
            it = (grid - 1500.0) / 1.12  # facility = 1.12 x IT + 1.5 MW; ESS idle so facility = grid
            out[ts] = {"grid_kw": grid, "facility_kw": grid, "it_kw": it, "pue": grid / it, "gpu_kw": 0.72 * it}
    return out


def test_one_day_reaches_duckdb_equal_to_the_csv(kafka_settings):
    spec = replay_spec(load_site(kafka_settings.topology))
    stats = replay(kafka_settings, spec, TAYLOR, start="2000-06-05T00:00:00", days=1)
    assert stats.rows == 48 and stats.skipped == 0

    rollup = worker.run(kafka_settings, ["rollup"], exit_when_idle=True)["rollup"]
    assert rollup["points"] == stats.points and rollup["snapshots"] == 48 and rollup["dead_letters"] == 0
    worker.run(kafka_settings, ["views"], exit_when_idle=True)

    cols, rows = query(kafka_settings.duckdb_file, "SELECT minute, grid_kw, facility_kw, it_kw, pue, gpu_kw, "
                       "ess_soc_pct, ess_kw FROM v_site_power WHERE site = 'demo' ORDER BY minute")
    expected = expected_day_one()
    assert [r[0].replace(tzinfo=None) for r in rows] == sorted(expected)
    for minute, grid, facility, it, pue, gpu, soc, ess_kw in rows:
        want = expected[minute.replace(tzinfo=None)]
        assert grid == pytest.approx(want["grid_kw"], rel=1e-9)
        assert facility == pytest.approx(want["facility_kw"], rel=1e-9)
        assert it == pytest.approx(want["it_kw"], rel=1e-9)
        assert pue == pytest.approx(want["pue"], rel=1e-9)
        assert gpu == pytest.approx(want["gpu_kw"], rel=1e-9)
        assert (soc, ess_kw) == (80.0, 0.0)


def test_malformed_and_late_messages_reach_deadletter_and_the_stream_goes_on(kafka_settings, read_topic):
    codec = Codec.default()
    topic = kafka_settings.topic("telemetry.raw")
    prod = producer(kafka_settings)

    def point(ts_ms, value):
        return codec.encode("TelemetryPoint", {"ts_ms": ts_ms, "site": "demo", "device": "grid-meter-1",
                                               "device_type": "grid_meter",
                                               "metric": "grid_kw", "value": value, "unit": "kW", "source": "test"})

    base = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
    settings = kafka_settings.replace(grace_s=60)
    for minute in range(10):  # one key, so one partition and this order
        prod.produce(topic, key=b"grid-meter-1", value=point(base + minute * 60_000, 100.0 + minute))
    wait_delivered(prod)
    first = worker.run(settings, ["rollup"], exit_when_idle=True)["rollup"]
    assert (first["snapshots"], first["dead_letters"]) == (10, 0)

    # A restarted rollup gets garbage, a point for the long-closed minute 0, a NaN, then minute 10.
    prod.produce(topic, key=b"grid-meter-1", value=b"not avro at all")
    prod.produce(topic, key=b"grid-meter-1", value=point(base + 30_000, 999.0))
    prod.produce(topic, key=b"grid-meter-1", value=point(base + 10 * 60_000, float("nan")))
    prod.produce(topic, key=b"grid-meter-1", value=point(base + 10 * 60_000, 110.0))
    wait_delivered(prod)
    second = worker.run(settings, ["rollup"], exit_when_idle=True)["rollup"]
    assert (second["snapshots"], second["dead_letters"], second["points"]) == (1, 3, 1)

    dead = [codec.decode_as("DeadLetter", m.value()) for m in read_topic(kafka_settings, "deadletter")]
    by_kind = {d["error_kind"]: d for d in dead}
    assert set(by_kind) == {"decode", "late", "invalid"}
    assert by_kind["decode"]["value"] == b"not avro at all" and by_kind["decode"]["offset"] == 10
    assert by_kind["decode"]["topic"] == topic and "single-object" in by_kind["decode"]["error"]
    assert "closed" in by_kind["late"]["error"]
    snaps = [codec.decode_as("SiteSnapshot", m.value()) for m in read_topic(kafka_settings, "telemetry.site")]
    first = next(s for s in snaps if s["window_start_ms"] == base)
    assert first["grid_kw"] == 100.0  # the late 999 did not change an emitted window
    assert sorted(s["grid_kw"] for s in snaps) == [100.0 + m for m in range(11)]


def test_with_raw_telemetry_keyed_by_device_a_second_rollup_fails_clearly_instead_of_splitting_sites(
        kafka_settings, tmp_path):
    """A deployment whose catalog keys telemetry.raw by device (a site's devices on every partition) must run one
    rollup process; the catalog's own key, site, lets rollups share the partitions (test_rollup_scale_out.py)."""
    topics = tmp_path / "topics.yaml"
    topics.write_text(kafka_settings.topics_file.read_text().replace(
        "key: site           # a site's points meet", "key: device         # a site's points meet", 1))
    kafka_settings = kafka_settings.replace(topics_file=topics)
    stop, failures = threading.Event(), []

    def run(proc):
        try:
            proc.run(stop)
        except PartialAssignment as exc:
            failures.append(exc)

    first = RollupProcessor(kafka_settings)
    assert not first.keyed
    threads = [threading.Thread(target=run, args=(first,))]
    threads[0].start()
    try:
        deadline = time.monotonic() + 60
        while not first.assigned:  # the first one owns all 8 partitions
            assert time.monotonic() < deadline and threads[0].is_alive()
            time.sleep(0.1)
        threads.append(threading.Thread(target=run, args=(RollupProcessor(kafka_settings),)))
        threads[1].start()
        while not failures:
            assert time.monotonic() < deadline, "no rollup refused the partial assignment"
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert "of the 8 partitions" in str(failures[0]) and "run one rollup process" in str(failures[0])
