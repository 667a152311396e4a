"""The views agent and its DuckDB file without a broker: Arrow mapping, batch writes with offsets, replay,
dead letters, views, text tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without the repo root on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from opsloop.connectors.duckdb import arrow_schema, format_table, open_db, query, table_name
from opsloop.streams.views import ViewsSink
from opsloop.config.settings import Settings
from opsloop.schemas.codec import Codec

from consumed import Msg  # the unit tier's consumed message

pytestmark = pytest.mark.unit

PREFIX = "t."
MINUTE_MS = 60_000
T0 = 960163200000  # 2000-06-05T00:00:00Z


def snapshot(site, start_ms, grid_kw, it_kw=800.0, facility_kw=1000.0):
    return {"site": site, "window_start_ms": start_ms, "window_end_ms": start_ms + MINUTE_MS,
            "grid_kw": grid_kw, "it_kw": it_kw, "facility_kw": facility_kw, "ess_soc_pct": 80.0,
            "ess_soh_pct": 97.0, "ess_kw": 0.0, "gpu_kw": 500.0, "pue": facility_kw / it_kw,
            "price_per_mwh": None, "samples": 12, "devices": 3}


def point(device, metric, ts_ms, value):
    return {"ts_ms": ts_ms, "site": "demo", "device": device, "device_type": "pdu", "metric": metric,
            "value": value, "unit": "kW", "source": "test"}


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(duckdb_path=tmp_path / "ops.duckdb", topic_prefix=PREFIX)


@pytest.fixture
def batch() -> list[Msg]:
    codec = Codec.default()
    site = [Msg(PREFIX + "telemetry.site", 0, 10 + i, codec.encode("SiteSnapshot", snapshot("demo", T0 + i * MINUTE_MS, 1000.0 + i)),
                key=b"demo", ts=T0 + i * MINUTE_MS + 5) for i in range(3)]
    raw = [Msg(PREFIX + "telemetry.raw", p, o, codec.encode("TelemetryPoint", point(dev, "it_kw", ts, v)), key=dev.encode())
           for p, o, dev, ts, v in [(1, 0, "pdu-a1", T0, 10.0), (1, 1, "pdu-a1", T0 + 5000, 11.0),
                                    (2, 0, "pdu-b1", T0 + 5000, 20.0), (2, 1, "pdu-b1", T0, 19.0)]]
    return site + raw


def offsets(con) -> dict:
    return {(t, p): o for t, p, o in con.execute("SELECT * FROM _kafka_offsets").fetchall()}


def site_power(con) -> list[tuple]:
    return con.execute("SELECT site, minute, grid_kw, it_kw, facility_kw, pue, ess_soc_pct, ess_kw, gpu_kw "
                       "FROM v_site_power ORDER BY site, minute").fetchall()


def test_table_name():
    assert table_name("telemetry.site") == "telemetry_site"
    assert table_name("forecasts.peak") == "forecasts_peak"
    assert table_name("incidents") == "incidents"


def test_arrow_schema_maps_types_nullability_and_nested_fields():
    incident = arrow_schema("Incident")
    assert incident.names[-3:] == ["_partition", "_offset", "_kafka_ts_ms"]
    assert incident.field("members").type == pa.string()  # array of records -> JSON text
    assert incident.field("member_count").type == pa.int32() and not incident.field("member_count").nullable
    assert incident.field("resolved_ms").type == pa.int64() and incident.field("resolved_ms").nullable
    assert incident.field("state").type == pa.string()  # enum
    assert arrow_schema("SiteSnapshot").field("grid_kw").type == pa.float64()
    assert arrow_schema("SiteSnapshot").field("grid_kw").nullable
    dead = arrow_schema("DeadLetter")
    assert dead.field("value").type == pa.binary() and dead.field("value").nullable
    assert arrow_schema("Narrative").field("grounded").type == pa.bool_()
    assert arrow_schema("Action").field("params").type == pa.string()  # map -> JSON text
    assert arrow_schema("CleanAlarm").field("alarm").type == pa.string()  # nested record -> JSON text


def test_open_db_creates_tables_offsets_and_views(tmp_path):
    con = open_db(tmp_path / "x.duckdb")
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"telemetry_raw", "telemetry_site", "incidents", "deadletter", "_kafka_offsets",
            "v_site_power", "v_deadletter", "v_telemetry_latest"} <= names
    columns = [r[0] for r in con.execute("DESCRIBE v_site_power").fetchall()]
    assert columns[:9] == ["site", "minute", "grid_kw", "it_kw", "facility_kw", "pue", "ess_soc_pct", "ess_kw", "gpu_kw"]
    con.close()
    open_db(tmp_path / "x.duckdb").close()  # reopening an existing file is fine


def test_write_batch_stores_rows_and_offsets(settings, batch):
    sink = ViewsSink(settings, dead_letters=lambda *a: pytest.fail(f"unexpected dead letter {a}"))
    assert sink.write_batch(batch) == 7
    con = sink.con
    assert con.execute("SELECT count(*) FROM telemetry_site").fetchone()[0] == 3
    assert con.execute("SELECT count(*) FROM telemetry_raw").fetchone()[0] == 4
    assert con.execute("SELECT _partition, _offset, _kafka_ts_ms, grid_kw, price_per_mwh FROM telemetry_site "
                       "ORDER BY _offset LIMIT 1").fetchone() == (0, 10, T0 + 5, 1000.0, None)
    assert offsets(con) == {("t.telemetry.site", 0): 13, ("t.telemetry.raw", 1): 2, ("t.telemetry.raw", 2): 2}
    power = site_power(con)
    assert [(str(r[1]), r[2]) for r in power] == [("2000-06-05 00:00:00", 1000.0), ("2000-06-05 00:01:00", 1001.0),
                                                  ("2000-06-05 00:02:00", 1002.0)]
    assert power[0][5] == pytest.approx(1.25)
    latest = con.execute("SELECT device, value FROM v_telemetry_latest ORDER BY device").fetchall()
    assert latest == [("pdu-a1", 11.0), ("pdu-b1", 20.0)]  # by event time, not arrival
    assert sink.stats["rows"] == {"telemetry_site": 3, "telemetry_raw": 4}


def test_replay_after_crash_changes_nothing(settings, batch):
    sink = ViewsSink(settings, dead_letters=lambda *a: None)
    sink.write_batch(batch)
    before = site_power(sink.con)
    sink.close()
    sink = ViewsSink(settings, dead_letters=lambda *a: None)  # a restart reads the stored offsets
    assert sink.write_batch(batch) == 0
    assert sink.stats["replayed"] == len(batch)
    assert sink.con.execute("SELECT count(*) FROM telemetry_site").fetchone()[0] == 3
    assert site_power(sink.con) == before
    sink.close()


def test_reemitted_window_counts_once_latest_wins(settings, batch):
    sink = ViewsSink(settings, dead_letters=lambda *a: None)
    sink.write_batch(batch)
    before = site_power(sink.con)
    codec = Codec.default()
    again = [Msg(PREFIX + "telemetry.site", 0, 13 + i, codec.encode("SiteSnapshot", snapshot("demo", T0 + i * MINUTE_MS, 1000.0 + i)))
             for i in range(3)]
    assert sink.write_batch(again) == 3  # new offsets: stored as raw rows ...
    assert sink.con.execute("SELECT count(*) FROM telemetry_site").fetchone()[0] == 6
    assert site_power(sink.con) == before  # ... but the view shows each window once
    fixed = Msg(PREFIX + "telemetry.site", 0, 16, codec.encode("SiteSnapshot", snapshot("demo", T0, 1500.0)))
    sink.write_batch([fixed])
    assert site_power(sink.con)[0][2] == 1500.0  # the latest emission of a window wins


def test_short_windows_are_averaged_per_minute(settings):
    codec = Codec.default()
    half = [dict(snapshot("demo", T0 + i * 30_000, 1000.0 + 100 * i, it_kw=800.0, facility_kw=1000.0 + 200 * i),
                 window_end_ms=T0 + (i + 1) * 30_000) for i in range(2)]
    sink = ViewsSink(settings, dead_letters=lambda *a: None)
    sink.write_batch([Msg(PREFIX + "telemetry.site", 0, i, codec.encode("SiteSnapshot", s)) for i, s in enumerate(half)])
    (row,) = site_power(sink.con)
    assert row[2] == 1050.0 and row[4] == 1100.0
    assert row[5] == pytest.approx(1100.0 / 800.0)


def test_malformed_message_goes_to_dead_letters_and_the_batch_goes_on(settings, batch):
    letters = []
    sink = ViewsSink(settings, dead_letters=lambda msg, kind, error: letters.append((msg, kind, error)))
    garbage = Msg(PREFIX + "telemetry.site", 0, 13, b"not avro at all")
    wrong = Msg(PREFIX + "telemetry.site", 0, 14, Codec.default().encode("TelemetryPoint", point("x", "it_kw", T0, 1.0)))
    assert sink.write_batch(batch + [garbage, wrong]) == 7
    assert [(m.offset(), kind) for m, kind, _ in letters] == [(13, "decode"), (14, "decode")]
    assert "single-object" in letters[0][2] and "TelemetryPoint" in letters[1][2]
    assert offsets(sink.con)[("t.telemetry.site", 0)] == 15  # rejected messages are handled, not retried
    assert sink.stats["dead_letters"] == 2


def test_undecodable_dead_letter_is_stored_raw_with_its_reason_not_sent_back(settings, caplog):
    letters = []
    sink = ViewsSink(settings, dead_letters=lambda *a: letters.append(a))
    big = b"\x00junk" + bytes(settings.deadletter_max_bytes)
    alarm = Codec.default().encode("Alarm", {"ts_ms": T0, "site": "demo", "device": "ups-1", "device_type": "ups",
                                             "source": "test", "code": "U1", "severity": "info", "state": "raise",
                                             "text": "on battery", "attributes": {}})
    assert sink.write_batch([Msg(PREFIX + "deadletter", 0, 0, b"\x00junk", ts=T0),
                             Msg(PREFIX + "deadletter", 0, 1, big, key=b"k", ts=T0),
                             Msg(PREFIX + "deadletter", 1, 0, alarm, ts=T0)]) == 3
    assert letters == [] and sink.stats["deadletter_rejects"] == 3
    assert "undecodable" in caplog.text
    assert offsets(sink.con) == {("t.deadletter", 0): 2, ("t.deadletter", 1): 1}
    rows = sink.con.execute('SELECT "partition", "offset", error_kind, agents, value_bytes, truncated, error '
                            'FROM v_deadletter ORDER BY "partition", "offset"').fetchall()
    assert [r[:6] for r in rows] == [(0, 0, "decode", "views", 5, False), (0, 1, "decode", "views", len(big), True),
                                     (1, 0, "decode", "views", len(alarm), False)]
    assert "shorter than" in rows[0][6] and "expected a DeadLetter" in rows[2][6]
    kept, = sink.con.execute('SELECT octet_length(value) FROM deadletter WHERE "offset" = 1').fetchone()
    assert kept == settings.deadletter_max_bytes - 1  # the key takes its byte of the cap


def test_dead_letter_records_show_in_v_deadletter(settings):
    codec = Codec.default()
    record = {"topic": "t.alarms.raw", "partition": 3, "offset": 42, "key": b"ups-1", "value": b"\x01\x02\x03",
              "error_kind": "decode", "error": "bad", "agent": "dedup", "message_ts_ms": T0}
    sink = ViewsSink(settings, dead_letters=lambda *a: None)
    sink.write_batch([Msg(PREFIX + "deadletter", 0, 0, codec.encode("DeadLetter", record), ts=T0 + 1000)])
    # The same message rejected by a second agent, and re-sent after a restart: still one row.
    again = {**record, "agent": "anomaly"}
    sink.write_batch([Msg(PREFIX + "deadletter", 0, 1, codec.encode("DeadLetter", again), ts=T0 + 2000),
                      Msg(PREFIX + "deadletter", 0, 2, codec.encode("DeadLetter", record), ts=T0 + 3000)])
    rows = sink.con.execute("SELECT time, topic, \"partition\", \"offset\", error_kind, error, agents, value_bytes "
                            "FROM v_deadletter").fetchall()
    assert [(str(r[0]),) + r[1:] for r in rows] == [
        ("2000-06-05 00:00:01", "t.alarms.raw", 3, 42, "decode", "bad", "anomaly, dedup", 3)]


def test_nested_fields_stored_as_json(settings):
    incident = {"incident_id": "i-1", "site": "demo", "state": "open", "opened_ms": T0, "updated_ms": T0,
                "resolved_ms": None, "root_device": "ups-1", "root_device_type": "ups", "root_code": "U1",
                "severity": "major", "member_count": 1, "summary": "UPS on battery",
                "members": [{"fingerprint": "f1", "device": "ups-1", "device_type": "ups", "code": "U1",
                             "count": 2, "first_seen_ms": T0}]}
    sink = ViewsSink(settings, dead_letters=lambda *a: None)
    sink.write_batch([Msg(PREFIX + "incidents", 0, 0, Codec.default().encode("Incident", incident))])
    row = sink.con.execute("SELECT members->>'$[0].device', CAST(members->'$[0].count' AS INT), resolved_ms, severity "
                           "FROM incidents").fetchone()
    assert row == ("ups-1", 2, None, "major")


def test_query_and_format_table(settings, batch):
    sink = ViewsSink(settings, dead_letters=lambda *a: None)
    sink.write_batch(batch)
    sink.close()  # DuckDB allows one writer or many readers of a file
    columns, rows = query(settings.duckdb_file, "SELECT site, minute, grid_kw, pue, NULL AS note FROM v_site_power ORDER BY minute")
    assert columns == ["site", "minute", "grid_kw", "pue", "note"] and len(rows) == 3
    text = format_table(columns, rows)
    lines = text.splitlines()
    assert lines[0].split() == columns
    assert lines[2].split() == ["demo", "2000-06-05", "00:00:00", "1000.0", "1.25"]
    assert lines[-1] == "(3 rows)"
    assert lines[2].index("1000.0") + len("1000.0") == lines[0].index("grid_kw") + len("grid_kw")  # right-aligned
    short = format_table(["n", "name"], [(i, None) for i in range(5)], max_rows=2).splitlines()
    assert short[-1] == "(5 rows, first 2 shown)" and len(short) == 5
    assert short[2] == "0"  # None is shown as an empty cell


def _action(action_id: str) -> dict:
    return {"action_id": action_id, "kind": "pcs_discharge", "target": "ess-1", "site": "demo", "setpoint_kw": 2000.0,
            "reason": "forecast peak", "expected_effect": "grid -2 MW", "created_ms": T0, "expires_ms": T0 + 3_600_000,
            "proposer": "peaks"}


def test_noc_views_show_the_latest_state_of_incidents_narratives_forecasts_and_actions(settings):
    codec = Codec.default()
    incident = {"incident_id": "inc-1", "site": "demo", "opened_ms": T0, "root_device": "ups-1",
                "root_device_type": "ups", "root_code": "UPS_ON_BATTERY", "member_count": 3, "members": [],
                "summary": "UPS on battery"}
    narrative = {"incident_id": "inc-1", "site": "demo", "citations": [{"sop_id": "SOP-PWR-002", "section": "Steps"}], "grounded": True,
                 "latency_ms": 1.5}
    forecast = {"site": "demo", "horizon_s": 14_400, "step_s": 900, "predicted_peak_kw": 31_400.0,
                "predicted_peak_ms": T0 + 7_200_000, "threshold_kw": 28_000.0, "points": [], "explanation": "peak",
                "model": "m"}
    records = [
        ("incidents", "Incident", {**incident, "updated_ms": T0 + 60_000, "member_count": 5}),
        ("incidents", "Incident", {**incident, "updated_ms": T0}),  # an older version read later
        ("narratives", "Narrative", {**narrative, "ts_ms": T0 + 1, "text": "deterministic", "model": "deterministic"}),
        ("narratives", "Narrative", {**narrative, "ts_ms": T0 + 2, "text": "llm draft", "model": "llm"}),
        ("forecasts.peak", "PeakForecast", {**forecast, "issued_ms": T0}),
        ("forecasts.peak", "PeakForecast", {**forecast, "issued_ms": T0 + 900_000, "predicted_peak_kw": 32_000.0}),
        ("actions.proposed", "Action", _action("a-1")),
        ("actions.proposed", "Action", _action("a-2")),
        ("actions.approved", "ApprovedAction", {"action": _action("a-1"), "verdict": "approved", "reasons": ["ok"],
                                                "policy_version": "1", "decided_ms": T0 + 10}),
        ("actions.results", "ActionResult", {"action_id": "a-1", "target": "ess-1", "status": "executed",
                                             "ts_ms": T0 + 20, "observed_effect": "", "detail": "wrote", "executor": "pcs"}),
        ("actions.results", "ActionResult", {"action_id": "a-1", "target": "ess-1", "status": "verified",
                                             "ts_ms": T0 + 30, "observed_effect": "", "detail": "ok", "executor": "pcs"}),
    ]
    msgs = [Msg(PREFIX + topic, 0, i, codec.encode(record, value)) for i, (topic, record, value) in enumerate(records)]
    sink = ViewsSink(settings)
    sink.write_batch(msgs)
    con = sink.con
    assert con.execute("SELECT member_count FROM v_incidents").fetchall() == [(5,)]
    assert con.execute("SELECT text, grounded FROM v_narratives").fetchall() == [("llm draft", True)]
    assert con.execute("SELECT predicted_peak_kw FROM v_forecasts_latest").fetchall() == [(32_000.0,)]
    assert con.execute("SELECT action_id, verdict, result FROM v_actions ORDER BY action_id").fetchall() == [
        ("a-1", "approved", "verified"), ("a-2", None, None)]


def _encode_released(record: str, version: str, value: dict) -> bytes:
    """A message as a producer still on a released schema version writes it."""
    import io

    import fastavro

    from opsloop.schemas.codec import MARKER, SCHEMA_DIR, load_schema, schema_fingerprint

    schema = load_schema(SCHEMA_DIR / "released" / record / f"{version}.avsc")
    out = io.BytesIO(MARKER + schema_fingerprint(schema))
    out.seek(0, io.SEEK_END)
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), value)
    return out.getvalue()


def _clean_alarm(ts_ms: int, code: str, noise_code: str, state: str = "raise") -> dict:
    alarm = {"ts_ms": ts_ms, "site": "demo", "device": "pdu-1", "device_type": "pdu", "source": "bms",
             "code": "PWR_INPUT_LOSS", "severity": "major", "state": state, "text": "", "attributes": {}}
    return {"alarm": alarm, "fingerprint": "bms|demo|pdu-1|pdu|PWR_INPUT_LOSS", "duplicate_count": 1,
            "first_seen_ms": ts_ms, "last_seen_ms": ts_ms, "flapping": False, "noise_score": 0.1, "noise": False,
            "decision_reason": code.replace("_", " "), "reason_code": code, "noise_reason_code": noise_code}


def test_reason_codes_land_in_their_columns_and_can_be_counted_in_v_reason_codes(settings):
    codec = Codec.default()
    coded = {**_action("a-1"), "reason_code": "shave_peak"}
    old_action = _action("a-old")  # written by a producer on Action v1: no reason code
    records = [
        ("actions.proposed", codec.encode("Action", coded)),
        ("actions.proposed", _encode_released("Action", "v1", old_action)),
        ("actions.approved", codec.encode("ApprovedAction", {
            "action": coded, "verdict": "rejected", "reasons": ["too big", "too fast"],
            "reason_codes": ["over_power_limit", "over_ramp_limit"], "policy_version": "1", "decided_ms": T0 + 10})),
        ("actions.approved", _encode_released("ApprovedAction", "v1", {
            "action": old_action, "verdict": "approved", "reasons": ["ok"], "policy_version": "1",
            "decided_ms": T0 + 20})),
        ("alarms.clean", codec.encode("CleanAlarm", _clean_alarm(T0, "first_raise", "no_labels"))),
        ("alarms.clean", codec.encode("CleanAlarm", _clean_alarm(T0 + 5, "cleared", "no_labels", "clear"))),
        ("alarms.clean", codec.encode("CleanAlarm", _clean_alarm(T0 + 5, "cleared", "no_labels", "clear"))),  # again
    ]
    sink = ViewsSink(settings)
    sink.write_batch([Msg(PREFIX + topic, 0, i, value) for i, (topic, value) in enumerate(records)])
    con = sink.con
    assert con.execute("SELECT action_id, reason_code, verdict_reason_codes FROM v_actions ORDER BY action_id"
                       ).fetchall() == [("a-1", "shave_peak", '["over_power_limit","over_ramp_limit"]'),
                                        ("a-old", None, "[]")]
    counted = con.execute("SELECT decider, decision, reason_code, count(*) FROM v_reason_codes GROUP BY ALL "
                          "ORDER BY ALL").fetchall()
    assert counted == [("dedup", "clear", "cleared", 1), ("dedup", "raise", "first_raise", 1),
                       ("guard", "rejected", "over_power_limit", 1), ("guard", "rejected", "over_ramp_limit", 1),
                       ("noise", "not_flagged", "no_labels", 2), ("peaks", "pcs_discharge", "shave_peak", 1)]
    assert con.execute("SELECT reason FROM v_reason_codes WHERE reason_code = 'over_ramp_limit'").fetchall() == [
        ("too fast",)]


def test_a_file_from_before_reason_codes_gets_their_columns(settings):
    con = open_db(settings.duckdb_file)
    con.execute("ALTER TABLE actions_proposed DROP COLUMN reason_code")
    con.execute("ALTER TABLE alarms_clean DROP COLUMN noise_reason_code")
    con.close()
    sink = ViewsSink(settings)
    sink.write_batch([Msg(PREFIX + "actions.proposed", 0, 0,
                          Codec.default().encode("Action", {**_action("a-1"), "reason_code": "recharge_valley"}))])
    assert sink.con.execute("SELECT reason_code FROM actions_proposed").fetchall() == [("recharge_valley",)]
    assert "noise_reason_code" in [r[0] for r in sink.con.execute("DESCRIBE alarms_clean").fetchall()]


def test_a_raw_time_duckdb_cannot_represent_reads_as_null_instead_of_breaking_the_views(settings, batch):
    codec = Codec.default()
    sink = ViewsSink(settings, dead_letters=lambda *a: pytest.fail(f"unexpected dead letter {a}"))
    extreme = [Msg(PREFIX + "telemetry.raw", 3, i, codec.encode("TelemetryPoint", point(f"pdu-x{i}", "it_kw", ts, 1.0)),
                   key=f"pdu-x{i}".encode()) for i, ts in enumerate([-2**62, 2**62])]
    assert sink.write_batch(batch + extreme) == 9
    rows = dict(sink.con.execute("SELECT device, ts FROM v_telemetry_latest").fetchall())
    assert rows["pdu-x0"] is None and rows["pdu-x1"] is None and rows["pdu-a1"] is not None


# The views' definitions before the writer kept derived tables: every request recomputed them from the records.
RECOMPUTED_SITE_POWER = """
    WITH w AS (SELECT * FROM telemetry_site QUALIFY row_number() OVER (PARTITION BY site, window_start_ms
                                                                        ORDER BY _partition DESC, _offset DESC) = 1)
    SELECT site, date_trunc('minute', event_ts(window_start_ms)) AS minute, avg(grid_kw), avg(it_kw), avg(facility_kw),
           sum(facility_kw) FILTER (WHERE pue IS NOT NULL) / sum(it_kw) FILTER (WHERE pue IS NOT NULL), avg(ess_soc_pct),
           avg(ess_kw), avg(gpu_kw), count(*)
    FROM w GROUP BY ALL ORDER BY site, minute"""
RECOMPUTED_ACTIONS = """
    WITH p AS (SELECT * FROM actions_proposed QUALIFY row_number() OVER (PARTITION BY action_id
                                                                         ORDER BY _partition DESC, _offset DESC) = 1),
    v AS (SELECT json_extract_string(action, '$.action_id') AS action_id, verdict, approved_by FROM actions_approved
          QUALIFY row_number() OVER (PARTITION BY json_extract_string(action, '$.action_id')
                                     ORDER BY decided_ms DESC, _partition DESC, _offset DESC) = 1),
    r AS (SELECT action_id, status, detail FROM actions_results
          QUALIFY row_number() OVER (PARTITION BY action_id ORDER BY ts_ms DESC, _partition DESC, _offset DESC) = 1)
    SELECT action_id, p.setpoint_kw, v.verdict, v.approved_by, r.status, r.detail
    FROM p LEFT JOIN v USING (action_id) LEFT JOIN r USING (action_id) ORDER BY action_id"""


def _messy_batches(codec) -> list[list[Msg]]:
    """Batches as a live run delivers them: windows of one minute split across batches and re-emitted later,
    half-minute windows, a verdict and a result older than the stored ones read after them, a verdict before
    its proposal, a proposal sent again with another setpoint, an alarm's older state read after its newer one."""
    site = lambda start, kw, p=0: ("telemetry.site", "SiteSnapshot", snapshot("demo", start, kw), p)  # noqa: E731
    half = {**snapshot("demo", T0 + 2 * MINUTE_MS + 30_000, 1500.0), "window_end_ms": T0 + 3 * MINUTE_MS}
    verdict = lambda aid, v, ms, by=None: ("actions.approved", "ApprovedAction", {  # noqa: E731
        "action": _action(aid), "verdict": v, "reasons": [v], "policy_version": "1", "decided_ms": ms, "approved_by": by}, 0)
    result = lambda aid, status, ms: ("actions.results", "ActionResult", {  # noqa: E731
        "action_id": aid, "target": "ess-1", "status": status, "ts_ms": ms, "observed_effect": "", "detail": status,
        "executor": "pcs"}, 0)
    batches = [
        [site(T0, 1000.0), site(T0 + MINUTE_MS, 1100.0, 1), site(T0 + 2 * MINUTE_MS, 1200.0),
         ("actions.proposed", "Action", _action("a-1"), 0), verdict("a-2", "needs_approval", T0 + 5),
         ("alarms.clean", "CleanAlarm", _clean_alarm(T0 + 5, "cleared", "no_labels", "clear"), 0)],
        [site(T0 + MINUTE_MS, 1111.0, 1), ("telemetry.site", "SiteSnapshot", half, 0), site(T0 + 9 * MINUTE_MS, 900.0),
         ("actions.proposed", "Action", _action("a-2"), 0), verdict("a-1", "needs_approval", T0 + 10),
         verdict("a-1", "approved", T0 + 20, "ana"), result("a-1", "executed", T0 + 30),
         ("alarms.clean", "CleanAlarm", _clean_alarm(T0, "first_raise", "no_labels"), 0)],  # older, read later
        [site(T0, 999.0), verdict("a-1", "needs_approval", T0 + 15), result("a-1", "verified", T0 + 40),
         result("a-1", "executed", T0 + 35), ("actions.proposed", "Action", {**_action("a-2"), "setpoint_kw": 900.0}, 0),
         ("actions.proposed", "Action", _action("a-3"), 1)],
    ]
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for batch in batches:
        msgs = []
        for topic, record, value, partition in batch:
            offset = offsets.get((topic, partition), 0)
            offsets[(topic, partition)] = offset + 1
            msgs.append(Msg(PREFIX + topic, partition, offset, codec.encode(record, value)))
        out.append(msgs)
    return out


