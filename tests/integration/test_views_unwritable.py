"""The views agent when its DuckDB file cannot be written for a while: it pauses, says so once, and resumes."""

from __future__ import annotations

import logging
import threading
import time

import duckdb
import pytest

from opsloop.config.site import load_site
from opsloop.connectors.duckdb import query
from opsloop.connectors.replay import replay, replay_spec
from opsloop.ops.cli import BUNDLED_DATA
from opsloop.streams import views

from faults import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

UNWRITABLE_S = 4.0


def test_an_unwritable_duckdb_file_pauses_the_sink_with_one_error_and_loses_nothing(kafka_settings, monkeypatch,
                                                                                      caplog):
    """Proves: when every write to the file fails (injected at the store: the tests run as a user that file
    permissions do not stop, so the failure DuckDB raises for a full or read-only disk is raised there),
    the views agent keeps running, pauses with one clear error, retries, and once the file takes writes
    again holds every point of both halves of a replay exactly once (no (partition, offset) twice)."""
    spec = replay_spec(load_site(kafka_settings.topology))
    replay(kafka_settings, spec, BUNDLED_DATA, start="2000-06-05T00:00:00", days=1)
    failing = threading.Event()
    real_store = views.store_batch

    def store(con, tables, offsets):
        if failing.is_set():
            raise duckdb.IOException(f'Could not write file "{kafka_settings.duckdb_file}": No space left on device')
        return real_store(con, tables, offsets)

    monkeypatch.setattr(views, "store_batch", store)
    sink = views.ViewsSink(kafka_settings, topics=["telemetry.raw"])
    sink.retry_s = 0.5
    stop, stats = threading.Event(), {}
    runner = threading.Thread(target=lambda: stats.update(sink.run(stop, exit_when_idle=True)))
    timer = threading.Timer(90, stop.set)
    timer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="opsloop.views"):
            runner.start()
            wait_for(lambda: sink.stats["rows"].get("telemetry_raw"), 30, "the first rows")
            failing.set()
            replay(kafka_settings, spec, BUNDLED_DATA, start="2000-06-06T00:00:00", days=1)
            wait_for(lambda: sink.paused_at is not None, 30, "the pause")
            time.sleep(UNWRITABLE_S)
            assert runner.is_alive()
            failing.clear()
            runner.join(60)
    finally:
        timer.cancel()
    assert not stop.is_set() and not runner.is_alive()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot write" in errors[0] and "paused" in errors[0], errors
    assert any("again after" in r.getMessage() for r in caplog.records)
    points = 2 * 48 * len(spec.streams)
    _, [(rows, distinct)] = query(kafka_settings.duckdb_file,
                                  "SELECT count(*), count(DISTINCT (_partition, _offset)) FROM telemetry_raw")
    assert rows == distinct == points
    assert stats["rows"]["telemetry_raw"] == points
