"""The demo's alarm storm: failures injected into the demo site's topology, replayed through
dedup and correlate next to the power data, then counted from DuckDB.

The storm goes to one partition of ``alarms.raw``: a backlog spread over partitions would be
read partition by partition, far out of event-time order, and correlation assumes alarms
arrive roughly in time order (live sources do).
"""

from __future__ import annotations

import threading
import time

from ops.settings import Settings

DEADLINE_S = 300.0


def replay_storm(settings: Settings, start_ms: int, seed: int = 0) -> dict:
    """Sends a storm corpus to ``alarms.raw`` and runs dedup + correlate until all of it is folded in."""
    from connectors.kafka import producer, send, wait_delivered
    from models.storm import generate_storm
    from models.topology import load_topology
    from schemas.codec import Codec

    topology = load_topology(settings.topology)
    storm = generate_storm(topology, seed=seed, start_ms=start_ms)
    codec, prod = Codec.default(), producer(settings)
    for alarm, _ in storm.alarms:
        prod.produce(settings.topic("alarms.raw"), key=alarm["device"].encode(), value=codec.encode("Alarm", alarm),
                     partition=0)
        prod.poll(0)
    wait_delivered(prod)
    del prod
    t0 = time.monotonic()
    stats = run_filter_until_caught_up(settings, len(storm.alarms))
    return {**stats, "failures": len(storm.failures), "seconds": time.monotonic() - t0,
            "roots": [(f.kind, f.root) for f in storm.failures]}


def run_filter_until_caught_up(settings: Settings, raw_alarms: int) -> dict:
    """Runs the dedup and correlate agents until ``raw_alarms`` were taken and every clean alarm folded in."""
    import logging

    from streams.worker import run

    stop, apps = threading.Event(), []

    def monitor(app, settings: Settings) -> None:
        apps.append(app)

    def control() -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not stop.is_set() and time.monotonic() < deadline:
            stats = apps[0].__dict__.get("opsloop_stats", {}) if apps else {}
            if stats.get("raw", 0) >= raw_alarms and stats.get("clean_in", 0) >= stats.get("clean", 1):
                break
            time.sleep(0.05)
        stop.set()

    quiet = {name: logging.getLogger(name) for name in ("faust", "mode", "aiokafka")}
    levels = {name: log.level for name, log in quiet.items()}
    controller = threading.Thread(target=control)
    try:
        for log in quiet.values():
            log.setLevel(logging.ERROR)
        controller.start()
        run(settings, ["dedup", "correlate"], stop=stop, faust_agents={"demo-monitor": monitor})
    finally:
        stop.set()
        controller.join()
        for name, log in quiet.items():
            log.setLevel(levels[name])
    stats = dict(apps[0].opsloop_stats) if apps else {}
    if stats.get("raw", 0) < raw_alarms:
        raise RuntimeError(f"the alarm filter took {stats.get('raw', 0):,} of {raw_alarms:,} alarms "
                           f"within {DEADLINE_S:.0f} s")
    return stats


def summary_lines(duckdb_file) -> list[str]:
    from connectors.duckdb_sink import query

    _, [(raw,)] = query(duckdb_file, "SELECT count(*) FROM alarms_raw")
    _, [(clean, noisy, flapping)] = query(duckdb_file, """
        SELECT count(*), count(*) FILTER (WHERE noise), count(*) FILTER (WHERE flapping) FROM alarms_clean""")
    _, rows = query(duckdb_file, """
        WITH latest AS (
            SELECT * FROM incidents
            QUALIFY row_number() OVER (PARTITION BY incident_id ORDER BY _partition DESC, _offset DESC) = 1)
        SELECT root_device_type, root_device, root_code, member_count, state FROM latest
        WHERE merged_into IS NULL ORDER BY member_count DESC, incident_id""")
    lines = [f"  alarms   {raw:,} raw -> {clean:,} clean ({flapping:,} flapping, {noisy:,} flagged noise) "
             f"-> {len(rows):,} incidents ({raw / max(1, len(rows)):.0f} raw alarms per incident)"]
    for kind, device, code, members, state in rows[:5]:
        lines.append(f"    {state:<8} {code} on {kind} {device}: {members} alarms")
    return lines
