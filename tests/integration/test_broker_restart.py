"""A broker restart while a replay source, the rollup and the peaks agent run: nothing exits, nothing is lost
or counted twice, and the outage is logged in a few lines, not a flood."""

from __future__ import annotations

import time

import pytest

from opsloop.config.site import load_site
from opsloop.connectors.replay import replay_spec
from opsloop.streams import worker

from faults import OwnKafka, every_window_and_forecast_once, fresh_settings, paced_replay, start_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

DAYS = 21  # 1,008 half-hours, 17,136 points
REPLAY_S = 25.0  # wall time the paced replay takes
OUTAGE_S = 20.0


def test_broker_restart_mid_replay_no_exit_no_loss_no_double_count(tmp_path, free_port_pair, read_topic):
    """Proves: with the only broker stopped for 20 s mid-replay (longer than the group session, so the group
    forgets the worker), the replay source and the worker (rollup + peaks, one process) wait it out and go on
    without a restart; every half-hour window comes out once in content with every point counted exactly
    once (none dead-lettered as late), every peak forecast once in content, none missing; and the worker logs
    the outage in a handful of lines."""
    with OwnKafka(tmp_path / "kafka", free_port_pair) as own:
        # window_s: the bundled data is half-hourly. A grace of 6 h of event time (~0.3 s of wall time at this
        # pace) keeps the source's own skew between partitions out of this test: lateness is not what it checks.
        settings = fresh_settings(own.bootstrap, tmp_path, peaks_step_s=1800, window_s=1800, grace_s=21_600)
        spec = replay_spec(load_site(settings.topology))
        log = tmp_path / "worker.log"
        proc = start_worker(settings, "rollup,peaks", log, OPSLOOP_IDLE_CLOSE_S=3600, OPSLOOP_BATCH_SIZE=500)
        try:
            source, replayed = paced_replay(settings, spec, DAYS, REPLAY_S)
            wait_for(lambda: read_topic(settings, "telemetry.site"), 60, "first snapshot", proc)
            time.sleep(2.0)
            lines_before = log.read_text().count("\n")
            own.kafka.stop()
            stopped = time.monotonic()
            while time.monotonic() - stopped < OUTAGE_S:
                assert proc.poll() is None, f"worker exited during the outage:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
            own.kafka.start()
            source.join(120)
            assert not source.is_alive() and replayed["stats"].points == DAYS * 48 * len(spec.streams)
            # every window but the last few (within the grace) closes on the watermark; those wait for the idle
            # flush below
            closing = DAYS * 48 - settings.grace_s // settings.window_s - 1
            wait_for(lambda: len({m.value() for m in read_topic(settings, "telemetry.site")}) >= closing, 120,
                     "the windows the watermark closes, after the restart", proc)
            outage_lines = log.read_text().count("\n") - lines_before
        finally:
            proc.terminate()
            proc.wait(30)
        assert proc.returncode == 0, log.read_text()[-3000:]  # stopped by us, cleanly, not by the fault

        tail = worker.run(settings, ["rollup", "peaks"], exit_when_idle=True)
        assert tail["rollup"]["dead_letters"] == 0

        windows, forecasts = every_window_and_forecast_once(settings, read_topic, DAYS, len(spec.streams))
        text = log.read_text()
        print(f"worker log lines during the outage: {outage_lines}; "
              f"windows re-emitted: {sum(len(c) - 1 for c in windows.values())}; "
              f"forecasts re-emitted: {sum(len(c) - 1 for c in forecasts.values())}")
        assert outage_lines <= 30, text[-4000:]
        assert "broker unavailable" in text
