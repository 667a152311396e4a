"""Helpers of the fault tests (``faults`` marker): a broker of the test's own, worker processes, counts by key.

The fault tests stop, restart or kill real processes, so each that touches the broker itself gets its
own single-node broker (``OwnKafka``), never the session's.
"""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from opsloop.config.catalog import load_catalog
from opsloop.config.settings import Settings
from opsloop.connectors.kafka import apply_catalog
from opsloop.schemas.codec import Codec


def worker_env(settings: Settings, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSLOOP_")}
    env.update(OPSLOOP_BROKER=settings.broker, OPSLOOP_TOPIC_PREFIX=settings.topic_prefix,
               OPSLOOP_APP_ID=settings.app_id, OPSLOOP_DATA_DIR=str(settings.data_dir),
               OPSLOOP_PEAKS_STEP_S=str(settings.peaks_step_s), OPSLOOP_GRACE_S=str(settings.grace_s),
               OPSLOOP_WINDOW_S=str(settings.window_s), **{k: str(v) for k, v in extra.items()})
    return env


def start_worker(settings: Settings, agents: str, log: Path, **env) -> subprocess.Popen:
    """``opsloop worker --agents AGENTS`` in its own process group, stderr (its log) into ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "opsloop.ops.cli", "worker", "--agents", agents],
                                env=worker_env(settings, **env), stdout=subprocess.DEVNULL, stderr=out,
                                start_new_session=True)


def fresh_settings(bootstrap: str, data_dir: Path, **kw) -> Settings:
    settings = Settings(broker=bootstrap, topic_prefix="f.", app_id="opsloop-test", data_dir=data_dir,
                        idle_close_s=1.5, cache_dir=Settings.from_env().cache_dir, **kw)
    apply_catalog(settings, load_catalog().values())
    return settings


class OwnKafka:
    """A single-node broker for one test, which the test may stop and start."""

    def __init__(self, state_dir: Path, port: int):
        from opsloop.ops.kafka import LocalKafka

        self.kafka = LocalKafka(Settings.from_env().cache_dir, state_dir, port=port)
        self.bootstrap = self.kafka.bootstrap

    def __enter__(self) -> "OwnKafka":
        self.kafka.start()
        return self

    def __exit__(self, *exc) -> None:
        gc.collect()  # destroy leftover clients first, or they log reconnect failures
        self.kafka.stop()


def by_key(messages, record: str, key) -> dict:
    """Decoded records grouped by ``key(record)``: a key seen twice is a repetition, equal or not."""
    codec = Codec.default()
    groups: dict = defaultdict(list)
    for msg in messages:
        value = codec.decode_as(record, msg.value())
        groups[key(value)].append(value)
    return groups


def same(a, b) -> bool:
    """Equal records, floats to 1e-9 relative (a replay may add a window's values in another order)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def once_in_content(groups: dict) -> list:
    """Keys whose copies differ: outputs counted twice (a re-emitted copy must be the same)."""
    return [k for k, copies in groups.items() if any(not same(c, copies[0]) for c in copies)]


def wait_for(condition, timeout_s: float, what: str, alive=None, step_s: float = 0.5):
    """Poll ``condition`` until it returns a true value; ``alive`` (a process) must not exit meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None:
            assert alive.poll() is None, f"worker exited with {alive.returncode} while waiting for {what}"
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s"
        time.sleep(step_s)
