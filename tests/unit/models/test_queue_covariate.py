"""The Slurm queue as a forecast covariate: the pure function, the twin's job load, the loop passing it on."""

from __future__ import annotations

from dataclasses import replace

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site
from opsloop.models.battery import Battery
from opsloop.models.gpu_jobs import JobSchedule
from opsloop.models.peak_forecast import PeakForecaster
from opsloop.models.peak_loop import LoopConfig, SitePeakLoop
from opsloop.models.queue_covariate import NAME, QueueCovariate, expected_kw, expected_kw_steps
from opsloop.models.twin import SiteTwin

pytestmark = pytest.mark.unit

H = 3_600_000
SITE = load_site(DEMO_SITE)


def job(state, kw, start=None, expected=None, end=None):
    return {"entry": "job", "state": state, "est_kw": kw, "start_ms": start, "expected_start_ms": expected,
            "end_ms": end}


def closed(entries, ts_ms):
    return entries + [{"entry": "snapshot", "ts_ms": ts_ms, "state": "COMPLETE", "est_kw": 0.0}]


def test_running_jobs_count_until_their_end_and_pending_ones_from_their_expected_start():
    entries = [job("RUNNING", 100.0, start=-H, end=2 * H), job("PENDING", 40.0, expected=H, end=3 * H),
               job("PENDING", 999.0),  # no expected start: placed nowhere
               job("SUSPENDED", 500.0, start=-H),  # draws nothing
               {"entry": "reservation", "state": "ACTIVE", "est_kw": 800.0, "start_ms": 0, "end_ms": 9 * H}]
    assert expected_kw(entries, 0, H) == pytest.approx(100.0)
    assert expected_kw(entries, H, 2 * H) == pytest.approx(140.0)
    assert expected_kw(entries, 2 * H, 3 * H) == pytest.approx(40.0)
    assert expected_kw(entries, 3 * H, 4 * H) == 0.0
    assert expected_kw(entries, H // 2, H + H // 2) == pytest.approx(120.0)  # half a step of the pending job
    assert expected_kw_steps(entries, 0, H, 4) == pytest.approx([100.0, 140.0, 40.0, 0.0])


def test_a_job_that_ended_within_the_step_still_counts_as_the_queue_expected_it():
    cov = QueueCovariate(step_s=3600)
    cov.observe(closed([job("RUNNING", 100.0, start=0, end=H + H // 2)], 0))
    assert cov.future_xs(H, 2) == [{NAME: 50.0}, {NAME: 0.0}]
    cov.observe(closed([], 2 * H))  # the job has left the queue by the time the step closes
    assert cov.step_x(H, now_ms=2 * H) == {NAME: 50.0}
    assert cov.step_x(2 * H, now_ms=3 * H) == {NAME: 0.0}  # nothing remembered: what the snapshot says


def test_a_stale_or_missing_queue_gives_no_covariate():
    cov = QueueCovariate(step_s=900, max_age_s=3600)
    assert cov.future_xs(0, 4) is None and cov.step_x(0, 900_000) == {}
    cov.observe(closed([job("RUNNING", 10.0, start=0)], 0))
    assert cov.future_xs(H, 1) == [{NAME: 10.0}]
    assert cov.future_xs(H + 1, 1) is None  # older than an hour
    cov.observe(closed([], -H))  # an older snapshot than held is ignored
    assert cov.snapshot_ms == 0


def test_the_schedule_never_holds_more_gpus_than_a_partition_has_and_is_the_same_however_asked():
    a = JobSchedule.for_site(SITE, seed=3, epoch_ms=0)
    b = JobSchedule.for_site(SITE, seed=3, epoch_ms=0)
    late = b.running_kw(4 * 86_400_000)  # asked out of order
    assert a.jobs(5 * 86_400_000) == b.jobs(5 * 86_400_000) and a.running_kw(4 * 86_400_000) == late
    assert JobSchedule.for_site(SITE, seed=4, epoch_ms=0).jobs(86_400_000) != a.jobs(86_400_000)
    capacity = {p.name: p.gpus * p.kw_per_gpu for p in a.partitions}
    for ts in range(0, 5 * 86_400_000, 900_000):
        for partition, kw in a.running_kw(ts).items():
            assert kw <= capacity[partition] + 1e-9


def test_on_the_twin_jobs_start_when_the_queue_says_and_add_their_power_to_the_site():
    twin = SiteTwin(SITE, [(0, 30_000.0), (48 * H, 30_000.0)], jobs=JobSchedule.for_site(SITE, seed=1, epoch_ms=0))
    bare = SiteTwin(SITE, [(0, 30_000.0), (48 * H, 30_000.0)])
    now = 30 * H
    pending = [r for r in twin.queue_records(now) if r["entry"] == "job" and r["state"] == "PENDING"]
    assert pending and all(r["expected_start_ms"] > now for r in pending)
    first = min(pending, key=lambda r: r["expected_start_ms"])
    at_start = {r["id"]: r["state"] for r in twin.queue_records(first["expected_start_ms"]) if r["entry"] == "job"}
    assert at_start[first["id"]] == "RUNNING"
    # the queue's running jobs are exactly the power the twin adds, on the pods, the PDUs, IT and cooling
    ts = first["expected_start_ms"]
    running = sum(r["est_kw"] for r in twin.queue_records(ts) if r["entry"] == "job" and r["state"] == "RUNNING")
    with_jobs, without = twin.measure(ts), bare.measure(ts)
    assert running > 0
    assert with_jobs.it_kw - without.it_kw == pytest.approx(running)
    assert sum(with_jobs.pod_kw.values()) - sum(without.pod_kw.values()) == pytest.approx(running)
    assert sum(with_jobs.pdu_kw.values()) - sum(without.pdu_kw.values()) == pytest.approx(running)
    assert with_jobs.cooling_kw - without.cooling_kw == pytest.approx(running / twin.cop(with_jobs.outside_c))
    assert twin.queue_records(ts)[-1]["entry"] == "snapshot" and bare.queue_records(ts) == []


class Recording(PeakForecaster):
    """The loop's forecaster, recording what it is given."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.xs_given, self.x_given = [], []

    def learn_one(self, y, x=None):
        self.x_given.append(dict(x or {}))
        super().learn_one(y, x)

    def forecast_points(self, horizon, xs=None):
        self.xs_given.append(xs)
        return super().forecast_points(horizon, xs)


def loop_with(forecaster):
    config = LoopConfig(site="s", ess_id="e", battery=Battery(capacity_kwh=1000, pcs_charge_kw=500,
                                                               pcs_discharge_kw=500), step_s=3600)
    return SitePeakLoop(config, forecaster)


def test_the_loop_passes_the_queue_to_its_forecaster_and_nothing_without_one():
    blind = Recording(step_s=3600, season_steps=24)
    loop = loop_with(blind)
    loop.on_step(0, 1000.0, 1000.0, 80.0, None)
    assert blind.x_given == [{"ts_ms": 0}] and blind.xs_given == [None] and blind._cov_names == ()

    seeing = Recording(step_s=3600, season_steps=24)
    loop = loop_with(seeing)
    loop.on_queue(closed([job("RUNNING", 100.0, start=0, end=3 * H), job("PENDING", 50.0, expected=2 * H)], H))
    loop.on_step(0, 1000.0, 1000.0, 80.0, None)
    assert seeing._cov_names == (NAME,)
    assert seeing.x_given == [{"ts_ms": 0, NAME: 100.0}]  # what the snapshot says of the step just closed
    xs = seeing.xs_given[0]
    assert len(xs) == 24 and xs[:3] == [{NAME: 100.0}, {NAME: 150.0}, {NAME: 50.0}]
    loop.on_step(H, 1000.0, 1000.0, 80.0, None)
    assert seeing.x_given[-1] == {"ts_ms": H, NAME: 100.0}  # what the queue expected for it an hour before


def test_a_loop_told_not_to_use_the_queue_ignores_it():
    forecaster = Recording(step_s=3600, season_steps=24)
    loop = loop_with(forecaster)
    loop.reconfigure(replace(loop.config, queue_covariate=False))
    loop.on_queue(closed([job("RUNNING", 100.0, start=0)], H))
    loop.on_step(0, 1000.0, 1000.0, 80.0, None)
    assert loop.queue is None and forecaster.x_given == [{"ts_ms": 0}]
