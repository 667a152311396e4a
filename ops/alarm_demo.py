"""The demo's alarm storm: failures injected into the demo site's topology, replayed through
dedup and correlate next to the power data, then counted from DuckDB.

The storm goes to one partition of ``alarms.raw``: a backlog spread over partitions would be
read partition by partition, far out of event-time order, and correlation assumes alarms
arrive roughly in time order (live sources do).
"""

from __future__ import annotations

import time

from opsloop.config.settings import Settings
from opsloop.config.site import Site

def replay_storm(settings: Settings, site: Site, start_ms: int, seed: int = 0) -> dict:
    """Sends a storm corpus to ``alarms.raw`` and runs dedup + correlate until all of it is folded in."""
    from opsloop.config.catalog import cached_catalog
    from opsloop.connectors.kafka import producer, wait_delivered
    from opsloop.ops.evals.storm import generate_storm
    from opsloop.models.topology import Topology
    from opsloop.schemas.codec import Codec

    topology = Topology.from_site(site)
    storm = generate_storm(topology, seed=seed, start_ms=start_ms)
    codec, prod = Codec.default(), producer(settings)
    for alarm, _ in storm.alarms:
        spec = cached_catalog(settings.topics_file)["alarms.raw"]
        prod.produce(settings.topic(spec.name), key=spec.key_of(alarm), value=codec.encode(spec.record, alarm),
                     partition=0)
        prod.poll(0)
    wait_delivered(prod)
    del prod
    t0 = time.monotonic()
    stats = run_filter_until_caught_up(settings, site, len(storm.alarms))
    return {**stats, "failures": len(storm.failures), "seconds": time.monotonic() - t0,
            "roots": [(f.kind, f.root) for f in storm.failures]}


def run_filter_until_caught_up(settings: Settings, site: Site, raw_alarms: int) -> dict:
    """Runs the dedup then the correlate processor, each until its input is caught up and idle."""
    from opsloop.streams import worker

    dedup = worker.run(settings, ["dedup"], exit_when_idle=True, site=site)["dedup"]
    correlate = worker.run(settings, ["correlate"], exit_when_idle=True, site=site)["correlate"]
    if dedup["in"] < raw_alarms:
        raise RuntimeError(f"the alarm filter took {dedup['in']:,} of {raw_alarms:,} alarms")
    return {"raw": dedup["in"], "clean": dedup["out"], "incident_updates": correlate["out"]}


def summary_lines(duckdb_file) -> list[str]:
    from opsloop.connectors.duckdb import query

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
