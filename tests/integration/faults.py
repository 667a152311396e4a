"""Helpers of the fault tests (``faults`` marker): a broker (or a cluster) of the test's own, worker processes,
counts by key.

The fault tests stop, restart or kill real processes, so each that touches the broker itself gets its
own single-node broker (``OwnKafka``) or cluster (``OwnCluster``), never the session's.
"""

from __future__ import annotations

import gc
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from opsloop.config.catalog import load_catalog
from opsloop.config.settings import Settings
from opsloop.connectors.kafka import admin, apply_catalog, consumer
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


def sigkill_when(proc: subprocess.Popen, ready, what: str, log: Path, timeout_s: float = 60.0,
                 poll_s: float = 0.05) -> None:
    """Wait until ``ready()`` holds, then SIGKILL ``proc``'s process group (a worker ``start_worker`` started); fail,
    with its log, if it exits first or ``what`` takes longer than ``timeout_s``."""
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
            time.sleep(poll_s)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def fresh_settings(bootstrap: str, data_dir: Path, replication: int = 1, min_insync: int = 1, **kw) -> Settings:
    """Settings on ``bootstrap`` with the catalog's topics created, ``replication`` times replicated (the catalog's
    own replication when 1) with ``min.insync.replicas`` = ``min_insync``."""
    settings = Settings(broker=bootstrap, topic_prefix="f.", app_id="opsloop-test", data_dir=data_dir,
                        idle_close_s=1.5, cache_dir=Settings.from_env().cache_dir, **kw)
    if replication == 1:
        apply_catalog(settings, load_catalog().values())
        return settings
    from confluent_kafka.admin import NewTopic

    client = admin(settings)
    new = [NewTopic(settings.topic(s.name), s.partitions, replication,
                    config={**s.configs(), "min.insync.replicas": str(min_insync)}) for s in load_catalog().values()]
    for future in client.create_topics(new).values():
        future.result(30)
    return settings


def leaders(settings: Settings, topics) -> dict:
    """(topic, partition) → (leader, in-sync replicas) of the catalog ``topics``, as the cluster's metadata says."""
    meta = admin(settings).list_topics(timeout=10).topics
    return {(name, p): (part.leader, tuple(sorted(part.isrs)))
            for name in topics for p, part in meta[settings.topic(name)].partitions.items()}


class OwnCluster:
    """A local cluster of ``size`` brokers for one test (``LocalKafkaCluster``), which the test may stop and start
    broker by broker (never node 1: it is the controller quorum)."""

    ATTEMPTS = 3  # free ports are picked before the JVMs bind them: on a shared host another process may take one

    def __init__(self, state_dir: Path, size: int = 3):
        self.state_dir, self.size = state_dir, size
        self._new_cluster(0)

    def _new_cluster(self, attempt: int) -> None:
        from opsloop.ops.kafka import LocalKafkaCluster

        self.cluster = LocalKafkaCluster(Settings.from_env().cache_dir, self.state_dir / f"attempt-{attempt}",
                                         size=self.size)
        self.bootstrap = self.cluster.bootstrap

    def __enter__(self) -> "OwnCluster":
        from opsloop.ops.kafka import KafkaSetupError

        for attempt in range(1, self.ATTEMPTS):
            try:
                self.cluster.start()
                return self
            except KafkaSetupError as error:
                if "Address already in use" not in str(error):
                    raise
            self._new_cluster(attempt)  # fresh ports and storage; nothing was written to the lost cluster
        self.cluster.start()
        return self

    def __exit__(self, *exc) -> None:
        gc.collect()
        self.cluster.stop()


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


def every_window_and_forecast_once(settings: Settings, read_topic, days: int, streams: int) -> tuple[dict, dict]:
    """After a fault: every half-hour window of ``days`` is there with all ``streams`` points, each re-emission
    the same in content; every planning step's forecast too (the last may stay open); nothing dead-lettered.
    Returns the windows and forecasts grouped by key, for the caller's report."""
    windows = by_key(read_topic(settings, "telemetry.site"), "SiteSnapshot",
                     lambda s: (s["site"], s["window_start_ms"]))
    differing = {k: [(c["samples"], c["grid_kw"]) for c in windows[k]] for k in once_in_content(windows)}
    dead = by_key(read_topic(settings, "deadletter"), "DeadLetter", lambda d: (d["error_kind"], d["agent"]))
    assert len(windows) == days * 48 and not differing, (differing, {k: len(v) for k, v in dead.items()})
    assert all(copies[0]["samples"] == streams for copies in windows.values())
    forecasts = by_key(read_topic(settings, "forecasts.peak"), "PeakForecast", lambda f: (f["site"], f["issued_ms"]))
    ends = {copies[0]["window_end_ms"] for copies in windows.values()}
    # one forecast per planning step, issued at a window's end; the last step may stay open
    assert {issued for _, issued in forecasts} <= ends and len(forecasts) >= days * 48 - 1
    assert not once_in_content(forecasts)
    assert not read_topic(settings, "deadletter")
    return windows, forecasts


def paced_replay(settings: Settings, spec, days: int, wall_s: float) -> tuple[threading.Thread, dict]:
    """Start the bundled curve's replay (from 2000-06-05, ``days`` of it, paced to take ``wall_s``) in a thread;
    returns the thread and the dict that holds its stats (``"stats"``) once it ends."""
    from opsloop.connectors.replay import replay
    from opsloop.ops.cli import BUNDLED_DATA

    replayed: dict = {}
    source = threading.Thread(target=lambda: replayed.update(stats=replay(
        settings, spec, BUNDLED_DATA, start="2000-06-05T00:00:00", days=days, speedup=days * 86_400 / wall_s)))
    source.start()
    return source, replayed


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


def lag(settings, agent: str, topic: str) -> int | None:
    """Messages of ``topic`` the agent's group has not committed yet; ``None`` when the broker does not say in
    time (its group coordinator busy with a rebalance on a loaded machine): not caught up, ask again."""
    cons = consumer(settings, settings.group(agent))
    try:
        physical = settings.topic(topic)
        parts = [TopicPartition(physical, p) for p in cons.list_topics(physical, timeout=10).topics[physical].partitions]
        total = 0
        for tp in cons.committed(parts, timeout=10):
            low, high = cons.get_watermark_offsets(tp, timeout=10)
            total += high - (tp.offset if tp.offset >= 0 else low)
        return total
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError._TIMED_OUT:
            raise
        return None
    finally:
        cons.close()


def dying_after(target: tuple[str, str, str] | None) -> str:
    """Python source that makes ``module.Class.method`` (``target``) SIGKILL its process right after it returns:
    a crash between that step and the next (none for ``None``)."""
    if target is None:
        return ""
    module, cls, method = target
    return textwrap.dedent(f"""
        import importlib, os, signal
        owner = getattr(importlib.import_module({module!r}), {cls!r})
        original = getattr(owner, {method!r})
        def dying(*args, **kwargs):
            out = original(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
            return out
        setattr(owner, {method!r}, dying)
    """)
