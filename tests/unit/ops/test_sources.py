"""`opsloop source` on a twin clock: no poll before the run's time begins."""

from __future__ import annotations

import threading
import time

import pytest

from opsloop.config.settings import Settings
from opsloop.ops import sources

pytestmark = pytest.mark.unit


class _Recorder:
    """Stands for one SourceRun: records that it ran, and when on the run's clock."""

    def __init__(self, clock):
        self.clock, self.started_at = clock, []
        self.config = type("Config", (), {"name": "meter"})()

    def run(self, stop):
        self.started_at.append(self.clock())
        return self

    def record(self, now_ms):
        return {"polls": len(self.started_at)}

    def now_ms(self):
        return int(self.clock() * 1000)


def _twin(tmp_path, anchor_in_s: float) -> Settings:
    return Settings(data_dir=tmp_path, clock_epoch_s=1_000_000.0, clock_anchor_s=time.time() + anchor_in_s,
                    clock_speed=60.0)


def test_the_first_poll_waits_for_the_runs_time_to_begin(tmp_path, monkeypatch):
    settings = _twin(tmp_path, 0.4)
    source = _Recorder(settings.clock())
    monkeypatch.setattr(sources, "runs", lambda *a, **k: [source])
    results = sources.run(settings, None, tmp_path / "sources.yaml", stop=threading.Event())
    assert results == {"meter": {"polls": 1}}
    assert source.started_at[0] >= 1_000_000.0, "polled before the twin's first second"


def test_stopped_before_the_time_begins_it_never_polls(tmp_path, monkeypatch):
    settings = _twin(tmp_path, 30.0)
    source = _Recorder(settings.clock())
    monkeypatch.setattr(sources, "runs", lambda *a, **k: [source])
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    began = time.monotonic()
    assert sources.run(settings, None, tmp_path / "sources.yaml", stop=stop) == {}
    assert source.started_at == [] and time.monotonic() - began < 5.0
