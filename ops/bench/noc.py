"""The NOC's pages over a week of data in `opsloop bench --suite noc`: server time per page, latency per query.

A DuckDB file is filled as the views agent fills it (the same tables, views and Arrow schemas) with a week
of 1-minute site snapshots for 10 sites, a forecast with its band every 15 minutes per site, incidents
with members and narrations, actions with verdicts and results, deduplicated alarms and source health.
Each page is then read and rendered as the server does for a request (``noc_web.render_live`` inside the
whole document; no network, no uvicorn) twice: opening the file read-only per request, as a NOC without
``--with-views`` does, and through a cursor on the writer's connection, as ``--with-views`` does. Each page's
queries are then timed alone (``noc_pages``) on one read-only connection. Wall times beside CPU times (the
process's, DuckDB's threads included): on a shared machine the CPU time is what the load does not inflate.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from opsloop.config.catalog import load_catalog
from opsloop.connectors.duckdb import arrow_schema, open_db, store_batch, table_name
from opsloop.ops import noc_pages
from opsloop.ops.noc_auth import Role, Session, User
from opsloop.ops.noc_core import FileViews
from opsloop.ops.noc_web import Caller, render_document, render_live

SITES, DAYS = 10, 7
START_MS = 1_780_000_000_000 // 60_000 * 60_000
PAGES = ["/", "/incidents", "/incidents/inc-s0-0", "/actions", "/alarms", "/sources", "/wall"]
TARGET_VIEW_MS = 100.0


def _json_columns(record: str) -> set[str]:
    return {f.name for f in arrow_schema(record) if f.metadata and f.metadata.get(b"avro") == b"json"}


def _table(record: str, rows: list[dict]) -> pa.Table:
    jsons = _json_columns(record)
    for i, row in enumerate(rows):
        for col in jsons:
            row[col] = json.dumps(row[col], separators=(",", ":"))
        row.update(_partition=0, _offset=i, _kafka_ts_ms=None)
    return pa.Table.from_pylist(rows, schema=arrow_schema(record))


def fill(path: Path, rng: random.Random) -> dict[str, int]:
    """The bench data set; returns rows per table."""
    catalog = load_catalog()
    rows: dict[str, tuple[str, list[dict]]] = {}

    def add(topic: str, items: list[dict]) -> None:
        rows[table_name(topic)] = (catalog[topic].record, items)

    minutes = DAYS * 1440
    snaps, forecasts, incidents, narratives, proposed, verdicts, results, alarms, health = ([] for _ in range(9))
    for s in range(SITES):
        site = f"site-{s}"
        for m in range(minutes):
            ts = START_MS + m * 60_000
            grid = 25_000 + 6_000 * abs(((m % 1440) - 720) / 720) + rng.uniform(-300, 300)
            snaps.append({"site": site, "window_start_ms": ts, "window_end_ms": ts + 60_000, "grid_kw": grid,
                          "it_kw": grid / 1.25, "facility_kw": grid, "ess_soc_pct": 70.0, "ess_soh_pct": 96.0,
                          "ess_kw": 0.0, "gpu_kw": None, "pue": 1.25, "price_per_mwh": None, "samples": 17,
                          "devices": 17})
            if m % 15 == 0:
                forecasts.append({"site": site, "issued_ms": ts, "horizon_s": 43_200, "step_s": 900,
                                  "predicted_peak_kw": 31_000.0, "predicted_peak_ms": ts + 3_600_000,
                                  "threshold_kw": 30_000.0, "explanation": "Grid draw should peak at 31,000 kW.",
                                  "model": "bench", "points": [{"ts_ms": ts + k * 900_000, "kw": grid,
                                                                "lower_kw": grid - 500, "upper_kw": grid + 500}
                                                               for k in range(1, 49)]})
            if m % 60 == 30:
                i = len(proposed)
                act = {"action_id": f"act-{i}", "kind": "pcs_discharge", "target": "pcs-1", "site": site,
                       "setpoint_kw": 1500.0, "shed_kw": None, "job_ids": [], "params": {}, "reason": "peak ahead",
                       "expected_effect": "grid import down", "expected_delta_kw": -1500.0, "created_ms": ts,
                       "expires_ms": ts + 3_600_000, "risk": "low", "proposer": "peaks", "reason_code": None}
                proposed.append(act)
                verdict = "needs_approval" if i % 50 == 0 else "approved"
                verdicts.append({"action": act, "verdict": verdict, "reasons": ["bench"], "policy_version": "bench",
                                 "decided_ms": ts + 1000, "approved_by": None, "reason_codes": ["bench"]})
                if verdict == "approved":
                    results.append({"action_id": act["action_id"], "target": "pcs-1", "status": "verified",
                                    "observed_effect": "grid import down", "detail": "ok",
                                    "observed_delta_kw": -1450.0, "executor": "pcs", "ts_ms": ts + 60_000})
        for k in range(200):
            ts = START_MS + k * 3_000_000
            members = [{"fingerprint": f"fp-{s}-{k}-{j}", "device": f"pdu-{j}", "device_type": "pdu",
                        "code": "PWR_PDU_BREAKER_TRIP", "count": 2, "first_seen_ms": ts + j * 1000,
                        "text": "breaker trip", "log_line": ""} for j in range(5)]
            incidents.append({"incident_id": f"inc-s{s}-{k}", "site": site, "state": "open" if k % 4 else "resolved",
                              "opened_ms": ts, "updated_ms": ts + 60_000, "resolved_ms": None, "root_device": "ups-a",
                              "root_device_type": "ups", "root_code": "UPS_ON_BATTERY", "severity": "major",
                              "member_count": 5, "members": members, "summary": "UPS on battery", "merged_into": None})
            narratives.append({"incident_id": f"inc-s{s}-{k}", "site": site, "ts_ms": ts + 60_000,
                               "text": "Mains lost: check the input breaker.", "grounded": True, "model": "bench",
                               "citations": [{"sop_id": "SOP-PWR-001", "section": "Steps"}], "latency_ms": 1.0})
        for k in range(2000):
            ts = START_MS + k * 300_000
            alarm = {"ts_ms": ts, "site": site, "device": f"pdu-{k % 40}", "device_type": "pdu", "source": "bench",
                     "code": "PWR_PDU_OVERLOAD", "severity": "minor", "state": "raise", "text": "overload",
                     "attributes": {}}
            alarms.append({"alarm": alarm, "fingerprint": f"fp-{s}-{k % 400}", "duplicate_count": 1 + k % 7,
                           "first_seen_ms": ts, "last_seen_ms": ts, "flapping": False, "noise_score": 0.3,
                           "noise": False, "decision_reason": "bench", "reason_code": None,
                           "noise_reason_code": None})
        for k in range(100):
            health.append({"ts_ms": START_MS + k * 60_000, "site": site, "source": f"src-{k % 5}", "kind": "snmp",
                           "status": "ok", "last_success_ms": START_MS + k * 60_000, "lag_ms": 1200, "polls": k,
                           "failures": 0, "consecutive_failures": 0, "points": 100 * k, "alarms": 0,
                           "dead_letters": 0, "dropped": 0, "last_error": None})
    for topic, items in (("telemetry.site", snaps), ("forecasts.peak", forecasts), ("incidents", incidents),
                         ("narratives", narratives), ("actions.proposed", proposed),
                         ("actions.approved", verdicts), ("actions.results", results), ("alarms.clean", alarms),
                         ("sources.health", health)):
        add(topic, items)
    con = open_db(path, specs=catalog)
    try:
        for table, (record, items) in rows.items():
            names = {f.name for f in arrow_schema(record)}
            items = [{k: v for k, v in item.items() if k in names} for item in items]
            store_batch(con, {table: _table(record, items)}, {})
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return {table: len(items) for table, (_, items) in rows.items()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class _Server:
    """What the page functions need of a NocServer: the views, the sites, nothing to serve."""

    def __init__(self, views):
        self.views, self.sites = views, {}


class _Cursors:
    """Views read through cursors on one writable connection, as LiveViews reads the views agent's."""

    def __init__(self, con):
        self.con = con

    def __str__(self) -> str:
        return "a cursor on the writer's connection"

    def connect(self):
        return self.con.cursor()


