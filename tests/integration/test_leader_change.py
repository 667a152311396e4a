"""Partition leaders move while a replay source, the rollup and the peaks agent run on a three-broker cluster:
nothing exits, nothing is lost or counted twice."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import ElectionType, TopicPartition

from opsloop.config.site import load_site
from opsloop.connectors.kafka import admin
from opsloop.connectors.replay import replay_spec
from opsloop.streams import worker

from faults import (OwnCluster, every_window_and_forecast_once, fresh_settings, leaders, paced_replay, start_worker,
                    wait_for)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

DAYS = 14  # 672 half-hours, 11,424 points
REPLAY_S = 40.0  # wall time the paced replay takes
TOPICS = ("telemetry.raw", "telemetry.site")  # the rollup's input and output


def test_leader_change_mid_replay_no_exit_no_loss_no_double_count(tmp_path, read_topic):
    """Proves: on a cluster of three brokers (topics replicated 3 times, min.insync.replicas 2), leadership of the
    rollup's input and output partitions moves twice mid-replay while no agent or source is restarted: once
    away from a broker that is stopped (controlled shutdown), and once back to it by a preferred-leader election
    after it rejoined the in-sync replicas. The replay source and the worker (rollup + peaks, one process) never
    exit; every half-hour window comes out once in content with every point counted exactly once (none
    dead-lettered), every peak forecast once in content, none missing; nothing is dead-lettered; the
    peaks agent's changelog is replicated like its topics, so its state outlives a broker's stop; and the worker
    logs the whole run in a few lines."""
    with OwnCluster(tmp_path / "cluster") as own:
        settings = fresh_settings(own.bootstrap, tmp_path, replication=3, min_insync=2, peaks_step_s=1800,
                                  window_s=1800, grace_s=21_600)  # grace: as in the broker-restart test
        spec = replay_spec(load_site(settings.topology))
        log = tmp_path / "worker.log"
        proc = start_worker(settings, "rollup,peaks", log, OPSLOOP_IDLE_CLOSE_S=3600, OPSLOOP_BATCH_SIZE=500)
        try:
            source, replayed = paced_replay(settings, spec, DAYS, REPLAY_S)
            wait_for(lambda: read_topic(settings, "telemetry.site"), 60, "first snapshot", proc)
            before = leaders(settings, TOPICS)
            led = {b: sum(1 for leader, _ in before.values() if leader == b) for b in (2, 3)}
            victim = max(led, key=led.get)  # a broker but the controller quorum, leading the most partitions
            assert led[victim] > 0, before

            # 1: the victim stops; its partitions get new leaders among the other in-sync replicas
            own.cluster.node(victim).stop()
            moved = wait_for(lambda: (now := leaders(settings, TOPICS)) and all(
                leader not in (victim, -1) for leader, _ in now.values()) and now, 30,
                "new leaders for the stopped broker's partitions", proc)
            assert any(before[tp][0] == victim and moved[tp][0] != victim for tp in before)
            time.sleep(3.0)  # the worker and the source go on against the new leaders
            assert proc.poll() is None and source.is_alive(), "the replay ended before the first leader change"

            # 2: it comes back, catches up, and a preferred-leader election gives its partitions back to it
            own.cluster.node(victim).start()
            wait_for(lambda: all(victim in isr for _, isr in leaders(settings, TOPICS).values()), 60,
                     "the restarted broker back in every in-sync replica set", proc)
            client = admin(settings)
            partitions = [TopicPartition(settings.topic(name), p) for name, p in before]
            client.elect_leaders(ElectionType.PREFERRED, partitions).result(30)  # per partition: moved or not needed
            wait_for(lambda: {tp: lead for tp, (lead, _) in leaders(settings, TOPICS).items()}
                     == {tp: lead for tp, (lead, _) in before.items()}, 30, "the preferred leaders back", proc)
            private = f"{settings.app_id}.{settings.topic_prefix}"
            changelogs = [t for name, t in client.list_topics(timeout=10).topics.items()
                          if name.startswith(private) and name.endswith("-changelog")]
            assert changelogs and all(len(p.replicas) == 3 for t in changelogs for p in t.partitions.values())
            print(f"broker {victim} led {led[victim]} of {len(before)} partitions; the election ended "
                  f"{'while' if source.is_alive() else 'after'} the replay ran")

            source.join(120)
            assert not source.is_alive() and replayed["stats"].points == DAYS * 48 * len(spec.streams)
            closing = DAYS * 48 - settings.grace_s // settings.window_s - 1  # the rest wait for the idle flush
            wait_for(lambda: len({m.value() for m in read_topic(settings, "telemetry.site")}) >= closing, 120,
                     "the windows the watermark closes, after the leader changes", proc)
        finally:
            proc.terminate()
            proc.wait(30)
        assert proc.returncode == 0, log.read_text()[-3000:]  # stopped by us, cleanly, not by the fault

        tail = worker.run(settings, ["rollup", "peaks"], exit_when_idle=True)
        assert tail["rollup"]["dead_letters"] == 0

        windows, forecasts = every_window_and_forecast_once(settings, read_topic, DAYS, len(spec.streams))
        lines = log.read_text().splitlines()
        print(f"windows re-emitted: {sum(len(c) - 1 for c in windows.values())}; "
              f"forecasts re-emitted: {sum(len(c) - 1 for c in forecasts.values())}; worker log lines: {len(lines)}")
        assert len(lines) <= 30, "\n".join(lines[-40:])  # a leader change is waited out quietly, not a flood