def test_derived_tables_match_the_views_recomputed_from_every_record(settings):
    """The writer updates per-minute power and each action's latest state batch by batch; the views read from them
    show what recomputing from every stored record shows, whatever order the records came in."""
    sink = ViewsSink(settings)
    for batch in _messy_batches(Codec.default()):
        sink.write_batch(batch)
    con = sink.con
    assert con.execute("SELECT * FROM v_site_power ORDER BY site, minute").fetchall() == \
        con.execute(RECOMPUTED_SITE_POWER).fetchall()
    power = con.execute("SELECT grid_kw, windows FROM v_site_power ORDER BY minute").fetchall()
    assert power == [(999.0, 1), (1111.0, 1), (1350.0, 2), (900.0, 1)]  # re-emitted windows count once
    actions = con.execute("SELECT action_id, setpoint_kw, verdict, approved_by, result, result_detail FROM v_actions "
                          "ORDER BY action_id").fetchall()
    assert actions == con.execute(RECOMPUTED_ACTIONS).fetchall()
    assert actions == [("a-1", 2000.0, "approved", "ana", "verified", "verified"),
                       ("a-2", 900.0, "needs_approval", None, None, None), ("a-3", 2000.0, None, None, None, None)]
    recomputed_alarms = con.execute(
        "SELECT fingerprint, json_extract_string(alarm, '$.site'), json_extract_string(alarm, '$.state'), "
        "decision_reason, last_seen_ms FROM alarms_clean QUALIFY row_number() OVER (PARTITION BY fingerprint ORDER BY "
        "last_seen_ms DESC, _partition DESC, _offset DESC) = 1").fetchall()
    assert con.execute("SELECT fingerprint, site, state, decision_reason, last_seen_ms FROM v_alarms_latest"
                       ).fetchall() == recomputed_alarms
    assert recomputed_alarms[0][2:4] == ("clear", "cleared")
    sink.close()


