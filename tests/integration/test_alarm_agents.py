"""dedup + correlate, as Faust agents and as the worker's batch processors, on the real broker: a storm in, the in-process filter's incidents out,
bad input dead-lettered, and a restart mid-storm neither loses nor double-counts alarms."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from opsloop.connectors.kafka import producer, wait_delivered
from opsloop.models.alarm_filter import AlarmFilter
from opsloop.models.dedup import ANNOUNCED_CODES
from opsloop.models.noise import REASON_CODES as NOISE_CODES
from opsloop.ops.evals.storm import generate_storm
from opsloop.config.site import load_site
from opsloop.models.topology import Topology
from opsloop.schemas.codec import Codec
from opsloop.ops.bench.faust_twins import correlate, dedup
from opsloop.streams import worker
from opsloop.streams.app import catalog_topic, decode_or_dead_letter

pytestmark = pytest.mark.integration

TOPOLOGY = Path(__file__).resolve().parents[1] / "data" / "topology_colo.yaml"
SAFETY_NET_S = 150.0


def expected_incidents(alarms) -> dict[str, tuple]:
    topo = Topology.from_site(load_site(TOPOLOGY))
    f = AlarmFilter({topo.site: topo})
    latest = {}
    for alarm in alarms:
        f.process(alarm)
        for r in f.flush():
            latest[r["incident_id"]] = r
    return {i: (r["root_device"], r["member_count"]) for i, r in latest.items() if not r["merged_into"]}


def run_until_incidents(settings, expected: dict[str, tuple], latest: dict | None = None) -> dict[str, dict]:
    """Runs dedup + correlate until the incidents seen (``latest``, added to) match ``expected``."""
    stop, latest = threading.Event(), {} if latest is None else latest

    def watcher(app, settings) -> None:
        @app.agent(catalog_topic(app, settings, "incidents"), name="test-incident-watcher")
        async def watch(stream):
            async for event in stream.events():
                record = await decode_or_dead_letter(app, event, "Incident", "test-watcher")
                latest[record["incident_id"]] = record
                if all(i in latest and (latest[i]["root_device"], latest[i]["member_count"]) == want
                       for i, want in expected.items()):
                    stop.set()

    timer = threading.Timer(SAFETY_NET_S, stop.set)
    timer.start()
    try:
        worker.run(settings, [], stop=stop, faust_agents={"dedup-faust": dedup.register,
                                                          "correlate-faust": correlate.register, "watcher": watcher})
    finally:
        timer.cancel()
    return latest


def send_alarms(settings, alarms, corrupt: bool = False) -> None:
    """All on partition 0 (any fixed partition per device is valid): a backlog spread over partitions
    reaches the correlator in partition-by-partition order, not in event-time order (see the closing note)."""
    codec, prod = Codec.default(), producer(settings)
    for alarm in alarms:
        prod.produce(settings.topic("alarms.raw"), key=alarm["device"].encode(), value=codec.encode("Alarm", alarm),
                     partition=0)
    if corrupt:
        prod.produce(settings.topic("alarms.raw"), key=b"pdu-1a", value=b"\xc3\x01 not an alarm", partition=0)
    wait_delivered(prod)


def test_storm_becomes_incidents_across_a_restart(kafka_settings, read_topic):
    settings = kafka_settings.replace(topology=TOPOLOGY)
    storm = generate_storm(Topology.from_site(load_site(TOPOLOGY)), seed=3, failures=3, background=5, horizon_s=3600)
    alarms = [a for a, _ in storm.alarms]
    half = len(alarms) // 2

    send_alarms(settings, alarms[:half], corrupt=True)
    first = expected_incidents(alarms[:half])
    seen = run_until_incidents(settings, first)
    assert {i: (r["root_device"], r["member_count"]) for i, r in seen.items() if i in first} == first

    send_alarms(settings, alarms[half:])  # a new worker picks up the tables and offsets where the first stopped
    final = expected_incidents(alarms)
    seen = run_until_incidents(settings, final, seen)  # the watcher's group resumes too: it sees only changes
    live = {i: (r["root_device"], r["member_count"]) for i, r in seen.items() if not r["merged_into"]}
    assert {i: live.get(i) for i in final} == final
    roots = {f.root for f in storm.failures}
    assert roots <= {root for root, _ in final.values()}

    codec = Codec.default()
    [dead] = [codec.decode_as("DeadLetter", m.value()) for m in read_topic(settings, "deadletter")]
    assert (dead["agent"], dead["value"]) == ("dedup", b"\xc3\x01 not an alarm")
    clean = [codec.decode_as("CleanAlarm", m.value()) for m in read_topic(settings, "alarms.clean")]
    assert len(clean) < len(alarms) / 2 and all(c["duplicate_count"] >= 1 for c in clean)
    assert all(c["reason_code"] in ANNOUNCED_CODES and c["noise_reason_code"] in NOISE_CODES for c in clean)


def test_processors_turn_the_storm_into_the_same_incidents_across_a_restart(kafka_settings, read_topic):
    from opsloop.streams.correlate import CorrelateProcessor
    from opsloop.streams.dedup import DedupProcessor

    settings = kafka_settings.replace(topology=TOPOLOGY)
    storm = generate_storm(Topology.from_site(load_site(TOPOLOGY)), seed=4, failures=3, background=5, horizon_s=3600)
    alarms = [a for a, _ in storm.alarms]
    half = len(alarms) // 2
    codec = Codec.default()

    def run_both() -> tuple[dict, dict]:  # one after the other: each ends once its input is idle
        stop = threading.Event()
        return (DedupProcessor(settings).run(stop, exit_when_idle=True),
                CorrelateProcessor(settings, [load_site(TOPOLOGY)]).run(stop, exit_when_idle=True))

    send_alarms(settings, alarms[:half], corrupt=True)
    first_dedup, _ = run_both()
    send_alarms(settings, alarms[half:])
    second_dedup, _ = run_both()  # new processes: state comes back from the changelogs
    assert first_dedup["in"] + second_dedup["in"] == len(alarms) and first_dedup["dead_letters"] == 1

    latest = {}
    for m in read_topic(settings, "incidents"):
        record = codec.decode_as("Incident", m.value())
        latest[record["incident_id"]] = record
    live = {i: (r["root_device"], r["member_count"]) for i, r in latest.items() if not r["merged_into"]}
    assert live == expected_incidents(alarms)
    clean = [codec.decode_as("CleanAlarm", m.value()) for m in read_topic(settings, "alarms.clean")]
    assert clean and all(c["reason_code"] in ANNOUNCED_CODES and c["noise_reason_code"] in NOISE_CODES
                         for c in clean)
