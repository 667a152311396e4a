"""What each NOC page shows, read from the DuckDB views: one function per page, rows as dicts.

The functions take a DuckDB connection (a read-only file connection or a cursor on the views agent's
own connection, ops/noc.py) and return plain data; the templates (ops/noc_templates/) turn it into
HTML. Times come out of the views in UTC; ``local`` puts them in the site's time zone, which every
page shows. "Now" on a page is the newest data of the site, not the wall clock: a replayed or
delayed site reads the same way as a live one.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from opsloop.config.assets import sop_texts
from opsloop.config.site import Site
from opsloop.models.llm_lever import slo_margin
from opsloop.models.sops import Sop, parse_corpus
from opsloop.models.topology import Topology

PAGE_ROWS = 50  # actions and incidents per page of history
CHART_HOURS = 24  # history on the overview chart
FORECAST_HOURS = 12  # forecast on the overview chart
RUL_ROWS = 20  # part-life forecasts on the overview; `opsloop sql` has them all
BILLING_BUCKET_MIN = 30  # demand is billed on the highest half-hourly mean import


def zone(site: Site | None) -> ZoneInfo:
    try:
        return ZoneInfo(site.timezone if site else "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local(value: datetime | None, tz: ZoneInfo) -> datetime | None:
    """A view's naive UTC timestamp in the site's zone."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc).astimezone(tz)


def from_ms(ms: int | None, tz: ZoneInfo) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).astimezone(tz)


def _dicts(cur) -> list[dict]:
    columns = [d[0] for d in cur.description]
    return [dict(zip(columns, row)) for row in cur.fetchall()]