def test_a_file_without_the_derived_tables_gets_them_filled_when_the_writer_opens_it(settings):
    sink = ViewsSink(settings)
    for batch in _messy_batches(Codec.default()):
        sink.write_batch(batch)
    before = sink.con.execute("SELECT * FROM v_site_power ORDER BY ALL").fetchall(), \
        sink.con.execute("SELECT * FROM v_actions ORDER BY ALL").fetchall()
    before += (sink.con.execute("SELECT * FROM v_alarms_latest").fetchall(),)
    for table in ("site_power_minute", "action_proposal_latest", "action_verdict_latest", "action_result_latest",
                  "alarm_latest", "incident_latest", "narrative_latest", "agent_health_latest"):
        sink.con.execute(f"DROP TABLE {table} CASCADE")  # as an older version left the file
    sink.close()
    con = open_db(settings.duckdb_file)
    assert (con.execute("SELECT * FROM v_site_power ORDER BY ALL").fetchall(),
            con.execute("SELECT * FROM v_actions ORDER BY ALL").fetchall(),
            con.execute("SELECT * FROM v_alarms_latest").fetchall()) == before
    con.close()


def _health(instance: str, ts_ms: int, processed: int, lag: int | None = 0) -> dict:
    from opsloop.models.records import agent_health

    return agent_health("guard", "opsloop.guard", instance, ts_ms, 4, lag, processed, 1, ts_ms - 500, ts_ms - 400,
                        ts_ms - 300)