def _timed(call, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        call()
        walls.append((time.perf_counter() - t) * 1000)
        cpus.append((time.process_time() - c) * 1000)
    return walls, cpus


def run(settings=None, repeats: int = 30) -> list[str]:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="opsloop-noc-bench-") as tmp:
        path = Path(tmp) / "noc.duckdb"
        began = time.perf_counter()
        counts = fill(path, rng)
        lines = [f"NOC bench: {SITES} sites x {DAYS} days of 1-minute data ({counts['telemetry_site']:,} snapshots, "
                 f"{counts['forecasts_peak']:,} forecasts, {counts['incidents']:,} incidents, "
                 f"{counts['actions_proposed']:,} actions, {counts['alarms_clean']:,} alarms) "
                 f"written in {time.perf_counter() - began:.1f} s"]
        caller = Caller(Session("bench", "bench", "tok", 0.0, 0.0), User("bench", Role.ADMIN, "x"))

        def page_times(server, page):
            def once():
                live = render_live(server, page, {"site": "site-3"} if page == "/" else {}, caller)
                render_document(caller, page, live, source=str(path), events=page)
            return _timed(once, repeats)

        # one process may not hold the file read-only and writable at once: the read-only pages first
        for mode in ("read-only open per request", "live: cursor"):
            writer = open_db(path) if mode.startswith("live") else None
            server = _Server(_Cursors(writer) if writer else FileViews(path))
            lines.append(f"{'page (server time, ' + mode + ')':48s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s} "
                         f"{'cpu p50':>8s} {'cpu p95':>8s}")
            try:
                for page in PAGES:
                    walls, cpus = page_times(server, page)
                    lines.append(f"{page:48s} {statistics.median(walls):8.1f} {percentile(walls, 0.95):8.1f} "
                                 f"{max(walls):8.1f} {statistics.median(cpus):8.1f} {percentile(cpus, 0.95):8.1f}")
            finally:
                if writer is not None:
                    writer.close()
        lines.append(f"{'query (one read-only connection)':48s} {'p50 ms':>8s} {'p99 ms':>8s} {'target':>8s} "
                     f"{'cpu p50':>8s} {'cpu p99':>8s}")
        con = FileViews(path).connect()
        try:
            queries = {
                "overview (v_site_power, forecasts, v_actions)": lambda: noc_pages.overview(con, "site-3", None),
                "incidents (v_incidents, v_narratives)": lambda: noc_pages.incidents(con),
                "incident page (+ members, SOPs)": lambda: noc_pages.incident(con, "inc-s3-5", None),
                "actions (v_actions, action_proposal_latest)": lambda: noc_pages.actions(con, q="site-3"),
                "alarms (v_alarms_latest, operator_feedback)": lambda: noc_pages.alarms(con),
                "sources (sources_health)": lambda: noc_pages.sources(con),
            }
            for name, call in queries.items():
                walls, cpus = _timed(call, repeats)
                p99 = percentile(walls, 0.99)
                verdict = "met" if p99 < TARGET_VIEW_MS else "NOT met"
                lines.append(f"{name:48s} {statistics.median(walls):8.1f} {p99:8.1f} {'<100':>8s} "
                             f"{statistics.median(cpus):8.1f} {percentile(cpus, 0.99):8.1f} {verdict}")
        finally:
            con.close()
    return lines


if __name__ == "__main__":
    print("\n".join(run()))
