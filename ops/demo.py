"""`opsloop demo`: the main job end to end on bundled real data, then a short summary.

Starts the local Kafka unless one is running, replays the demo site into
``telemetry.raw`` on topics of its own (a fresh prefix per run, deleted at the
end), runs the rollup and the views agent until caught up, prints what came
out, and stops what it started.
"""

from __future__ import annotations

import time
from pathlib import Path

from opsloop.config.settings import Settings


STORM_START_MS = 960_163_200_000 + 2 * 86_400_000 + 9 * 3_600_000  # 2000-06-07 09:00 UTC, inside the replayed week


def run_demo(settings: Settings, data: Path, days: float, secure: bool = False) -> int:
    from opsloop.connectors.duckdb import query
    from opsloop.config.site import load_site
    from opsloop.connectors.replay import replay, replay_spec
    from opsloop.ops.demo_peaks import run_peaks, summary_lines
    from opsloop.ops.alarm_demo import replay_storm, summary_lines as alarm_summary
    from opsloop.ops.kafka import scratch_topics
    from opsloop.streams import worker

    demo_dir = settings.data_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    (demo_dir / "opsloop.duckdb").unlink(missing_ok=True)
    with scratch_topics(settings, f"demo-{time.strftime('%Y%m%d%H%M%S')}.", secure=secure) as demo:
        demo = demo.replace(data_dir=demo_dir, duckdb_path=demo_dir / "opsloop.duckdb", idle_close_s=3.0)
        site = load_site(demo.topology)
        spec = replay_spec(site)
        t0 = time.monotonic()
        stats = replay(demo, spec, data, days=days)
        _send_corrupt_message(demo)
        t1 = time.monotonic()
        rollup = worker.run(demo, ["rollup"], exit_when_idle=True, site=site)["rollup"]
        # the bundled data is half-hourly
        peaks = run_peaks(demo.replace(peaks_step_s=1800), site, rollup["snapshots"])
        t2 = time.monotonic()
        storm = replay_storm(demo, site, start_ms=STORM_START_MS)  # an alarm storm next to the power data
        t_storm = time.monotonic()
        views = worker.run(demo, ["views"], exit_when_idle=True, site=site)["views"]
        t3 = time.monotonic()
        _, [(minutes, first, last, mean_pue, mean_it)] = query(demo.duckdb_file, """
            SELECT count(*), min(minute), max(minute), avg(pue), avg(it_kw) FROM v_site_power""")
        _, [(peak_kw, peak_at)] = query(demo.duckdb_file, """
            SELECT grid_kw, minute FROM v_site_power ORDER BY grid_kw DESC, minute LIMIT 1""")
        _, dead = query(demo.duckdb_file, "SELECT topic, error_kind, error, agents FROM v_deadletter")
        print(f"\nopsloop demo: site {spec.site}, {days:g} days of real grid load "
              f"(England & Wales demand 2000, J. W. Taylor 2003; national MW / 1000 = site MW)")
        print(f"  replay   {stats.rows:,} rows -> {stats.points:,} telemetry points in {t1 - t0:.1f} s")
        # Each stage runs until its input has been idle for idle_close_s: that wait is in its time.
        print(f"  rollup   {rollup['points']:,} points -> {rollup['snapshots']:,} site windows "
              f"({demo.window_s} s) in {t2 - t1 - peaks['wall_s']:.1f} s")
        print(f"  storm    {storm['failures']} injected failures ({', '.join(r for _, r in storm['roots'])}) "
              f"through dedup + correlate in {t_storm - t2:.1f} s")
        print("\n".join(alarm_summary(demo.duckdb_file)))
        print(f"  views    {sum(views['rows'].values()):,} rows into DuckDB {demo.duckdb_file} in {t3 - t_storm:.1f} s")
        print(f"  period   {first} .. {last} UTC, {minutes:,} minutes with data")
        print(f"  peak     grid import {peak_kw:,.0f} kW at {peak_at} UTC")
        print("\n".join(summary_lines(peaks)))
        print(f"  PUE      mean {mean_pue:.3f}; mean IT load {mean_it:,.0f} kW")
        print(f"  dead letters kept: {len(dead)}" + "".join(f"\n    {t}: {k}: {e} (seen by {a})" for t, k, e, a in dead))
        print(f"\nExplore: OPSLOOP_DUCKDB_PATH={demo.duckdb_file} opsloop sql \"SELECT * FROM v_site_power LIMIT 10\"")
        print(f"NOC:     opsloop noc user add NAME --role admin (once), then OPSLOOP_DUCKDB_PATH={demo.duckdb_file} "
              f"opsloop noc, and open http://127.0.0.1:{settings.noc_port}/")
        _actuation(settings, demo_dir, secure)
    return 0


def _actuation(settings: Settings, demo_dir: Path, secure: bool = False) -> None:
    """Guard-railed actuation on topics of its own (live simulator telemetry, not the replayed week)."""
    from opsloop.ops.actuation_demo import run_actuation_demo
    from opsloop.ops.kafka import scratch_topics

    with scratch_topics(settings, f"demo-act-{time.strftime('%Y%m%d%H%M%S')}.", secure=secure) as act:
        run_actuation_demo(act.replace(data_dir=demo_dir))


def _send_corrupt_message(settings: Settings) -> None:
    """One deliberately corrupt message, to show that bad input is kept, not dropped."""
    from opsloop.connectors.kafka import producer, wait_delivered

    prod = producer(settings)
    prod.produce(settings.topic("telemetry.raw"), key=b"pdu-a1", value=b"\xc3\x01corrupt")
    wait_delivered(prod)