def _json(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def site_ids(con) -> list[str]:
    return [r[0] for r in con.execute("SELECT DISTINCT site FROM telemetry_site ORDER BY site").fetchall()]


def pending_count(con) -> int:
    return con.execute("SELECT count(*) FROM v_actions WHERE verdict = 'needs_approval' AND result IS NULL"
                       ).fetchone()[0]


# --- overview ----------------------------------------------------------------------------------------------


def overview(con, site_id: str, site: Site | None, hours: int = CHART_HOURS) -> dict:
    """One site's last ``hours`` of power (0: the latest minute only, for the wall), its latest forecast with
    the band, billed peak, target, actions, ESS."""
    tz = zone(site)
    newest = con.execute("SELECT max(window_start_ms) FROM telemetry_site WHERE site = ?", [site_id]).fetchone()[0]
    latest = None if newest is None else datetime.fromtimestamp(newest // 60_000 * 60, timezone.utc).replace(tzinfo=None)
    data = {"site": site_id, "tz": str(tz), "now": local(latest, tz), "power": [], "latest": None,
            "forecast": None, "actions": [], "billed_peak_kw": None, "billed_peak_at": None, "target_kw": None,
            "ess_soh_pct": None, "cap_kw": site.grid_import_cap_kw if site else None, "levers": [],
            "shed_kw": None, "llm_slo": None}
    data["rul"] = _dicts(con.execute(  # parts forecast to reach a retirement limit, soonest first
        f"SELECT device, text, reason_code, issued, earliest FROM v_rul_latest WHERE site = ? "
        f"ORDER BY earliest, device LIMIT {RUL_ROWS}", [site_id]))
    for r in data["rul"]:
        r["issued"] = local(r["issued"], tz)
    if latest is None:
        return data
    start = latest - (timedelta(hours=hours) if hours else timedelta(minutes=1))
    period = "month" if not site or site.demand_billing_period == "month" else site.demand_billing_period
    period_start = local(latest, tz).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        period_start = period_start.replace(day=1)
    period_start = period_start.astimezone(timezone.utc).replace(tzinfo=None)
    # one read of the view for the chart's day and the billing period's highest half-hour (peak_kw set)
    rows = _dicts(con.execute(
        "WITH p AS (SELECT minute, grid_kw, it_kw, facility_kw, pue, ess_soc_pct, ess_kw FROM v_site_power "
        "WHERE site = ? AND minute >= ?) "
        "SELECT *, NULL::DOUBLE AS peak_kw FROM p WHERE minute > ? UNION ALL "
        f"SELECT * FROM (SELECT time_bucket(INTERVAL {BILLING_BUCKET_MIN} MINUTE, minute) AS minute, NULL, NULL, "
        "NULL, NULL, NULL, NULL, avg(grid_kw) AS peak_kw FROM p WHERE minute >= ? GROUP BY 1 ORDER BY peak_kw DESC "
        "LIMIT 1) ORDER BY minute", [site_id, min(start, period_start), start, period_start]))
    peak = [r for r in rows if r["peak_kw"] is not None]
    data["power"] = [r for r in rows if r["peak_kw"] is None]
    if peak:
        data["billed_peak_at"], data["billed_peak_kw"] = local(peak[0]["minute"], tz), peak[0]["peak_kw"]
    data["latest"] = data["power"][-1] if data["power"] else None
    soh = con.execute("SELECT ess_soh_pct FROM telemetry_site WHERE site = ? AND ess_soh_pct IS NOT NULL "
                      "ORDER BY window_start_ms DESC LIMIT 1", [site_id]).fetchone()
    data["ess_soh_pct"] = soh[0] if soh else None
    forecast = _dicts(con.execute("SELECT * FROM forecasts_peak WHERE site = ? ORDER BY issued_ms DESC, "
                                  "_partition DESC, _offset DESC LIMIT 1", [site_id]))
    if forecast:
        f = forecast[0]
        horizon_end = f["issued_ms"] + FORECAST_HOURS * 3600_000
        f["points"] = [p for p in (_json(f["points"]) or []) if p["ts_ms"] <= horizon_end]
        f["issued"] = from_ms(f["issued_ms"], tz)
        f["peak_at"] = from_ms(f["predicted_peak_ms"], tz)
        data["forecast"], data["target_kw"] = f, f["threshold_kw"]
    data["actions"] = _dicts(con.execute(
        "SELECT action_id, kind, target, setpoint_kw, shed_kw, created, verdict, result, reason FROM v_actions "
        "WHERE site = ? AND created > ? ORDER BY created", [site_id, start]))
    for a in data["actions"]:
        a["created"] = local(a["created"], tz)
    levers(con, data, site_id, latest, tz)
    for row in data["power"]:
        row["minute"] = local(row["minute"], tz)
    return data


LEVERS = {"pcs_discharge": "battery", "pcs_charge": "battery (charging)", "slurm_hold": "Slurm hold",
          "slurm_suspend": "Slurm suspend", "slurm_requeue": "Slurm requeue", "slurm_reserve": "Slurm reservation",
          "llm_shift": "LLM shift", "llm_cap": "LLM cap"}


def levers(con, data: dict, site_id: str, now: datetime, tz: ZoneInfo) -> None:
    """The levers engaged at ``now`` (approved, executed or verified, not expired), the kW each sheds (a battery's
    discharge setpoint, else the action's estimate; the verified change beside it) and the LLM SLO margin the LLM
    sink's latest verification states."""
    rows = _dicts(con.execute(
        "SELECT action_id, kind, target, CASE kind WHEN 'pcs_discharge' THEN setpoint_kw WHEN 'pcs_charge' THEN "
        "-setpoint_kw ELSE shed_kw END AS shed_kw, observed_delta_kw, result, expires, approved_by FROM v_actions "
        "WHERE site = ? AND verdict = 'approved' AND result IN ('executed', 'verified') AND (expires IS NULL OR "
        "expires > ?) ORDER BY kind, action_id", [site_id, now]))
    for r in rows:
        r["lever"], r["expires"] = LEVERS.get(r["kind"], r["kind"]), local(r["expires"], tz)
    data["levers"] = rows
    data["shed_kw"] = sum(r["shed_kw"] for r in rows if r["shed_kw"] is not None) if rows else None
    verified = con.execute(
        "SELECT result_observed, result_time FROM v_actions WHERE site = ? AND kind LIKE 'llm_%' AND result = "
        "'verified' ORDER BY result_time DESC LIMIT 1", [site_id]).fetchone()
    margin = slo_margin(verified[0]) if verified else None
    data["llm_slo"] = {"margin": margin, "at": local(verified[1], tz)} if margin else None


def chart(data: dict) -> dict:
    """The overview chart's series as JSON-ready lists (local times as ISO text without offset: the axis
    is labelled with the zone)."""
    def iso(t):
        return t.strftime("%Y-%m-%dT%H:%M:%S") if t else None

    tz = ZoneInfo(data["tz"])
    power = data["power"]
    series = {"time": [iso(r["minute"]) for r in power],
              "grid_kw": [r["grid_kw"] for r in power], "facility_kw": [r["facility_kw"] for r in power],
              "it_kw": [r["it_kw"] for r in power]}
    points = data["forecast"]["points"] if data["forecast"] else []
    series["forecast"] = {"time": [iso(from_ms(p["ts_ms"], tz)) for p in points],
                          "kw": [p["kw"] for p in points], "lower_kw": [p["lower_kw"] for p in points],
                          "upper_kw": [p["upper_kw"] for p in points]}
    series["actions"] = [{"time": iso(a["created"]), "label": f"{a['kind']} {a['action_id']}",
                          "verdict": a["verdict"] or "awaiting guard"} for a in data["actions"]]
    series["target_kw"], series["billed_peak_kw"] = data["target_kw"], data["billed_peak_kw"]
    series["tz"] = data["tz"]
    return series


# --- incidents ---------------------------------------------------------------------------------------------


def incidents(con, *, state: str = "open", site: str = "", severity: str = "", q: str = "", page: int = 1) -> dict:
    """Incidents, open ones first, newest first within; filtered by state (open, resolved, all), site,
    severity and a text search over id, device, code and summary."""
    where, args = ["i.merged_into IS NULL"], []
    if state == "open":
        where.append("i.state <> 'resolved'")
    elif state == "resolved":
        where.append("i.state = 'resolved'")
    if site:
        where.append("i.site = ?")
        args.append(site)
    if severity:
        where.append("i.severity = ?")
        args.append(severity)
    if q:
        where.append("concat_ws(' ', i.incident_id, i.root_device, i.root_code, i.summary) ILIKE ?")
        args.append(f"%{q}%")
    sql = ("SELECT i.*, n.text AS narrative, count(*) OVER () AS total FROM v_incidents i "
           "LEFT JOIN v_narratives n USING (incident_id) WHERE " + " AND ".join(where)
           + " ORDER BY (i.state = 'resolved'), i.updated DESC, i.incident_id LIMIT ? OFFSET ?")
    rows = _dicts(con.execute(sql, args + [PAGE_ROWS, (max(page, 1) - 1) * PAGE_ROWS]))
    return {"rows": rows, "total": rows[0]["total"] if rows else 0, "page": max(page, 1)}


@lru_cache(maxsize=1)
def sop_corpus() -> dict[str, Sop]:
    return parse_corpus(sop_texts())


def incident(con, incident_id: str, site: Site | None) -> dict | None:
    """One incident with its narration, cited SOP sections, member alarms in time order and the topology
    path from its root to each member."""
    found = _dicts(con.execute("SELECT * FROM v_incidents WHERE incident_id = ?", [incident_id]))
    if not found:
        return None
    inc = found[0]
    tz = zone(site)
    latest = con.execute("SELECT members FROM incidents WHERE incident_id = ? ORDER BY updated_ms DESC, "
                         "_partition DESC, _offset DESC LIMIT 1", [incident_id]).fetchone()
    members = sorted(_json(latest[0]) or [], key=lambda m: m.get("first_seen_ms", 0))
    for m in members:
        m["first_seen"] = from_ms(m.get("first_seen_ms"), tz)
    narr = _dicts(con.execute("SELECT * FROM v_narratives WHERE incident_id = ?", [incident_id]))
    narrative = narr[0] if narr else None
    sops = []
    if narrative:
        corpus = sop_corpus()
        for c in _json(narrative["citations"]) or []:
            sop = corpus.get(c.get("sop_id"))
            section = c.get("section", "")
            body = sop.sections.get(section) if sop else None
            if sop and body is None and section.isdigit() and int(section) <= len(sop.steps):
                body = f"Step {section}: {sop.steps[int(section) - 1]}"
            sops.append({"sop_id": c.get("sop_id"), "section": section, "title": sop.title if sop else None,
                         "text": body, "steps": sop.steps if sop and body is None else ()})
    for key in ("opened", "updated", "resolved"):
        inc[key] = local(inc[key], tz)
    return {"incident": inc, "narrative": narrative, "sops": sops, "members": members,
            "paths": topology_paths(site, inc["root_device"], members), "tz": str(tz)}


def topology_paths(site: Site | None, root: str, members: list[dict]) -> list[list[str]]:
    """For each member device, the feed path from the incident's root down to it (root, then the member
    alone when the site's topology does not relate them)."""
    topo = Topology.from_site(site) if site and site.topology else None
    paths = []
    for m in members:
        device = m.get("device", "")
        path = None
        if topo is not None and device in topo and device != root:
            for chain in ("power", "cooling", "network", "gpu"):
                path = _feed_path(topo, root, device, chain)
                if path:
                    break
        path = path or ([device] if device == root else [root, "…", device])
        if path not in paths:
            paths.append(path)
    return paths


def _feed_path(topo: Topology, root: str, device: str, chain: str) -> list[str] | None:
    """The shortest chain of feeds from ``root`` down to ``device``, or None."""
    below: dict[str, str | None] = {device: None}  # element -> the element it feeds on the way down
    frontier = [device]
    while frontier and root not in below:
        nxt = []
        for element in frontier:
            for parent in topo.parents_of(element, chain):
                if parent not in below:
                    below[parent] = element
                    nxt.append(parent)
        frontier = nxt
    if root not in below:
        return None
    path = [root]
    while below[path[-1]] is not None:
        path.append(below[path[-1]])
    return path


# --- actions -----------------------------------------------------------------------------------------------

PENDING = "verdict = 'needs_approval' AND result IS NULL"
ACTIONS_SQL = (  # every pending action and one page of the others, from one read of the view
    "WITH a AS (SELECT a.*, p.job_ids, p.expected_effect, p.expected_delta_kw, p.proposer, p.created_ms, "
    f"p.expires_ms, coalesce({PENDING}, false) AS pending FROM v_actions a "
    "JOIN action_proposal_latest p USING (action_id) WHERE {where}), "
    "n AS (SELECT *, row_number() OVER (PARTITION BY pending ORDER BY created DESC, action_id) AS n, "
    "count(*) FILTER (WHERE NOT pending) OVER () AS total FROM a) "
    "SELECT * FROM n WHERE pending OR n > ? AND n <= ? ORDER BY pending DESC, created DESC, action_id")


def actions(con, *, q: str = "", page: int = 1) -> dict:
    """Actions waiting for approval (all of them), then the history: paginated, searched over id, site,
    kind, target, reason, verdict, approver and result (the search narrows the history only)."""
    where, args = "true", []
    if q:
        where = ("(a.verdict = 'needs_approval' AND a.result IS NULL) OR concat_ws(' ', a.action_id, a.site, "
                 "a.kind, a.target, a.reason, a.verdict, a.approved_by, a.result, a.verdict_reasons) ILIKE ?")
        args.append(f"%{q}%")
    offset = (max(page, 1) - 1) * PAGE_ROWS
    rows = _dicts(con.execute(ACTIONS_SQL.format(where=where), args + [offset, offset + PAGE_ROWS]))
    pending = [r for r in rows if r["pending"]]
    history = [r for r in rows if not r["pending"]]
    total = rows[0]["total"] if rows else 0
    return {"pending": pending, "history": history, "total": total, "page": max(page, 1)}


# --- alarms and sources ------------------------------------------------------------------------------------


def alarms(con, *, site: str = "", limit: int = 200) -> list[dict]:
    """The latest state of each deduplicated alarm (by fingerprint), newest first, with its dedup count."""
    where, args = "", []
    if site:
        where, args = "WHERE site = ?", [site]
    rows = _dicts(con.execute(
        "SELECT fingerprint, duplicate_count, first_seen_ms, last_seen_ms, flapping, noise_score, noise, "
        f"decision_reason, site, device, code, severity, state, text FROM v_alarms_latest {where} "
        "ORDER BY last_seen_ms DESC, fingerprint LIMIT ?", args + [limit]))
    labels = dict(con.execute(
        "SELECT target_id, arg_max(kind, ts_ms) FROM operator_feedback WHERE kind IN ('alarm_noise', "
        "'alarm_actionable') GROUP BY target_id").fetchall())
    for r in rows:
        r["label"] = labels.get(r["fingerprint"])
    return rows


def sources(con) -> list[dict]:
    """The latest health report of every source (topic sources.health)."""
    return _dicts(con.execute(
        "SELECT * FROM sources_health QUALIFY row_number() OVER (PARTITION BY site, source ORDER BY ts_ms DESC, "
        "_partition DESC, _offset DESC) = 1 ORDER BY status <> 'ok' DESC, site, source"))


SILENT_S = 60  # an agent instance whose last report is this far behind the newest report is shown as silent
GONE_S = 600  # an instance this far behind its agent's newest report was replaced (a restart): not shown


def agents(con) -> list[dict]:
    """Each running agent instance's latest health report (agents.health): lag, last input, commit and output,
    dead letters in the hour before; ``silent_s``: how far its report is behind the newest report of any agent
    (the page's "now", as everywhere on the NOC)."""
    rows = _dicts(con.execute(
        "WITH h AS (SELECT *, max(ts_ms) OVER () AS newest, max(ts_ms) OVER (PARTITION BY agent) AS agent_newest "
        "FROM v_agents_health) SELECT *, (newest - ts_ms) / 1000 AS silent_s FROM h "
        f"WHERE ts_ms >= agent_newest - {GONE_S * 1000} ORDER BY agent, instance"))
    for r in rows:
        r["status"] = "reporting" if r["silent_s"] <= SILENT_S else "silent"
    return rows


def dead_letters(con) -> int:
    return con.execute("SELECT count(*) FROM v_deadletter").fetchone()[0]
