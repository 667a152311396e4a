"""The load curves the peaks evaluation judges on: Taylor, NAB series with a daily shape, BDEW standard profiles.

Each curve is ``(name, family, times_ms, values, step_s)`` on a regular grid of
billing intervals (``peaks.regular_steps``):

* ``taylor``: half-hourly demand of England and Wales, summer 2000 (J. W. Taylor,
  2003; as shipped in pmdarima, MIT), from the shared data folder or the slice in
  ``ops/data``;
* ``nab``: every Numenta Anomaly Benchmark series (MIT) that looks like a load:
  no negative values, at least ``MIN_DAYS`` days, and a day-to-day autocorrelation of at
  least ``DAILY_SHAPE_MIN`` (a daily shape);
* ``bdew``: the German BDEW standard load profiles (commercial g0-g6, household h0,
  agriculture l0-l2) made by the ``demandlib`` package (MIT) from its bundled tables,
  with the German public holidays, which the profiles bill as Sundays. Nothing is
  downloaded;
* ``simbench`` (only when asked for): twelve German load profiles of 2016 from the SimBench
  benchmark data set (University of Kassel, TU Dortmund, RWTH Aachen, Fraunhofer IEE; Open
  Database License 1.0), read from the ``simbench`` wheel that ``make simbench-data`` downloads
  into the cache (the data is not redistributed here). Grid-level mixes (HV, MV, LV), commercial,
  agricultural and heat-pump profiles, over autumn and Christmas, with the German public holidays:
  shapes and a season none of the other curves has, kept as fresh curves to judge the planner on.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import zipfile
from pathlib import Path

from opsloop.ops.evals.peaks import read_series, regular_steps

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
DAILY_SHAPE_MIN = 0.5
MIN_DAYS = 10
BDEW_PROFILES = ("g0", "g1", "g2", "g3", "g4", "g5", "g6", "h0", "l0", "l1", "l2")
# 14 weeks of spring 2023: Good Friday, Easter Monday, 1 May, Ascension and Whit Monday fall inside.
BDEW_YEAR, BDEW_FIRST, BDEW_DAYS = 2023, dt.date(2023, 3, 6), 98
GERMAN_HOLIDAYS_2023 = (dt.date(2023, 1, 1), dt.date(2023, 4, 7), dt.date(2023, 4, 10), dt.date(2023, 5, 1),
                        dt.date(2023, 5, 18), dt.date(2023, 5, 29), dt.date(2023, 10, 3), dt.date(2023, 12, 25),
                        dt.date(2023, 12, 26))
FAMILIES = ("taylor", "nab", "bdew")
SIMBENCH_VERSION = "1.6.3"
SIMBENCH_TABLE = "simbench/networks/1-complete_data-mixed-all-0-sw/LoadProfile.csv"
# Fixed before any was scored: HV/MV/LV grid mixes, commercial, agriculture, heat pumps (active power columns).
SIMBENCH_PROFILES = ("hv_mixed1", "hv_urban", "mv_comm", "mv_urban", "mv_rural", "mv_semiurb", "lv_urban6",
                     "lv_rural1", "H0-G", "G1-B", "G4-M", "L2-M", "WB-H", "BL-H")
# 14 weeks from a Monday to the table's end: German Unity Day and Christmas fall inside.
SIMBENCH_FIRST, SIMBENCH_END = dt.datetime(2016, 9, 26), dt.datetime(2017, 1, 1)
# Whose public holidays each family's load keeps (a site file's ``country``): England and Wales, Germany (the
# holidays the BDEW profiles are made with); the NAB series do not say where they were measured.
COUNTRIES = {"taylor": "GB-ENG", "nab": None, "bdew": "DE", "simbench": "DE"}


def simbench_wheel(cache_dir: Path) -> Path:
    """Where ``make simbench-data`` puts the SimBench wheel."""
    return cache_dir / "simbench" / f"simbench-{SIMBENCH_VERSION}-py3-none-any.whl"


def curves(families=FAMILIES, shared: Path = SHARED,
           cache_dir: Path | None = None) -> list[tuple[str, str, list[int], list[float], int]]:
    out = []
    if "taylor" in families:
        path = shared / "taylor" / "demand_mw.csv"
        out.append(("taylor", "taylor", *_regular(path if path.exists() else
                                                  ROOT / "ops" / "data" / "taylor_demand_mw.csv")))
    if "nab" in families and (shared / "nab" / "data").is_dir():
        for path in sorted((shared / "nab" / "data").glob("*/*.csv")):
            times, values, step_s = _regular(path)
            if has_daily_shape(times, values, step_s):
                out.append((f"nab/{path.parent.name}/{path.stem}", "nab", times, values, step_s))
    if "bdew" in families:
        out += bdew_curves()
    if "simbench" in families:
        if cache_dir is None:
            from opsloop.config.settings import Settings
            cache_dir = Settings.from_env().cache_dir
        wheel = simbench_wheel(cache_dir)
        if not wheel.exists():
            raise FileNotFoundError(f"the simbench family reads {wheel}: run `make simbench-data` first")
        out += simbench_curves(wheel)
    return out


def _regular(path: Path) -> tuple[list[int], list[float], int]:
    times, values, _ = read_series(path)
    step_s, times, values, _ = regular_steps(times, values)
    return times, values, step_s


def has_daily_shape(times: list[int], values: list[float], step_s: int) -> bool:
    """A load-like series: no negative value, ``MIN_DAYS`` long, and a day-lag autocorrelation >= ``DAILY_SHAPE_MIN``."""
    day = 86_400 // step_s
    if min(values) < 0 or len(values) * step_s < MIN_DAYS * 86_400:
        return False
    a, b = values[:-day], values[day:]
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    var = math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    return var > 0 and cov / var >= DAILY_SHAPE_MIN


def bdew_curves(profiles=BDEW_PROFILES) -> list[tuple[str, str, list[int], list[float], int]]:
    import warnings

    from demandlib import bdew

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = bdew.ElecSlp(BDEW_YEAR, holidays={d: "holiday" for d in GERMAN_HOLIDAYS_2023}).get_profiles(
            *profiles)
    first = dt.datetime(BDEW_FIRST.year, BDEW_FIRST.month, BDEW_FIRST.day)
    frame = frame[(frame.index >= first) & (frame.index < first + dt.timedelta(days=BDEW_DAYS))]
    times = [int(ts.replace(tzinfo=dt.timezone.utc).timestamp() * 1000) for ts in frame.index]
    return [(f"bdew/{p}", "bdew", times, [float(v) for v in frame[p]], 900) for p in profiles]


def simbench_curves(wheel: Path, profiles=SIMBENCH_PROFILES) -> list[tuple[str, str, list[int], list[float], int]]:
    """The ``profiles`` (active power) of the SimBench load table in ``wheel`` over the fixed window, 15-minute
    steps; a profile without a daily shape (``has_daily_shape``) is left out, as NAB's are."""
    times, columns = [], {p: [] for p in profiles}
    with zipfile.ZipFile(wheel) as archive, archive.open(SIMBENCH_TABLE) as raw:
        rows = csv.reader(io.TextIOWrapper(raw, encoding="utf-8"), delimiter=";")
        head = next(rows)
        where = {p: head.index(f"{p}_pload") for p in profiles}
        for row in rows:
            start = dt.datetime.strptime(row[0], "%d.%m.%Y %H:%M")
            if SIMBENCH_FIRST <= start < SIMBENCH_END:
                times.append(int(start.replace(tzinfo=dt.timezone.utc).timestamp() * 1000))
                for p, i in where.items():
                    columns[p].append(float(row[i]))
    return [(f"simbench/{p}", "simbench", times, values, 900) for p, values in columns.items()
            if has_daily_shape(times, values, 900)]
