"""Replay source: streams a recorded CSV or Parquet time series into ``telemetry.raw``.

The site file's ``replay:`` block maps table columns to device metrics
(value = column x scale + offset, or a constant). Event time comes from the
table's time column; ``speedup`` only paces the wall clock.

>>> stream = ReplayStream("grid-meter-1", "grid_meter", "grid_kw", "kW", column="demand_mw")
>>> spec = ReplaySpec("demo", "timestamp", (stream,))
>>> table = pa.table({"timestamp": ["2000-06-05T00:00:00"], "demand_mw": [22262]})
>>> [(ts, [p["value"] for p in points]) for ts, points in iter_points(spec, read_table_from(table, "timestamp"))]
[(960163200000, [22262.0])]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from opsloop.config.settings import Settings
from opsloop.config.site import ReplaySpec, ReplayStream, Site

DAY_MS = 86_400_000
PROGRESS_EVERY_S = 2.0


class ReplayDataError(ValueError):
    """The data file does not fit the replay spec (missing column, bad time values)."""


@dataclass
class ReplayStats:
    rows: int = 0
    points: int = 0
    skipped: int = 0  # null/NaN cells: one point each, not produced
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None
    wall_s: float = 0.0


def replay_spec(site: Site) -> ReplaySpec:
    """The site's ``replay:`` mapping; an error naming the file when it has none."""
    if site.replay is None:
        raise site.error("replay", "missing block (time_column, streams)")
    return site.replay


def read_table(data: Path, time_column: str = "timestamp", *, columns=(), start=None, days=None) -> pa.Table:
    """Read ``.csv`` or ``.parquet``; time column as int64 ms UTC, rows sorted by time, range limited."""
    data = Path(data)
    suffix = data.suffix.lower()
    if suffix == ".csv":
        import pyarrow.csv as pacsv
        table = pacsv.read_csv(data)
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq
        table = pq.read_table(data)
    else:
        raise ReplayDataError(f"{data}: unknown format {suffix!r}; expected .csv or .parquet")
    return read_table_from(table, time_column, columns=columns, start=start, days=days, name=str(data))


def read_table_from(table: pa.Table, time_column: str, *, columns=(), start=None, days=None, name="table") -> pa.Table:
    missing = [c for c in [time_column, *columns] if c not in table.column_names]
    if missing:
        raise ReplayDataError(f"{name}: no column {', '.join(map(repr, missing))}; available: {', '.join(table.column_names)}")
    ts = _to_ms(table[time_column], f"{name}: column {time_column!r}")
    table = table.set_column(table.column_names.index(time_column), time_column, ts)
    table = table.take(pc.sort_indices(ts))  # stable: equal times keep file order
    if start is not None:
        table = table.filter(pc.greater_equal(table[time_column], _start_ms(start)))
    if days is not None and not days > 0:
        raise ValueError(f"days must be > 0, got {days}")
    if days is not None and table.num_rows:
        begin = _start_ms(start) if start is not None else table[time_column][0].as_py()
        table = table.filter(pc.less(table[time_column], begin + int(days * DAY_MS)))
    return table


def _to_ms(col: pa.ChunkedArray, where: str) -> pa.ChunkedArray:
    if col.null_count:
        raise ReplayDataError(f"{where}: {col.null_count} rows without a time")
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        # mixed or unusual ISO 8601 forms that Arrow did not infer: parse one by one
        try:
            col = pa.array([_parse_time(s) for s in col.to_pylist()], pa.timestamp("ms", "UTC"))
        except ValueError as exc:
            raise ReplayDataError(f"{where}: not ISO 8601: {exc}") from exc
    elif not pa.types.is_timestamp(col.type):
        raise ReplayDataError(f"{where}: expected ISO 8601 strings or timestamps, got {col.type}")
    # a naive timestamp's wall value is read as UTC, which is exactly its stored value
    return pc.cast(pc.cast(col, pa.timestamp("ms", col.type.tz), safe=False), pa.int64())  # sub-ms dropped


def _parse_time(value) -> datetime:
    if not isinstance(value, (str, datetime)):
        raise ValueError(f"expected an ISO 8601 string or a datetime, got {value!r}")
    t = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


