"""The twin process's poller without a broker: samples on the twin's clock, the PCS read back, a silent PCS,
alarms as their time comes, and the Prometheus page."""

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site
from opsloop.connectors.pcs import PcsClient
from opsloop.ops import pcs_sim
from opsloop.models.twin import SiteTwin
from opsloop.ops.twin import Meters, TwinPoller, storm_faults

pytestmark = pytest.mark.unit  # the PCS is the real simulator, on a loopback port of its own

SITE = load_site(DEMO_SITE)
H = 3_600_000


def poller(pcs=None, alarms=(), max_samples=10_000):
    twin = SiteTwin(SITE, [(0, 30_000.0), (48 * H, 30_000.0)])
    return TwinPoller(twin, 60.0, 0, pcs=pcs, alarms=list(alarms), meters=Meters("demo"), max_samples=max_samples)


def grid(readings):
    return [p["value"] for p in readings.points if p["metric"] == "grid_kw"]


@pytest.fixture
def pcs():
    """The PCS simulator on a free port, its clock in the test's hands, and a client to it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    now = [0.0]
    sim = pcs_sim.from_site(SITE, port, clock=lambda: now[0], soc_pct=60.0).start()
    client = PcsClient("127.0.0.1", port, timeout_s=0.5)
    try:
        yield sim, client
    finally:
        client.close()
        sim.stop()


def test_each_poll_plays_every_sample_due_with_the_ess_power_read_from_the_pcs(pcs):
    sim, client = pcs
    client.write_setpoint(1000.0, 600)
    p = poller(client)
    first = p.poll(5 * 60_000)
    assert [pt["ts_ms"] for pt in first.points if pt["metric"] == "grid_kw"] == [i * 60_000 for i in range(6)]
    facility = [pt["value"] for pt in first.points if pt["metric"] == "facility_kw"]
    assert grid(first) == pytest.approx([f - 1000.0 for f in facility])
    assert [pt["value"] for pt in first.points if pt["metric"] == "ess_soc_pct"][0] == pytest.approx(60.0)
    assert p.poll(5 * 60_000 + 30_000).points == []  # nothing due yet


def test_a_grid_limit_is_held_at_each_samples_own_load_whatever_the_pcs_read_at_the_poll(pcs):
    """A PCS follows its meter within a second: every sample of a poll holds the limit at its own load, though the
    simulator's power was computed from an older meter reading (here none: it reads 0 kW of site load)."""
    sim, client = pcs
    twin = SiteTwin(SITE, [(0, 20_000.0), (2 * H, 40_000.0)])  # rising: each minute's load differs
    p = TwinPoller(twin, 60.0, 0, pcs=client, meters=Meters("demo"))
    facility0 = twin.measure(0).facility_kw
    limit = facility0 + 100.0
    client.write_grid_limit(limit, 3000.0, 0.0, limit, 600)
    readings = p.poll(10 * 60_000)
    facility = [pt["value"] for pt in readings.points if pt["metric"] == "facility_kw"]
    ess = [pt["value"] for pt in readings.points if pt["metric"] == "ess_kw"]
    assert sim.battery.power_kw == 0.0 and facility[-1] > facility[0] + 300
    assert ess == pytest.approx([min(3000.0, max(0.0, f - limit)) for f in facility], abs=1.0)  # register steps
    assert max(grid(readings)) == pytest.approx(limit, abs=1.0) and ess[0] == 0.0 and ess[-1] > 200


def test_a_silent_pcs_leaves_the_battery_doing_what_it_last_did(pcs):
    sim, client = pcs
    client.write_setpoint(2000.0, 600)
    p = poller(client)
    p.poll(0)
    sim.stop()
    readings = p.poll(60_000)
    assert p.pcs_errors == 1
    assert [pt["value"] for pt in readings.points if pt["metric"] == "ess_kw"] == [2000.0]


def test_alarms_go_out_when_the_twin_reaches_their_time():
    alarms = [{"ts_ms": 90_000, "code": "B"}, {"ts_ms": 30_000, "code": "A"}]
    p = poller(alarms=alarms)
    assert [a["code"] for a in p.poll(60_000).alarms] == ["A"]
    assert [a["code"] for a in p.poll(120_000).alarms] == ["B"]


def test_without_publishing_the_points_are_only_shown_and_the_alarms_still_go_out():
    shown = []
    twin = SiteTwin(SITE, [(0, 30_000.0), (48 * H, 30_000.0)])
    p = TwinPoller(twin, 60.0, 0, alarms=[{"ts_ms": 30_000, "code": "A"}], meters=Meters("demo"),
                   outputs=[shown.append], publish=False)
    readings = p.poll(120_000)
    assert readings.points == [] and p.points == 0 and p.samples == 3
    assert [a["code"] for a in readings.alarms] == ["A"]
    assert shown[-1].ts_ms == 120_000 and 'opsloop_twin_grid_kw{site="demo",device="grid-meter-1"}' in p.meters.text()


def test_a_poll_far_behind_the_clock_skips_rather_than_floods():
    p = poller(max_samples=10)
    readings = p.poll(1000 * 60_000)
    assert len(grid(readings)) == 10


def test_storm_failures_become_faults_that_move_telemetry_and_alarms():
    faults, alarms = storm_faults(SITE, 0, 6 * 3600, seed=3, failures=4, background=0)
    assert faults and alarms
    assert {f.kind for f in faults} <= {"power", "cooling"}
    assert all(a["site"] == "demo" for a in alarms)


def test_the_prometheus_page_has_one_gauge_per_metric_and_the_latest_values():
    p = poller()
    p.poll(60_000)
    text = p.meters.text()
    assert text.count("# TYPE opsloop_twin_grid_kw gauge") == 1
    assert 'opsloop_twin_it_kw{site="demo",device="pdu-a1"}' in text
    assert text.endswith("\n")


def test_a_twin_with_a_job_schedule_publishes_its_queue_every_queue_interval_and_the_loop_reads_it():
    from opsloop.models.gpu_jobs import JobSchedule
    from opsloop.models.peak_loop import LoopConfig, SitePeakLoop
    from opsloop.schemas.codec import Codec

    twin = SiteTwin(SITE, [(0, 30_000.0), (48 * H, 30_000.0)],
                    jobs=JobSchedule.for_site(SITE, seed=3, epoch_ms=0, jobs_per_day=40))
    p = TwinPoller(twin, 60.0, 0, meters=Meters("demo"), queue_every_s=900.0)
    snapshots = [p.poll(ts).records for ts in range(0, 6 * H + 1, 300_000)]
    published = [records for records in snapshots if records]
    assert len(published) == 6 * 4 + 1 and p.queue_snapshots == 25  # at 0, then every 15 twin minutes
    codec = Codec.default()
    for records in published:
        assert {topic for topic, _ in records} == {"slurm.queue"} and records[-1][1]["entry"] == "snapshot"
        for _, record in records:
            codec.encode("SlurmQueue", record)  # every record is a valid SlurmQueue
    jobs = [r for _, r in published[-1] if r["entry"] == "job"]
    assert jobs and {r["state"] for r in jobs} <= {"PENDING", "RUNNING"}
    loop = SitePeakLoop(LoopConfig.from_site(SITE))
    loop.on_queue([r for _, r in published[-1]])
    assert loop.queue is not None and any(v > 0 for v in loop.queue.step_x(6 * H, 6 * H + 900_000).values())


def test_a_twin_without_a_job_schedule_publishes_no_queue():
    p = poller()
    assert all(not p.poll(ts).records for ts in range(0, 2 * H, 300_000)) and p.queue_snapshots == 0
