"""Replay source without a broker: spec loading, CSV/Parquet reading, point values, pacing."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without the repo root on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import SiteError, load_site
from opsloop.connectors.replay import (ReplayDataError, ReplaySpec, ReplayStats, ReplayStream, iter_points, read_table,
                                       replay, replay_spec)
from opsloop.config.settings import Settings
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.unit

DEMO = DEMO_SITE
DAY1 = REPO_ROOT / "tests" / "data" / "taylor_day1.csv"
START_MS = 960163200000  # 2000-06-05T00:00:00Z
HALF_HOUR_MS = 1_800_000


@pytest.fixture(scope="module")
def spec() -> ReplaySpec:
    return replay_spec(load_site(DEMO))


@pytest.fixture(scope="module")
def demand() -> list[float]:
    return [float(line.split(",")[1]) for line in DAY1.read_text().splitlines()[1:]]


def by_metric(points: list[dict], metric: str) -> dict[str, float]:
    return {p["device"]: p["value"] for p in points if p["metric"] == metric}


def test_demo_spec_loads(spec):
    assert spec.site == "demo" and spec.time_column == "timestamp"
    assert len(spec.streams) >= 15
    assert spec.columns == ["demand_mw"]
    pdus = [s for s in spec.streams if s.metric == "it_kw"]
    assert sorted(s.device for s in pdus) == [f"pdu-{h}{i}" for h in "ab" for i in range(1, 5)]
    assert {(s.device, s.metric, s.constant) for s in spec.streams if s.column is None} == {
        ("ess-1", "ess_soc_pct", 80.0), ("ess-1", "ess_soh_pct", 97.0), ("ess-1", "ess_kw", 0.0)}


def test_demo_topology_matches_replay(spec):
    site = load_site(DEMO)
    shares = {p.id: p.share for p in site.pdus}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)
    for s in spec.streams:
        if s.metric == "it_kw":  # scale and offset derived from the PDU's share
            assert s.scale == pytest.approx(shares[s.device] / 1.12, rel=1e-12)
            assert s.offset == pytest.approx(-1339.2857 * shares[s.device], abs=1e-9)
    assert sum(p.it_share for p in site.gpu_pods) == pytest.approx(0.72)
    ess = site.ess[0]
    assert (ess.id, ess.capacity_kwh, ess.pcs_charge_kw, ess.pcs_discharge_kw) == ("ess-1", 10000, 5000, 5000)


def write_site(tmp_path: Path, streams: list) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"site": {"id": "t"}, "replay": {"time_column": "timestamp", "streams": streams}}))
    return path


GOOD = {"device": "m1", "device_type": "grid_meter", "metric": "grid_kw", "unit": "kW", "column": "demand_mw"}


@pytest.mark.parametrize("bad, message", [
    ({k: v for k, v in GOOD.items() if k != "unit"}, "unit missing"),
    ({**GOOD, "constant": 1}, "exactly one of column"),
    ({k: v for k, v in GOOD.items() if k != "column"}, "exactly one of column"),
    ({**GOOD, "scale": "2x"}, "scale must be a finite number"),
    ({**GOOD, "colum": "x"}, "unknown keys ['colum']"),
    ("grid_kw", "expected a mapping"),
])
def test_bad_entry_names_file_and_entry(tmp_path, bad, message):
    path = write_site(tmp_path, [GOOD, bad])
    with pytest.raises(SiteError) as err:
        load_site(path)
    assert str(path) in str(err.value) and "replay.streams[1]" in str(err.value) and message in str(err.value)


def test_duplicate_and_missing_block(tmp_path):
    with pytest.raises(SiteError, match="duplicate"):
        load_site(write_site(tmp_path, [GOOD, GOOD]))
    (tmp_path / "empty.yaml").write_text("site: {id: t}\n")
    with pytest.raises(SiteError, match="empty.yaml: replay: missing block"):
        replay_spec(load_site(tmp_path / "empty.yaml"))


def test_day1_values(spec, demand):
    table = read_table(DAY1, spec.time_column)
    rows = list(iter_points(spec, table))
    assert [ts for ts, _ in rows] == [START_MS + i * HALF_HOUR_MS for i in range(48)]
    for (ts, points), mw in zip(rows, demand):
        assert len(points) == len(spec.streams)
        assert {(p["site"], p["source"], p["ts_ms"]) for p in points} == {("demo", "replay", ts)}
        assert by_metric(points, "grid_kw") == {"grid-meter-1": mw}
        assert by_metric(points, "facility_kw") == {"facility-meter-1": mw}
        it_kw = mw / 1.12 - 1339.2857
        pdus = by_metric(points, "it_kw")
        assert len(pdus) == 8 and sum(pdus.values()) == pytest.approx(it_kw, abs=1e-6)
        gpus = by_metric(points, "gpu_kw")
        assert len(gpus) == 4 and sum(gpus.values()) == pytest.approx(0.72 * it_kw, abs=1e-6)
        assert 1.16 < mw / it_kw < 1.22  # PUE


def test_points_encode(spec):
    _, points = next(iter_points(spec, read_table(DAY1)))
    codec = Codec.default()
    assert all(codec.decode_as("TelemetryPoint", codec.encode("TelemetryPoint", p)) == p for p in points)


def test_nan_and_null_cells_are_skipped_and_counted(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("timestamp,a,b\n2000-06-05T00:00:00,1,10\n2000-06-05T00:30:00,NaN,20\n2000-06-05T01:00:00,3,\n")
    spec = ReplaySpec("t", "timestamp", (ReplayStream("d1", "pdu", "it_kw", "kW", column="a"),
                                         ReplayStream("d2", "pdu", "it_kw", "kW", column="b", scale=2.0, offset=1.0)))
    stats = ReplayStats()
    rows = [[(p["device"], p["value"]) for p in points] for _, points in iter_points(spec, read_table(path), stats=stats)]
    assert rows == [[("d1", 1.0), ("d2", 21.0)], [("d2", 41.0)], [("d1", 3.0)]]
    assert (stats.rows, stats.points, stats.skipped) == (3, 4, 2)
    assert (stats.first_ts_ms, stats.last_ts_ms) == (START_MS, START_MS + 2 * HALF_HOUR_MS)
    # a real float NaN (CSV readers turn "NaN" into null; Parquet keeps it)
    pq.write_table(pa.table({"timestamp": ["2000-06-05T00:00:00", "2000-06-05T00:30:00"],
                             "a": [float("nan"), 2.0], "b": [1.0, float("nan")]}), tmp_path / "gaps.parquet")
    stats = ReplayStats()
    rows = [[p["device"] for p in points] for _, points in iter_points(spec, read_table(tmp_path / "gaps.parquet"), stats=stats)]
    assert rows == [["d2"], ["d1"]] and stats.skipped == 2


def test_parquet_gives_same_points_as_csv(spec, tmp_path):
    table = read_table(DAY1)  # int64 ms; write real timestamps, shuffled, to test parsing and sorting
    ts = pa.array(table["timestamp"].to_pylist(), pa.int64()).cast(pa.timestamp("ms"))
    written = pa.table({"timestamp": ts, "demand_mw": table["demand_mw"]}).take(list(range(47, -1, -1)))
    pq.write_table(written, tmp_path / "day1.parquet")
    from_parquet = list(iter_points(spec, read_table(tmp_path / "day1.parquet")))
    assert from_parquet == list(iter_points(spec, read_table(DAY1)))


def test_time_zones_and_sorting(tmp_path):
    path = tmp_path / "tz.csv"  # mixed offsets: Arrow leaves strings, parsed one by one
    path.write_text("timestamp,v\n2000-06-05T02:00:00+01:00,2\n2000-06-05T00:00:00,0\n2000-06-05T00:30:00Z,1\n")
    table = read_table(path)
    assert table["timestamp"].to_pylist() == [START_MS, START_MS + HALF_HOUR_MS, START_MS + 2 * HALF_HOUR_MS]
    assert table["v"].to_pylist() == [0, 1, 2]


def test_days_and_start_limit(spec):
    assert read_table(DAY1, days=0.25).num_rows == 12
    later = read_table(DAY1, start="2000-06-05T12:00:00", days=1 / 24)
    assert later["timestamp"].to_pylist() == [START_MS + 24 * HALF_HOUR_MS, START_MS + 25 * HALF_HOUR_MS]
    aware = read_table(DAY1, start=datetime(2000, 6, 5, 23, tzinfo=timezone.utc))
    assert aware.num_rows == 2
    assert read_table(DAY1, start="2001-01-01").num_rows == 0


def test_missing_columns_and_formats(tmp_path):
    with pytest.raises(ReplayDataError, match="no column 'load'; available: timestamp, demand_mw"):
        read_table(DAY1, columns=["load"])
    with pytest.raises(ReplayDataError, match="no column 'time'"):
        read_table(DAY1, "time")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ReplayDataError, match="expected .csv or .parquet"):
        read_table(tmp_path / "x.json")
    (tmp_path / "bad.csv").write_text("timestamp,v\nyesterday,1\n")
    with pytest.raises(ReplayDataError, match="not ISO 8601"):
        read_table(tmp_path / "bad.csv")


class FakeProducer:
    """Stands in for confluent_kafka.Producer: records messages, delivers them on flush."""

    def __init__(self):
        self.sent, self.pending, self.polls = [], [], 0

    def produce(self, topic, key=None, value=None, on_delivery=None):
        self.pending.append((topic, key, value, on_delivery))

    def poll(self, timeout=0):
        self.polls += 1
        return 0

    def flush(self, timeout=None):
        for topic, key, value, cb in self.pending:
            self.sent.append((topic, key, value))
            cb(None, None)
        self.pending.clear()
        return 0


def test_replay_produces_keyed_encoded_points(spec):
    prod, lines = FakeProducer(), []
    stats = replay(Settings(topic_prefix="t."), spec, DAY1, days=0.5, producer=prod, progress=lines.append)
    assert (stats.rows, stats.points, stats.skipped) == (24, 24 * len(spec.streams), 0)
    assert len(prod.sent) == stats.points and prod.polls >= stats.rows
    codec = Codec.default()
    for topic, key, value in prod.sent:
        point = codec.decode_as("TelemetryPoint", value)
        assert topic == "t.telemetry.raw" and key == point["site"].encode()  # the catalog keys raw telemetry by site
    assert lines and lines[-1].startswith("replay demo: 24/24 rows (100%)") and "points/s" in lines[-1]


def test_replay_paces_event_time(spec):
    # 3 rows span 1 h of event time; at 36,000x that is 0.1 s of wall time
    stats = replay(Settings(), spec, DAY1, days=1.5 / 24, speedup=36_000, producer=FakeProducer())
    assert stats.rows == 3 and 0.09 <= stats.wall_s < 1.0
    fast = replay(Settings(), spec, DAY1, days=1.5 / 24, producer=FakeProducer())
    assert fast.wall_s < 0.09