def _start_ms(start) -> int:
    return int(_parse_time(start).timestamp() * 1000)


def iter_points(spec: ReplaySpec, table: pa.Table, source: str = "replay",
                stats: ReplayStats | None = None) -> Iterator[tuple[int, list[dict]]]:
    """Yield (ts_ms, TelemetryPoint dicts) per row; a null/NaN cell skips that point, counted in ``stats``."""
    stats = stats if stats is not None else ReplayStats()
    missing = [c for c in spec.columns if c not in table.column_names]
    if missing:
        raise ReplayDataError(f"no column {', '.join(map(repr, missing))}; available: {', '.join(table.column_names)}")
    for batch in table.to_batches(max_chunksize=10_000):
        times = batch.column(spec.time_column).to_pylist()
        values = [_values(batch, s, len(times)) for s in spec.streams]
        for row, ts in enumerate(times):
            points = []
            for s, vals in zip(spec.streams, values):
                v = vals[row]
                if v is None or math.isnan(v):
                    stats.skipped += 1
                    continue
                points.append({"ts_ms": ts, "site": spec.site, "device": s.device, "device_type": s.device_type,
                               "metric": s.metric, "value": v, "unit": s.unit, "source": source})
            stats.rows += 1
            stats.points += len(points)
            stats.first_ts_ms = ts if stats.first_ts_ms is None else stats.first_ts_ms
            stats.last_ts_ms = ts
            yield ts, points


def _values(batch: pa.RecordBatch, s: ReplayStream, n: int) -> list:
    if s.constant is not None:
        return [s.constant] * n
    col = batch.column(s.column)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type)):
        raise ReplayDataError(f"column {s.column!r} is {col.type}, expected numbers (stream {s.device} {s.metric})")
    return pc.add(pc.multiply(col.cast(pa.float64()), s.scale), s.offset).to_pylist()


def replay(settings: Settings, spec: ReplaySpec, data: Path, *, speedup: float | None = None, start=None,
           days: float | None = None, progress: Callable[[str], None] | None = None, producer=None) -> ReplayStats:
    """Produce every point to telemetry.raw keyed by device; speedup = event seconds per wall second."""
    from opsloop.connectors.kafka import DeliveryErrors, producer as make_producer, send, wait_delivered
    from opsloop.schemas.codec import Codec

    if speedup is not None and speedup <= 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    table = read_table(data, spec.time_column, columns=spec.columns, start=start, days=days)
    prod = producer if producer is not None else make_producer(settings)
    from opsloop.config.catalog import cached_catalog

    raw = cached_catalog(settings.topics_file)["telemetry.raw"]
    topic, encode, errors = settings.topic(raw.name), Codec.default().encode, DeliveryErrors()
    stats, total = ReplayStats(), table.num_rows
    began = last_report = time.monotonic()

    def report() -> None:
        elapsed = max(time.monotonic() - began, 1e-9)
        pct = 100.0 * stats.rows / total if total else 100.0
        skipped = f", {stats.skipped} skipped (null/NaN)" if stats.skipped else ""
        progress(f"replay {spec.site}: {stats.rows}/{total} rows ({pct:.0f}%), {stats.points} points, "
                 f"{stats.points / elapsed:,.0f} points/s{skipped}")

    for ts, points in iter_points(spec, table, stats=stats):
        if speedup is not None:
            due = began + (ts - stats.first_ts_ms) / 1000.0 / speedup
            while (wait := due - time.monotonic()) > 0:
                prod.poll(min(wait, 0.5))  # serve delivery callbacks while pacing
        for p in points:
            send(prod, topic, raw.key_of(p), encode(raw.record, p), errors)
        prod.poll(0)
        errors.raise_if_any()
        if progress is not None and time.monotonic() - last_report >= PROGRESS_EVERY_S:
            report()
            last_report = time.monotonic()
    wait_delivered(prod, None)  # a broker restart is waited out; the producer's own timeout bounds it
    errors.raise_if_any()
    stats.wall_s = time.monotonic() - began
    if progress is not None:
        report()
    return stats
