"""The live twin with a job schedule publishes its Slurm queue on slurm.queue through real Kafka, as the slurm-queue
source publishes a real one: whole snapshots the peaks loop reads as its forecast covariate."""

from __future__ import annotations

import threading
import time

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.clock import Clock
from opsloop.config.site import load_site
from opsloop.models.peak_loop import LoopConfig, SitePeakLoop
from opsloop.models.slurm_queue import LatestQueue
from opsloop.ops import twin as twin_process
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.integration

SITE = load_site(DEMO_SITE)
START_MS = 960_163_200_000  # the bundled curve's first day
SPEED = 3600.0  # a twin hour a wall second


def test_the_live_twin_publishes_its_job_queue_and_the_peaks_loop_reads_it(kafka_settings, read_topic):
    clock = Clock.starting(START_MS / 1000, SPEED)
    settings = kafka_settings.replace(clock_epoch_s=clock.epoch_s, clock_anchor_s=clock.anchor_s,
                                      clock_speed=clock.speed)
    twin = twin_process.build(settings, SITE, clock=settings.clock(), start_ms=START_MS, sample_s=300.0, poll_s=0.1,
                              pcs=False, publish=False, jobs_per_day=40, jobs_seed=5, queue_every_s=900.0)
    stop = threading.Event()
    thread = threading.Thread(target=twin.run.run, args=(stop,), name="twin", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while twin.poller.queue_snapshots < 12 and time.monotonic() < deadline:  # three twin hours
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
        twin.close()
    sent = twin.poller.queue_snapshots
    assert sent >= 12, "the twin published too few queue snapshots"

    codec = Codec.default()
    latest, whole = LatestQueue(), 0
    for message in read_topic(settings, "slurm.queue"):
        whole += latest.add(codec.decode_as("SlurmQueue", message.value()))
    assert whole == sent, "a queue snapshot was lost or cut short on its way through Kafka"
    last = latest.of(SITE.id)
    # the last snapshot is the twin's own queue at that time, and its running jobs are what the twin draws
    at = last[-1]["ts_ms"]
    assert last == twin.poller.twin.queue_records(at, source=twin_process.TWIN_SOURCE)
    running = sum(r["est_kw"] for r in last if r["entry"] == "job" and r["state"] == "RUNNING")
    assert running == pytest.approx(sum(twin.poller.twin.jobs.running_kw(at).values()), abs=0.5)

    loop = SitePeakLoop(LoopConfig.from_site(SITE))
    loop.on_queue(last)
    assert loop.queue is not None, "the peaks loop did not take the snapshot"
    expected = loop.queue.step_x(at, at + 900_000)
    assert expected and sum(expected.values()) > 0, "the covariate does not see the twin's jobs"
