"""The peaks processor on the real broker: replayed demo site -> rollup -> peaks, equal to the planner run offline."""

from __future__ import annotations

import threading

import pytest

from opsloop.connectors.kafka import producer, wait_delivered
from opsloop.config.site import load_site
from opsloop.connectors.replay import replay, replay_spec
from opsloop.models.peak_loop import LoopConfig, SitePeakLoop
from opsloop.models.peak_planner import REASON_CODES
from opsloop.ops.cli import BUNDLED_DATA as TAYLOR
from opsloop.schemas.codec import Codec
from opsloop.streams import worker
from opsloop.streams.peaks import PeaksProcessor

pytestmark = pytest.mark.integration

SAFETY_NET_S = 180.0  # only reached when the agent never gets as far as expected: the test then fails
DAYS = 9
FOREIGN = {"site": "elsewhere", "window_start_ms": 960_163_200_000, "window_end_ms": 960_165_000_000,
           "grid_kw": 1000.0, "it_kw": 800.0, "facility_kw": 1000.0, "ess_soc_pct": 80.0, "ess_soh_pct": 97.0,
           "ess_kw": 0.0, "gpu_kw": None, "pue": 1.2, "price_per_mwh": None, "samples": 1, "devices": 1}


def run_peaks_until(settings, site, decisions: list, until: int) -> dict:
    """Run a peaks processor (a new one each time: a restarted worker) until ``until`` decisions in total."""
    stop = threading.Event()
    timer = threading.Timer(SAFETY_NET_S, stop.set)

    def observe(batch, messages) -> None:
        decisions.extend(batch)
        if len(decisions) >= until:
            stop.set()

    timer.start()
    try:
        stats = PeaksProcessor(settings, site, observer=observe).run(stop)
    finally:
        timer.cancel()
    assert len(decisions) >= until, f"{len(decisions)} of {until} decisions when the {SAFETY_NET_S:.0f} s safety net fired"
    return stats


def offline(settings, site, snapshots: list[dict]) -> list[dict]:
    loop = SitePeakLoop(LoopConfig.from_site(site, step_s=settings.peaks_step_s))
    return [a for snap in snapshots for d in loop.on_snapshot(snap) for a in d.actions]


def test_agent_proposes_what_the_planner_proposes_offline(kafka_settings, read_topic):
    codec = Codec.default()
    settings = kafka_settings.replace(peaks_step_s=1800)  # the bundled data is half-hourly
    site = load_site(settings.topology)
    replay(settings, replay_spec(site), TAYLOR, start="2000-06-05T00:00:00", days=DAYS)
    assert worker.run(settings, ["rollup"], exit_when_idle=True)["rollup"]["snapshots"] == DAYS * 48
    decisions: list = []
    run_peaks_until(settings, site, decisions, DAYS * 48 - 1)  # the last step stays open: no later snapshot closes it

    snapshots = sorted((codec.decode_as("SiteSnapshot", m.value()) for m in read_topic(settings, "telemetry.site")),
                       key=lambda s: s["window_start_ms"])
    expected = offline(settings, site, snapshots)
    published = [codec.decode_as("Action", m.value()) for m in read_topic(settings, "actions.proposed")]
    assert sorted(published, key=lambda a: a["action_id"]) == sorted(expected, key=lambda a: a["action_id"])
    # From a cold start the forecast stays within the loads seen, so the first day's peak is billed and the
    # plan charges and idles under it; the discharge path runs live in test_twin_loop and test_twin_demo.
    assert {a["kind"] for a in expected} >= {"pcs_charge", "pcs_idle"}
    assert all(a["reason_code"] in REASON_CODES for a in published)  # the planner's code, on the wire


