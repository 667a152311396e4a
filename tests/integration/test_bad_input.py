"""Bad input on the real broker: each kind of bad message goes to the dead letter with its reason, bounded,
and the stream goes on with nothing else lost (issue 12's poison-pill, dead-letter, overflow and unknown-name
findings; each test failed on the code before the fix).

Every test sends a known mix of good and bad messages, runs the agents until idle and checks the counts end
to end: points folded + dead letters = messages sent, snapshots = windows sent, views rows = messages stored.
"""

from __future__ import annotations

import hashlib
import math
import random

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from opsloop.connectors.duckdb import query
from opsloop.connectors.kafka import admin, producer, wait_delivered
from opsloop.models.records import alarm
from opsloop.schemas.codec import Codec
from opsloop.streams import worker

pytestmark = pytest.mark.integration
CODEC = Codec.default()
BASE = 1_700_000_000_000 - 1_700_000_000_000 % 60_000  # a minute boundary


def point(minute: int, value: float = 30_000.0, site: str = "demo", device: str = "grid-meter-1") -> bytes:
    return CODEC.encode("TelemetryPoint", {"ts_ms": BASE + minute * 60_000, "site": site, "device": device,
                                           "device_type": "grid_meter", "metric": "grid_kw", "value": value,
                                           "unit": "kW", "source": "test"})


def dead_letters(settings, read_topic) -> list[dict]:
    return [CODEC.decode_as("DeadLetter", m.value()) for m in read_topic(settings, "deadletter")]


def snapshots(settings, read_topic) -> list[dict]:
    return [CODEC.decode_as("SiteSnapshot", m.value()) for m in read_topic(settings, "telemetry.site")]


