"""The rul agent on the real broker: battery and GPU forecasts, dead letters, models across a restart."""

from __future__ import annotations

import random
import threading
import time

import pytest

from actuation import Running  # the integration tier's helpers
from telemetry import publish_points

from opsloop.connectors.duckdb import open_db
from opsloop.connectors.kafka import producer, send, wait_delivered
from opsloop.ops import noc_pages
from opsloop.models.maintenance import MaintenancePlan
from opsloop.models.records import alarm
from opsloop.models.rul import DAY_MS, RULES
from opsloop.models.xid_rate import XidRate
from opsloop.schemas.codec import Codec
from opsloop.streams.rul import RulProcessor, default_trend
from opsloop.streams.guard import GuardProcessor
from opsloop.streams.views import ViewsSink
from opsloop.config.policy import load_policy
from opsloop.config.site import load_site

pytestmark = pytest.mark.integration

CODEC = Codec.default()
START_MS = 1_767_225_600_000  # 2026-01-01
NOW_S = (START_MS + 400 * DAY_MS) / 1000  # the processing clock: after every reading


def soh(day: int, rng: random.Random) -> dict:
    """A cell fading as 100 - day**0.55 (80 % at day 232), read daily with BMS noise."""
    value = round(100.0 - day ** 0.55 + rng.gauss(0, 0.2), 1)
    return {"ts_ms": START_MS + day * DAY_MS, "site": "demo", "device": "ess-1", "device_type": "ess",
            "metric": "ess_soh_pct", "value": value, "unit": "%", "source": "test"}