def test_agent_proposes_what_the_planner_proposes_offline_and_survives_a_restart(kafka_settings, read_topic):
    codec = Codec.default()
    settings = kafka_settings.replace(peaks_step_s=1800)  # the bundled data is half-hourly
    demo = load_site(settings.topology)
    spec = replay_spec(demo)
    decisions: list = []

    # Part one: 4 days replayed, rolled up, and planned; then the worker stops.
    replay(settings, spec, TAYLOR, start="2000-06-05T00:00:00", days=4)
    assert worker.run(settings, ["rollup"], exit_when_idle=True)["rollup"]["snapshots"] == 4 * 48
    prod = producer(settings)  # a broken and a foreign snapshot between the parts: dead-lettered, the agent goes on
    prod.produce(settings.topic("telemetry.site"), key=b"demo", value=b"\xc3\x01 broken")
    prod.produce(settings.topic("telemetry.site"), key=b"elsewhere", value=codec.encode("SiteSnapshot", FOREIGN))
    wait_delivered(prod)
    run_peaks_until(settings, demo, decisions, 4 * 48 - 1)  # the last step stays open: no later snapshot closes it
    first_run = len(decisions)

    # Part two: the rest; a restarted worker gets the open step and the forecaster back from its changelog,
    # and is stopped again mid-way (a third worker finishes).
    replay(settings, spec, TAYLOR, start="2000-06-09T00:00:00", days=DAYS - 4)
    assert worker.run(settings, ["rollup"], exit_when_idle=True)["rollup"]["snapshots"] == (DAYS - 4) * 48
    steps = DAYS * 48 - 1
    run_peaks_until(settings.replace(batch_size=24), demo, decisions, 6 * 48)  # small batches: it stops near there
    assert len(decisions) < steps, "the second worker was meant to stop before the end"
    run_peaks_until(settings, demo, decisions, steps)
    assert first_run == 4 * 48 - 1 and len(decisions) == steps

    site = [codec.decode_as("SiteSnapshot", m.value()) for m in read_topic(settings, "telemetry.site")
            if m.value() != b"\xc3\x01 broken"]
    snapshots = sorted((s for s in site if s["site"] != FOREIGN["site"]), key=lambda s: s["window_start_ms"])
    assert len(snapshots) == DAYS * 48
    expected = offline(settings, demo, snapshots)

    published = [codec.decode_as("Action", m.value()) for m in read_topic(settings, "actions.proposed")]
    by_id = {a["action_id"]: a for a in published}
    assert sorted(by_id) == sorted(a["action_id"] for a in expected)  # re-sent after the restart at most: same ids
    assert all(by_id[a["action_id"]] == a for a in expected)
    assert {a["kind"] for a in expected} >= {"pcs_charge", "pcs_idle"}  # as above
    forecasts = {codec.decode_as("PeakForecast", m.value())["issued_ms"] for m in read_topic(settings, "forecasts.peak")}
    assert len(forecasts) == steps
    dead = sorted((codec.decode_as("DeadLetter", m.value()) for m in read_topic(settings, "deadletter")),
                  key=lambda d: d["error_kind"])  # two partitions: no order between them
    assert [(d["agent"], d["error_kind"]) for d in dead] == [("peaks", "decode"), ("peaks", "invalid")]
    assert "not described by the topology" in dead[1]["error"]


def test_one_worker_running_rollup_and_peaks_ends_only_after_peaks_read_the_last_windows(kafka_settings, read_topic):
    """Proves: in one idle-ending worker, the peaks agent does not leave while the rollup's idle flush (the
    windows the watermark never closed) is still on its way to it: every window but the open last step gets
    its forecast in the same run."""
    settings = kafka_settings.replace(peaks_step_s=1800, grace_s=21_600)  # 12 windows wait for the idle flush
    site = load_site(settings.topology)
    replay(settings, replay_spec(site), TAYLOR, start="2000-06-05T00:00:00", days=2)
    stats = worker.run(settings, ["rollup", "peaks"], exit_when_idle=True)
    assert stats["rollup"]["snapshots"] == 2 * 48
    assert len(read_topic(settings, "forecasts.peak")) == 2 * 48 - 1, stats