def limit_message_bytes(settings, **limits: int) -> None:
    """Lower ``max.message.bytes`` of catalog topics (the broker then refuses larger records)."""
    client = admin(settings)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, settings.topic(name), incremental_configs=[
        ConfigEntry("max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET)])
        for name, limit in limits.items()]
    for future in client.incremental_alter_configs(resources).values():
        future.result(30)


def test_a_1mb_poison_pill_malformed_and_wrong_schema_messages_are_dead_lettered_and_the_stream_goes_on(
        kafka_settings, read_topic):
    """Proves: a ~1 MB garbage value from a default-config client (the dead letter of which, copied whole,
    exceeds message.max.bytes), a corrupt Avro body and a valid record of another schema each reach the dead
    letter once per agent that reads them, bounded, with size and hash; rollup and views go on and every good
    point is counted (20 points in, 20 windows out, 23 raw rows in DuckDB)."""
    topic = kafka_settings.topic("telemetry.raw")
    careless = Producer({"bootstrap.servers": kafka_settings.broker})  # default config: 1,000,000-byte messages
    poison = random.Random(7).randbytes(999_900)  # fits the client's limit; its dead letter, copied whole, would not
    corrupt = point(0)[:-3]  # a TelemetryPoint cut short
    other = CODEC.encode("Alarm", alarm(BASE, "demo", "ups-a", "ups", "test", "UPS_ON_BATTERY", "on battery"))
    key = b"grid-meter-1"  # one key: one partition, this order
    for minute in range(10):
        careless.produce(topic, key=key, value=point(minute, 30_000.0 + minute))
    landed: dict[bytes, int] = {}  # a default client may retry a batch and reorder: where each one landed
    for bad in (poison, corrupt, other):
        careless.produce(topic, key=key, value=bad,
                         on_delivery=lambda err, msg: landed.update({msg.value(): msg.offset()}))
    for minute in range(10, 20):
        careless.produce(topic, key=key, value=point(minute, 30_000.0 + minute))
    assert careless.flush(30) == 0

    rollup = worker.run(kafka_settings, ["rollup"], exit_when_idle=True)["rollup"]
    views = worker.run(kafka_settings, ["views"], exit_when_idle=True)["views"]

    assert (rollup["points"], rollup["dead_letters"], rollup["snapshots"]) == (20, 3, 20)
    assert sorted(s["grid_kw"] for s in snapshots(kafka_settings, read_topic)) == [30_000.0 + m for m in range(20)]
    dead = dead_letters(kafka_settings, read_topic)
    at = {name: landed[value] for name, value in (("poison", poison), ("corrupt", corrupt), ("other", other))}
    assert sorted((d["agent"], d["offset"]) for d in dead) == sorted((a, o) for a in ("rollup", "views")
                                                                     for o in at.values())
    assert all(d["error_kind"] == "decode" and d["topic"] == topic for d in dead)
    for d in (d for d in dead if d["offset"] == at["poison"]):
        assert d["truncated"] and len(d["value"]) <= kafka_settings.deadletter_max_bytes
        assert d["value"] == poison[:len(d["value"])]
        assert (d["value_size"], d["value_sha256"]) == (len(poison), hashlib.sha256(poison).hexdigest())
    assert all(not d["truncated"] for d in dead if d["offset"] != at["poison"])
    assert any("expected a TelemetryPoint, got a Alarm" in d["error"] for d in dead if d["offset"] == at["other"])
    assert any("corrupt TelemetryPoint body" in d["error"] for d in dead if d["offset"] == at["corrupt"])

    assert views["rows"]["telemetry_raw"] == 20 and views["rows"]["telemetry_site"] == 20
    _, rows = query(kafka_settings.duckdb_file, 'SELECT "offset", agents, value_bytes, truncated FROM v_deadletter '
                                                'ORDER BY "offset"')
    assert rows == sorted([(at["poison"], "rollup, views", len(poison), True),
                           (at["corrupt"], "rollup, views", len(corrupt), False),
                           (at["other"], "rollup, views", len(other), False)])


def test_an_undecodable_record_on_deadletter_itself_reaches_v_deadletter(kafka_settings):
    """Proves: a message on deadletter that is not a DeadLetter (garbage, or another record) is stored raw with
    its reason, not dropped; the good dead letter beside it is stored too."""
    prod = producer(kafka_settings)
    topic = kafka_settings.topic("deadletter")
    good = CODEC.encode("DeadLetter", {"topic": "x", "partition": 0, "offset": 5, "key": None, "value": b"v",
                                       "error_kind": "decode", "error": "bad", "agent": "test",
                                       "message_ts_ms": None})
    for value in (b"\x00garbage on the dead-letter topic", point(0), good):
        prod.produce(topic, key=b"x", value=value, partition=0)
    wait_delivered(prod)
    views = worker.run(kafka_settings, ["views"], exit_when_idle=True)["views"]
    assert views["deadletter_rejects"] == 2 and views["rows"]["deadletter"] == 3
    _, rows = query(kafka_settings.duckdb_file, 'SELECT topic, "offset", error_kind, agents, error FROM v_deadletter '
                                                'ORDER BY topic, "offset"')
    assert [r[:4] for r in rows] == [(topic, 0, "decode", "views"), (topic, 1, "decode", "views"),
                                     ("x", 5, "decode", "test")]
    assert "single-object" in rows[0][4] and "expected a DeadLetter" in rows[1][4]


def test_overflowing_values_are_refused_and_no_snapshot_carries_inf(kafka_settings, read_topic):
    """Proves: two finite 1e308 grid readings of one site no longer sum to grid_kw=inf; both are dead-lettered
    as invalid and the site's other readings of that minute and the next still make their windows."""
    prod = producer(kafka_settings)
    topic = kafka_settings.topic("telemetry.raw")
    for device in ("grid-meter-1", "facility-meter-1"):
        prod.produce(topic, key=b"k", value=point(0, 1e308, device=device))
    for minute, value in ((0, 30_000.0), (1, 31_000.0)):
        prod.produce(topic, key=b"k", value=point(minute, value))
    wait_delivered(prod)
    rollup = worker.run(kafka_settings, ["rollup"], exit_when_idle=True)["rollup"]
    assert (rollup["points"], rollup["dead_letters"], rollup["snapshots"]) == (2, 2, 2)
    snaps = snapshots(kafka_settings, read_topic)
    assert [s["grid_kw"] for s in sorted(snaps, key=lambda s: s["window_start_ms"])] == [30_000.0, 31_000.0]
    assert all(math.isfinite(v) for s in snaps for v in s.values() if isinstance(v, float))
    dead = dead_letters(kafka_settings, read_topic)
    assert [d["error_kind"] for d in dead] == ["invalid", "invalid"]
    assert all("beyond the plausible magnitude" in d["error"] for d in dead)


def test_unknown_sites_and_devices_are_dead_lettered_not_turned_into_snapshots_or_incidents(kafka_settings,
                                                                                           read_topic):
    """Proves: points and alarms naming a site or a device that no site file declares make no phantom snapshot
    and no phantom clean alarm or incident; they reach the dead letter as unknown with the name in the reason,
    and the declared ones beside them go through."""
    prod = producer(kafka_settings)
    raw = kafka_settings.topic("telemetry.raw")
    prod.produce(raw, key=b"k", value=point(0, 30_000.0))
    prod.produce(raw, key=b"k", value=point(0, 500.0, site="phantom"))
    prod.produce(raw, key=b"k", value=point(0, 500.0, device="grid-meter-9"))
    alarms = kafka_settings.topic("alarms.raw")
    for site, device in (("phantom", "ups-a"), ("demo", "ups-z")):
        prod.produce(alarms, key=device.encode(), value=CODEC.encode(
            "Alarm", alarm(BASE, site, device, "ups", "bms", "UPS_ON_BATTERY", "on battery", severity="major")))
    wait_delivered(prod)
    ran = worker.run(kafka_settings, ["rollup", "dedup", "correlate"], exit_when_idle=True)
    assert (ran["rollup"]["points"], ran["rollup"]["dead_letters"], ran["rollup"]["snapshots"]) == (1, 2, 1)
    assert (ran["dedup"]["in"], ran["dedup"]["dead_letters"]) == (0, 2)
    (snap,) = snapshots(kafka_settings, read_topic)
    assert (snap["site"], snap["grid_kw"], snap["devices"]) == ("demo", 30_000.0, 1)
    assert read_topic(kafka_settings, "alarms.clean") == [] and read_topic(kafka_settings, "incidents") == []
    dead = dead_letters(kafka_settings, read_topic)
    assert sorted((d["agent"], d["error_kind"]) for d in dead) == [("dedup", "unknown")] * 2 + [("rollup", "unknown")] * 2
    reasons = sorted(d["error"].split(" is not")[0] for d in dead)
    assert reasons == ["device 'grid-meter-9'", "device 'ups-z'", "site 'phantom'", "site 'phantom'"]


def test_outputs_and_dead_letters_the_broker_refuses_as_too_large_do_not_stop_the_agent(kafka_settings,
                                                                                       read_topic):
    """Proves: with topics whose max.message.bytes is lower than what an agent writes, refused snapshots become
    undeliverable dead letters (kept, with the reason) instead of failing every restart, and a dead letter the
    broker refuses is sent again smaller, down to one that fits, with the original size and hash."""
    limit_message_bytes(kafka_settings, **{"telemetry.site": 100, "deadletter": 4000})
    prod = producer(kafka_settings)
    topic = kafka_settings.topic("telemetry.raw")
    garbage = random.Random(12).randbytes(100_000)  # under the cap, over the dead-letter topic's limit even compressed
    for minute in range(3):
        prod.produce(topic, key=b"k", value=point(minute, 30_000.0 + minute))
    prod.produce(topic, key=b"k", value=garbage)
    wait_delivered(prod)
    rollup = worker.run(kafka_settings, ["rollup"], exit_when_idle=True)["rollup"]
    assert (rollup["points"], rollup["snapshots"], rollup["undeliverable"]) == (3, 3, 3)
    assert snapshots(kafka_settings, read_topic) == []
    dead = dead_letters(kafka_settings, read_topic)
    undeliverable = sorted((d for d in dead if d["error_kind"] == "undeliverable"),
                           key=lambda d: CODEC.decode_as("SiteSnapshot", d["value"])["window_start_ms"])
    assert [CODEC.decode_as("SiteSnapshot", d["value"])["grid_kw"] for d in undeliverable] == [30_000.0, 30_001.0,
                                                                                              30_002.0]
    assert all(d["topic"] == kafka_settings.topic("telemetry.site") and "refused" in d["error"] for d in undeliverable)
    (decode,) = [d for d in dead if d["error_kind"] == "decode"]
    assert decode["truncated"] and len(decode["value"]) < 4000
    assert (decode["value_size"], decode["value_sha256"]) == (len(garbage), hashlib.sha256(garbage).hexdigest())
    # Nothing is left to repeat: a restart neither crashes nor writes anything again.
    again = worker.run(kafka_settings, ["rollup"], exit_when_idle=True)["rollup"]
    assert (again["points"], again["dead_letters"], again.get("undeliverable", 0)) == (0, 0, 0)
