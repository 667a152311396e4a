"""The rollup scaled out: telemetry.raw is keyed by site, so rollup processes share its partitions in one group.
Two workers, one killed (SIGKILL) and one added mid-replay: every site's windows come out once in content with
every point counted once, and the peaks agent downstream of them forecasts every step once."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import time

import pytest

from opsloop.config.site import load_site
from opsloop.connectors.replay import replay_spec
from opsloop.streams import worker
from opsloop.streams.peaks import PeaksProcessor

from faults import by_key, once_in_content, paced_replay, start_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

DAYS = 14  # 672 half-hours per site
REPLAY_S = 20.0  # wall time the paced replays take
EXTRA_SITES = ("hall-b", "hall-c", "hall-d", "hall-e", "hall-f")  # beside the topology's own site


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_rollup_workers_killed_and_added_mid_replay_count_every_point_of_every_site_once(kafka_settings, read_topic,
                                                                                         tmp_path, delivery):
    """Proves: while six sites replay, worker A runs rollup + peaks; worker B joins (the partitions split, so
    each runs the windows of its sites only), A is SIGKILLed (B takes its partitions after the session timeout
    and folds their uncommitted points in again), then worker C joins. In the end, for every site, each
    half-hour window is there with all of its points, each re-emission the same in content; the rollup
    dead-lettered nothing; and the peaks agent forecast every planning step of its site once in content. With
    exactly-once delivery nothing is re-emitted at all: a reader that reads committed sees each window and each
    forecast once."""
    settings = kafka_settings.replace(window_s=1800, grace_s=21_600, peaks_step_s=1800)
    spec = replay_spec(load_site(settings.topology))
    sites = (spec.site, *EXTRA_SITES)
    settings = settings.replace(delivery=delivery)
    env = dict(OPSLOOP_BATCH_SIZE=200, OPSLOOP_IDLE_CLOSE_S=3600, OPSLOOP_UNKNOWN_NAMES="accept",
               OPSLOOP_DELIVERY=delivery)
    logs = {name: tmp_path / f"{name}.log" for name in "abc"}
    workers = {}
    try:
        workers["a"] = start_worker(settings, "rollup,peaks", logs["a"], **env)
        sources = [paced_replay(settings, dataclasses.replace(spec, site=site), DAYS, REPLAY_S)[0] for site in sites]
        time.sleep(REPLAY_S * 0.2)
        workers["b"] = start_worker(settings, "rollup,peaks", logs["b"], **env)
        wait_for(lambda: "rollup assigned partitions" in logs["b"].read_text(), 60, "worker B's assignment",
                 workers["b"])
        split = re.search(r"rollup assigned partitions \[([\d, ]*)\]", logs["b"].read_text()).group(1)
        assert len(split.split(",")) < 8  # the partitions are shared, not refused
        time.sleep(2.0)
        os.killpg(workers["a"].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        workers["a"].wait()
        time.sleep(REPLAY_S * 0.2)
        workers["c"] = start_worker(settings, "rollup,peaks", logs["c"], **env)
        # on a busy machine a worker takes seconds to start: C must have joined before the end is judged
        wait_for(lambda: "rollup assigned partitions" in logs["c"].read_text(), 60, "worker C's assignment",
                 workers["c"])
        for source in sources:
            source.join(120)
        # every window but the last few of each site (within the grace) closes on the watermark
        closing = len(sites) * (DAYS * 48 - settings.grace_s // settings.window_s - 1)
        wait_for(lambda: len({m.value() for m in read_topic(settings, "telemetry.site")}) >= closing, 180,
                 "the windows the watermark closes", workers["b"])
        for name in "bc":
            assert workers[name].poll() is None, logs[name].read_text()[-3000:]
        assert "rollup assigned partitions" in logs["c"].read_text()
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)

    if delivery == "exactly-once":
        # A's open transaction holds read-committed readers at its first offset until the broker aborts it. An
        # idle-ending agent waits for an open transaction it can see (test_idle_open_transaction), but in this
        # run the tail's peaks still stopped short once in a full suite (144 of 671 forecasts), so the tail
        # starts after the abort. The cause is open (ARCHITECTURE.md, Delivery).
        time.sleep(max(0.0, PeaksProcessor.transaction_timeout_ms / 1000 + 5 - (time.monotonic() - killed_at)))
    tail = worker.run(settings.replace(unknown_names="accept"), ["rollup", "peaks"], exit_when_idle=True)
    assert tail["rollup"]["dead_letters"] == 0

    windows = by_key(read_topic(settings, "telemetry.site"), "SiteSnapshot",
                     lambda s: (s["site"], s["window_start_ms"]))
    per_site = {site: sum(1 for s, _ in windows if s == site) for site in sites}
    assert per_site == {site: DAYS * 48 for site in sites}
    assert not once_in_content(windows)
    assert all(copies[0]["samples"] == len(spec.streams) for copies in windows.values())
    dead = by_key(read_topic(settings, "deadletter"), "DeadLetter", lambda d: (d["agent"], d["error_kind"]))
    assert {agent for agent, _ in dead} <= {"peaks"}  # peaks plans the topology's site only: the others are refused

    forecasts = by_key(read_topic(settings, "forecasts.peak"), "PeakForecast", lambda f: (f["site"], f["issued_ms"]))
    assert {site for site, _ in forecasts} == {spec.site} and len(forecasts) >= DAYS * 48 - 1
    assert not once_in_content(forecasts)
    if delivery == "exactly-once":
        assert all(len(copies) == 1 for copies in (*windows.values(), *forecasts.values()))
    print(f"windows re-emitted: {sum(len(c) - 1 for c in windows.values())}; "
          f"forecasts re-emitted: {sum(len(c) - 1 for c in forecasts.values())}")