def test_agents_health_shows_each_instances_latest_report_and_its_dead_letters_of_the_last_hour(settings):
    from opsloop.ops.noc_pages import agents

    codec = Codec.default()
    dead = {"topic": "actions.proposed", "partition": 0, "offset": 1, "key": None, "value": b"junk",
            "error_kind": "decode", "error": "not Avro", "agent": "guard", "message_ts_ms": T0}
    messages = [  # (topic, record, value, broker timestamp)
        ("agents.health", "AgentHealth", _health("guard@a/1/x", T0 + 30_000, 12), None),
        ("agents.health", "AgentHealth", _health("guard@a/1/x", T0 + 15_000, 5), None),  # older, read later
        ("agents.health", "AgentHealth", _health("guard@b/2/y", T0 - 120_000, 3, None), None),  # silent for 150 s
        ("agents.health", "AgentHealth", _health("guard@c/3/z", T0 - 3_600_000, 1), None),  # replaced long ago
        ("deadletter", "DeadLetter", dead, T0 - 4_000_000),  # more than an hour before the report
        ("deadletter", "DeadLetter", {**dead, "offset": 2}, T0),
        ("deadletter", "DeadLetter", {**dead, "offset": 2}, T0 + 1),  # the same message again: counted once
        ("deadletter", "DeadLetter", {**dead, "offset": 3, "agent": "dedup"}, T0),
    ]
    sink = ViewsSink(settings)
    sink.write_batch([Msg(PREFIX + topic, 0, i, codec.encode(record, value), ts=ts)
                      for i, (topic, record, value, ts) in enumerate(messages)])
    rows = {r["instance"]: r for r in agents(sink.con.cursor())}
    assert set(rows) == {"guard@a/1/x", "guard@b/2/y"}
    now = rows["guard@a/1/x"]
    assert (now["status"], now["processed"], now["lag"], now["dead_letters_1h"], now["group"]) == \
        ("reporting", 12, 0, 1, "opsloop.guard")
    assert (rows["guard@b/2/y"]["status"], rows["guard@b/2/y"]["silent_s"], rows["guard@b/2/y"]["lag"]) == \
        ("silent", 150, None)
    sink.close()