def remaps(day: int) -> dict:
    """A GPU remapping one uncorrectable row every 10 days: at the 8-row rule from day 80."""
    return {"ts_ms": START_MS + day * DAY_MS, "site": "demo", "device": "node7/gpu3", "device_type": "gpu",
            "metric": "rows_remapped_uncorrectable", "value": float(day // 10), "unit": "rows", "source": "test"}


def utilisation(hour: int) -> dict:
    """node7's GPUs: busy by day (08:00-20:00 UTC), nearly idle at night."""
    busy = 8 <= hour % 24 < 20
    return {"ts_ms": START_MS + hour * 3_600_000, "site": "demo", "device": "node7/gpu3", "device_type": "gpu",
            "metric": "gpu_util_pct", "value": 95.0 if busy else 10.0, "unit": "%", "source": "test"}


def publish(settings, points, raw: list[bytes] = ()) -> None:
    publish_points(settings, points, raw, b"ess-1")


def run_until_idle(settings) -> dict:
    return RulProcessor(settings, wall_clock=lambda: NOW_S).run(threading.Event(), exit_when_idle=True)


def forecasts(settings, read_topic) -> list[dict]:
    return [CODEC.decode_as("RulForecast", m.value()) for m in read_topic(settings, "forecasts.rul")]


def test_battery_and_gpu_forecasts_hold_the_truth_and_bad_points_are_dead_lettered(kafka_settings, read_topic):
    rng = random.Random(19)
    other = {**remaps(0), "metric": "gpu_temp_c", "value": 50.0}  # nothing wears out on it: skipped
    xids = [{**remaps(d), "device": "node8/gpu0", "metric": "xid_last", "unit": "code",
             "value": float(79 if (d // 8) % 2 else 48)} for d in range(30)]  # a new XID every 8 days
    publish(kafka_settings, [soh(d, rng) for d in range(120)] + [utilisation(h) for h in range(24 * 7)] +
            [remaps(d) for d in range(75)] + xids + [other] + [{**soh(120, rng), "value": float("nan")}],
            raw=[b"\x00garbage"])

    stats = run_until_idle(kafka_settings)
    assert stats["points"] == 225 and stats["dead_letters"] == 2 and stats["windows"] == 2

    got = forecasts(kafka_settings, read_topic)
    battery = [f for f in got if f["device"] == "ess-1"]
    gpu = [f for f in got if f["device"] == "node7/gpu3"]
    xid = [f for f in got if f["device"] == "node8/gpu0"]
    assert battery and gpu and xid and len(got) == len(battery) + len(gpu) + len(xid)
    assert xid[-1]["metric"] == "xid_count" and xid[-1]["value"] == 4.0 and "XID errors" in xid[-1]["text"]
    last = battery[-1]
    truth_ms = START_MS + 232 * DAY_MS
    assert last["ts_ms"] == START_MS + 119 * DAY_MS and last["reason_code"] == "LIMIT_FORECAST"
    assert last["earliest_ms"] <= truth_ms <= last["latest_ms"]
    assert abs(last["expected_ms"] - truth_ms) < 0.1 * (truth_ms - last["ts_ms"])
    assert last["limit"] == 80.0 and last["family"] == "battery" and "form_spread=0.04" in last["model"]
    assert last["text"].startswith("ESS ess-1 is expected to fall below 80.0% state of health between 2026-")
    assert "80% confidence" in last["text"] and "120 readings" in last["text"]
    assert gpu[-1]["earliest_ms"] < START_MS + 90 * DAY_MS and gpu[-1]["latest_ms"] >= START_MS + 80 * DAY_MS
    assert "uncorrectable remapped rows" in gpu[-1]["text"]

    # one maintenance window per node: node7's at night (idle GPUs, cheap hours), a day before the band opens
    windows = [CODEC.decode_as("Action", m.value()) for m in read_topic(kafka_settings, "actions.proposed")]
    assert sorted(w["params"]["nodes"] for w in windows) == ["node7", "node8"]
    [proposed] = [w for w in windows if w["params"]["nodes"] == "node7"]
    window = next(f for f in gpu if f["ts_ms"] == proposed["created_ms"])
    start, end = int(proposed["params"]["start_ms"]), int(proposed["params"]["end_ms"])
    assert proposed["kind"] == "slurm_reserve" and proposed["params"]["nodes"] == "node7"
    assert end <= window["earliest_ms"] - DAY_MS and end - start == 4 * 3_600_000
    assert all(not 8 <= (start // 3_600_000 + i) % 24 < 20 for i in range(4))
    assert proposed["reason"].startswith("Replace gpu node7/gpu3 between ")

    # the guard asks an operator (the policy runs slurm_reserve in approval mode)
    guard = GuardProcessor(kafka_settings, load_policy(kafka_settings.policy), load_site(kafka_settings.topology),
                           clock=lambda: proposed["created_ms"] / 1000 + 60)
    verdicts, deadline = [], time.monotonic() + 60
    with Running(guard, safety_net_s=90):  # it waits for the operator: it never idles out on its own
        while not verdicts and time.monotonic() < deadline:
            verdicts = [v for m in read_topic(kafka_settings, "actions.approved")
                        if (v := CODEC.decode_as("ApprovedAction", m.value()))["action"]["action_id"]
                        == proposed["action_id"]]
    [verdict] = verdicts
    assert verdict["verdict"] == "needs_approval" and verdict["action"]["action_id"] == proposed["action_id"]
    # one forecast per part and day of event time at most
    assert len({f["ts_ms"] // DAY_MS for f in battery}) == len(battery)
    reasons = sorted(CODEC.decode_as("DeadLetter", m.value())["error_kind"] for m in read_topic(kafka_settings,
                                                                                                "deadletter"))
    assert reasons == ["decode", "invalid"]

    # the NOC's view: each part's latest forecast, soonest first, rendered as its sentence
    ViewsSink(kafka_settings, topics=["forecasts.rul"]).run(threading.Event(), exit_when_idle=True)
    con = open_db(kafka_settings.duckdb_file, read_only=True)
    try:
        rows = [dict(zip([d[0] for d in cur.description], row))
                for cur in [con.execute("SELECT * FROM v_rul_latest ORDER BY earliest")] for row in cur.fetchall()]
        on_overview = noc_pages.overview(con, rows[0]["site"], None)["rul"]
    finally:
        con.close()
    assert [r["device"] for r in rows] == ["node8/gpu0", "node7/gpu3", "ess-1"] and rows[2]["text"] == last["text"]
    assert rows[2]["limit"] == 80.0
    assert [r["text"] for r in on_overview] == [r["text"] for r in rows]  # the overview lists them, soonest first


def test_restart_restores_models_and_learns_nothing_twice(kafka_settings, read_topic):
    rng = random.Random(5)
    points = [soh(d, rng) for d in range(120)]
    publish(kafka_settings, points[:60])
    first = run_until_idle(kafka_settings)
    assert first["points"] == 60 and first["checkpoints"] >= 1

    publish(kafka_settings, points[60:])
    second = run_until_idle(kafka_settings)
    assert second["points"] == 60  # only the new points

    trend = default_trend(RULES["ess_soh_pct"])  # one uninterrupted model over the same readings
    for p in points:
        trend.learn_one(p["ts_ms"], p["value"])
    expected = trend.forecast(80.0, "below")
    last = forecasts(kafka_settings, read_topic)[-1]
    assert (last["expected_ms"], last["earliest_ms"], last["latest_ms"], last["points"]) == (
        expected.expected_ms, expected.earliest_ms, expected.latest_ms, 120)


def xid_alarm(day: float, code: str, state: str = "raise") -> dict:
    return alarm(START_MS + int(day * DAY_MS), "demo", "node9/gpu1", "gpu", "prometheus", code,
                 f"NVIDIA XID {code[4:]} reported by node9/gpu1", severity="critical", state=state)


def test_xid_alarms_are_counted_per_gpu_forecast_and_kept_across_a_restart(kafka_settings, read_topic):
    days = (0, 6, 11, 19, 24)  # an XID every five or six days: the rule's 5 reached on day 24
    alarms = [xid_alarm(d, "XID_79" if i % 2 else "XID_48") for i, d in enumerate(days)]
    noise = [xid_alarm(1, "XID_48", state="clear"), xid_alarm(2, "TEMP_HIGH"), alarms[1]]  # a clear, another
    # alarm, a resent XID: none of them is an XID more

    def send_alarms(records):
        prod = producer(kafka_settings)
        for a in records:
            send(prod, kafka_settings.topic("alarms.raw"), a["device"].encode(), CODEC.encode("Alarm", a))
        wait_delivered(prod)

    send_alarms(alarms[:3] + noise)
    first = run_until_idle(kafka_settings)
    assert first["xids"] == 3 and first["dead_letters"] == 0 and first["checkpoints"] >= 1
    send_alarms(alarms[3:])
    second = run_until_idle(kafka_settings)  # the count so far comes from the changelog
    assert second["xids"] == 2

    rate = XidRate()  # one uninterrupted count of the same XIDs
    got = [f for f in forecasts(kafka_settings, read_topic) if f["device"] == "node9/gpu1"]
    for a in alarms[:4]:
        rate.learn_one(a["ts_ms"], int(a["code"][4:]))
    expected = rate.forecast(RULES["xid_count"].limit)
    forecast = next(f for f in got if f["ts_ms"] == alarms[3]["ts_ms"])
    assert (forecast["value"], forecast["earliest_ms"], forecast["expected_ms"]) == (
        4.0, expected.earliest_ms, expected.expected_ms)
    assert forecast["reason_code"] == "LIMIT_FORECAST" and forecast["metric"] == "xid_count"
    assert forecast["text"].startswith("GPU node9/gpu1 is expected to reach 5 XID errors between 2026-")
    assert got[-1]["reason_code"] == "LIMIT_PASSED" and got[-1]["value"] == 5.0
    assert got[-1]["text"].startswith("GPU node9/gpu1 is already above 5 XID errors")


def test_a_maintenance_window_avoids_the_hours_the_slurm_queue_wants_the_gpus(kafka_settings, read_topic):
    # the queue: a 64-GPU job waiting for each night (00:00-08:00 UTC) of the next 100 days; days are free
    nights = [{"ts_ms": START_MS, "site": "demo", "source": "slurm-queue", "snapshot_size": 100, "entry": "job",
               "id": str(1000 + d), "partition": "batch", "device": None, "state": "PENDING", "reason": "Resources",
               "name": "train", "user": "ann", "gpus": 64, "nodes": 8, "est_kw": 44.8, "priority": 100,
               "submit_ms": START_MS, "start_ms": None, "expected_start_ms": START_MS + d * DAY_MS,
               "end_ms": START_MS + d * DAY_MS + 8 * 3_600_000, "reservation": None} for d in range(100)]
    closing = {**nights[0], "entry": "snapshot", "id": "slurm-queue", "state": "COMPLETE", "gpus": 6400,
               "expected_start_ms": None, "end_ms": None}
    plan = MaintenancePlan(queue_max_age_h=24 * 100)  # the test's queue is read once, at the first reading's time
    rul = RulProcessor(kafka_settings, maintenance=plan, wall_clock=lambda: NOW_S)
    with Running(rul, safety_net_s=120):
        prod = producer(kafka_settings)
        for e in nights + [closing]:
            send(prod, kafka_settings.topic("slurm.queue"), b"demo", CODEC.encode("SlurmQueue", e))
        wait_delivered(prod)
        deadline = time.monotonic() + 60
        while rul.queues.of("demo") is None:  # the queue is in before the readings that call for a window
            assert time.monotonic() < deadline, "the queue was not read within 60 s"
            time.sleep(0.1)
        publish(kafka_settings, [utilisation(h) for h in range(24 * 7)] + [remaps(d) for d in range(75)])
        while rul.stats["windows"] < 1:
            assert time.monotonic() < deadline, "no window within 60 s"
            time.sleep(0.1)
    [window] = [CODEC.decode_as("Action", m.value()) for m in read_topic(kafka_settings, "actions.proposed")]
    start = int(window["params"]["start_ms"]) // 3_600_000
    hours = [(start + i) % 24 for i in range(4)]
    assert not any(h < 8 for h in hours), hours  # by day: busy GPUs by the load profile, but free by the queue
    assert "0 GPU-hours moved" in window["reason"]
