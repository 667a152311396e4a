-- NOC and downstream SQL views over the tables written by connectors/duckdb_sink.py.
-- Executed by the sink at start: every view is CREATE OR REPLACE, so editing this file is enough.
-- Times are TIMESTAMP in UTC, from the records' event times.
-- event_ts: NULL where DuckDB cannot represent the time (a record dated -2**62 ms, kept raw, must not
-- break every query over its table; the agents dead-letter such times as invalid).
CREATE OR REPLACE MACRO event_ts(ms) AS
    CASE WHEN ms BETWEEN -62135596800000 AND 253402300799999 THEN epoch_ms(ms::BIGINT) END;

-- Tables the views writer keeps up to date itself (connectors/duckdb.py `DERIVED`), in the same transaction
-- as the records they come from, so that the NOC's views read prepared rows instead of recomputing them from
-- every record at each request. Created empty here; a writer that creates one fills it from the topic tables.
-- Site power per site and minute, as v_site_power shows it (windows with an unrepresentable time are left out).
CREATE TABLE IF NOT EXISTS site_power_minute (
    site VARCHAR NOT NULL, minute TIMESTAMP NOT NULL, grid_kw DOUBLE, it_kw DOUBLE, facility_kw DOUBLE, pue DOUBLE,
    ess_soc_pct DOUBLE, ess_kw DOUBLE, gpu_kw DOUBLE, windows BIGINT, PRIMARY KEY (site, minute));
-- The latest proposal, verdict and result of each action (by the same order as the views' QUALIFY clauses).
CREATE TABLE IF NOT EXISTS action_proposal_latest (
    action_id VARCHAR PRIMARY KEY, site VARCHAR, kind VARCHAR, target VARCHAR, setpoint_kw DOUBLE, shed_kw DOUBLE,
    job_ids VARCHAR, reason VARCHAR, reason_code VARCHAR, risk VARCHAR, expected_effect VARCHAR,
    expected_delta_kw DOUBLE, proposer VARCHAR, created_ms BIGINT, expires_ms BIGINT, _partition INTEGER,
    _offset BIGINT);
CREATE TABLE IF NOT EXISTS action_verdict_latest (
    action_id VARCHAR PRIMARY KEY, verdict VARCHAR, reasons VARCHAR, reason_codes VARCHAR, approved_by VARCHAR,
    decided_ms BIGINT, _partition INTEGER, _offset BIGINT);
CREATE TABLE IF NOT EXISTS action_result_latest (
    action_id VARCHAR PRIMARY KEY, status VARCHAR, detail VARCHAR, observed_delta_kw DOUBLE, executor VARCHAR,
    ts_ms BIGINT, _partition INTEGER, _offset BIGINT, observed_effect VARCHAR);
-- The latest version of each incident (by updated_ms) and its latest narration (by ts_ms).
CREATE TABLE IF NOT EXISTS incident_latest (
    incident_id VARCHAR PRIMARY KEY, site VARCHAR, state VARCHAR, opened_ms BIGINT, resolved_ms BIGINT,
    root_device VARCHAR, root_device_type VARCHAR, root_code VARCHAR, severity VARCHAR, member_count INTEGER,
    summary VARCHAR, merged_into VARCHAR, updated_ms BIGINT, _partition INTEGER, _offset BIGINT);
CREATE TABLE IF NOT EXISTS narrative_latest (
    incident_id VARCHAR PRIMARY KEY, site VARCHAR, text VARCHAR, citations VARCHAR, grounded BOOLEAN, model VARCHAR,
    latency_ms DOUBLE, ts_ms BIGINT, _partition INTEGER, _offset BIGINT);
-- The latest state of each deduplicated alarm (alarms.clean, by fingerprint: the latest last_seen_ms wins).
CREATE TABLE IF NOT EXISTS alarm_latest (
    fingerprint VARCHAR PRIMARY KEY, site VARCHAR, device VARCHAR, device_type VARCHAR, code VARCHAR,
    severity VARCHAR, state VARCHAR, text VARCHAR, duplicate_count INTEGER, first_seen_ms BIGINT, flapping BOOLEAN,
    noise_score DOUBLE, noise BOOLEAN, decision_reason VARCHAR, reason_code VARCHAR, noise_reason_code VARCHAR,
    last_seen_ms BIGINT, _partition INTEGER, _offset BIGINT);
-- The latest report of each running agent instance (agents.health, by instance).
CREATE TABLE IF NOT EXISTS agent_health_latest (
    instance VARCHAR PRIMARY KEY, agent VARCHAR, "group" VARCHAR, partitions INTEGER, lag BIGINT, processed BIGINT,
    dead_letters BIGINT, last_input_ms BIGINT, last_commit_ms BIGINT, last_output_ms BIGINT, ts_ms BIGINT,
    _partition INTEGER, _offset BIGINT);

-- Site power per site and minute; a re-emitted window counts once (the latest emission wins). Averages over
-- the minute's windows; pue is energy-weighted (it equals the record's pue for one window a minute). Read from
-- site_power_minute, which the writer updates for the minutes each batch touches.
CREATE OR REPLACE VIEW v_site_power AS
SELECT site, minute, grid_kw, it_kw, facility_kw, pue, ess_soc_pct, ess_kw, gpu_kw, windows
FROM site_power_minute;

-- Rejected messages, one row each however many agents rejected it (or re-sent it after a
-- restart): when first, from where, why, by which agents, the original size of the value, whether
-- only its first bytes were kept (truncated) and its SHA-256. A message on deadletter that could
-- not be decoded is stored as its own row (agent views, kind decode).
CREATE OR REPLACE VIEW v_deadletter AS
SELECT
    event_ts(min(_kafka_ts_ms)) AS time,
    event_ts(any_value(message_ts_ms)) AS message_time,
    topic,
    "partition",
    "offset",
    arg_min(error_kind, _kafka_ts_ms) AS error_kind,
    arg_min(error, _kafka_ts_ms) AS error,
    array_to_string(list_sort(list(DISTINCT agent)), ', ') AS agents,
    any_value(coalesce(value_size, octet_length(value))) AS value_bytes,
    bool_or(coalesce(truncated, false)) AS truncated,
    any_value(value_sha256) AS value_sha256
FROM deadletter
GROUP BY topic, "partition", "offset";

-- Last value of every site/device/metric by event time (ties: the later message).
CREATE OR REPLACE VIEW v_telemetry_latest AS
SELECT site, device, device_type, metric, value, unit, event_ts(ts_ms) AS ts, source
FROM telemetry_raw
QUALIFY row_number() OVER (PARTITION BY site, device, metric ORDER BY ts_ms DESC, _partition DESC, _offset DESC) = 1;

-- Incidents as they stand now: the latest version of each (compacted topic, replays upsert; from the writer's
-- incident_latest table).
CREATE OR REPLACE VIEW v_incidents AS
SELECT
    incident_id, site, state,
    event_ts(opened_ms) AS opened, event_ts(updated_ms) AS updated, event_ts(resolved_ms) AS resolved,
    root_device, root_device_type, root_code, severity, member_count, summary, merged_into
FROM incident_latest;

-- The narration an operator reads for each incident: the latest one published (an accepted LLM
-- draft follows the deterministic narration of the same incident; from the writer's narrative_latest table).
CREATE OR REPLACE VIEW v_narratives AS
SELECT incident_id, site, event_ts(ts_ms) AS time, text, citations, grounded, model, latency_ms
FROM narrative_latest;

-- The latest state of each deduplicated alarm, newest first: its site, device, code, severity, state and
-- text, how often it was raised (duplicate_count), flapping, the noise model's score and flag, and why.
CREATE OR REPLACE VIEW v_alarms_latest AS
SELECT fingerprint, site, device, device_type, code, severity, state, text, duplicate_count,
       event_ts(first_seen_ms) AS first_seen, event_ts(last_seen_ms) AS last_seen, flapping, noise_score, noise,
       decision_reason, reason_code, noise_reason_code, first_seen_ms, last_seen_ms
FROM alarm_latest;

-- Each running agent's health, one row per instance (a process running the agent), from the reports every
-- batch-loop agent publishes on agents.health while it runs (no Kafka admin request behind any of it): when it
-- reported, its consumer group, partitions, lag (messages behind the broker's end), messages handled and dead
-- letters since it started, and when it last handled a message, committed progress and sent an output.
-- dead_letters_1h: the messages it dead-lettered in the hour before its report (as v_deadletter counts them).
CREATE OR REPLACE VIEW v_agents_health AS
SELECT h.agent, h.instance, h."group", event_ts(h.ts_ms) AS reported, h.partitions, h.lag, h.processed,
       h.dead_letters, event_ts(h.last_input_ms) AS last_input, event_ts(h.last_commit_ms) AS last_commit,
       event_ts(h.last_output_ms) AS last_output,
       (SELECT count(DISTINCT (d.topic, d."partition", d."offset")) FROM deadletter d
        WHERE d.agent = h.agent AND d._kafka_ts_ms > h.ts_ms - 3600000 AND d._kafka_ts_ms <= h.ts_ms) AS dead_letters_1h,
       h.ts_ms
FROM agent_health_latest h;

-- Latest peak forecast per site.
CREATE OR REPLACE VIEW v_forecasts_latest AS
SELECT site, event_ts(issued_ms) AS issued, horizon_s, predicted_peak_kw, event_ts(predicted_peak_ms) AS predicted_peak_at,
       threshold_kw, explanation, model
FROM forecasts_peak
QUALIFY row_number() OVER (PARTITION BY site ORDER BY issued_ms DESC, _partition DESC, _offset DESC) = 1;

-- Latest remaining-useful-life forecast per part and metric, soonest first (forecasts.rul).
CREATE OR REPLACE VIEW v_rul_latest AS
SELECT site, device, device_type, metric, family, event_ts(ts_ms) AS issued, event_ts(expected_ms) AS expected,
       event_ts(earliest_ms) AS earliest, event_ts(latest_ms) AS latest, band, value, "limit", rate_per_day,
       reason_code, text, model
FROM forecasts_rul
QUALIFY row_number() OVER (PARTITION BY site, device, metric ORDER BY ts_ms DESC, _partition DESC, _offset DESC) = 1;

-- One row per action: what was proposed, the guard's latest verdict, and the latest result (from the
-- writer's action_*_latest tables: one row per action each). result_observed: what the result's executor
-- observed (the LLM sink's verification states the SLO margin there).
CREATE OR REPLACE VIEW v_actions AS
SELECT
    p.action_id, p.site, p.kind, p.target, p.setpoint_kw, p.shed_kw, p.reason, p.reason_code, p.risk,
    event_ts(p.created_ms) AS created, event_ts(p.expires_ms) AS expires,
    v.verdict, v.reasons AS verdict_reasons, v.reason_codes AS verdict_reason_codes, v.approved_by,
    r.status AS result, r.detail AS result_detail, r.observed_delta_kw, r.executor, event_ts(r.ts_ms) AS result_time,
    r.observed_effect AS result_observed
FROM action_proposal_latest p
LEFT JOIN action_verdict_latest v USING (action_id)
LEFT JOIN action_result_latest r USING (action_id);

-- Every decision's machine-readable reason, one row per code, to count decisions by why
-- (SELECT decider, decision, reason_code, count(*) FROM v_reason_codes GROUP BY ALL):
--   guard   one row per reason of each verdict (decision: the verdict), once per action and verdict;
--   <proposer, e.g. peaks>  the reason of each proposed action (decision: the action's kind);
--   dedup   each clean alarm announced (decision: the state announced);
--   noise   each clean alarm's noise flag (decision: flagged or not_flagged).
-- Records written before reason codes existed carry none and are left out.
CREATE OR REPLACE VIEW v_reason_codes AS
WITH verdicts AS (
    SELECT json_extract_string(action, '$.action_id') AS action_id, json_extract_string(action, '$.site') AS site,
           verdict, decided_ms, from_json(reason_codes, '["VARCHAR"]') AS codes,
           from_json(reasons, '["VARCHAR"]') AS texts
    FROM actions_approved
    QUALIFY row_number() OVER (PARTITION BY json_extract_string(action, '$.action_id'), verdict
                               ORDER BY decided_ms DESC, _partition DESC, _offset DESC) = 1
), guard AS (
    SELECT action_id, site, verdict, decided_ms, unnest(codes) AS reason_code, unnest(texts) AS reason
    FROM verdicts
), proposed AS (
    SELECT * FROM actions_proposed
    QUALIFY row_number() OVER (PARTITION BY action_id ORDER BY _partition DESC, _offset DESC) = 1
), clean AS (
    SELECT *, json_extract_string(alarm, '$.site') AS site, json_extract_string(alarm, '$.state') AS state,
           CAST(json_extract(alarm, '$.ts_ms') AS BIGINT) AS ts_ms
    FROM alarms_clean
    QUALIFY row_number() OVER (PARTITION BY fingerprint, json_extract(alarm, '$.ts_ms'), reason_code
                               ORDER BY _partition DESC, _offset DESC) = 1
)
SELECT 'guard' AS decider, site, event_ts(decided_ms) AS time, action_id AS subject, verdict AS decision,
       reason_code, reason
FROM guard WHERE reason_code IS NOT NULL
UNION ALL
SELECT proposer, site, event_ts(created_ms), action_id, kind, reason_code, reason
FROM proposed WHERE reason_code IS NOT NULL
UNION ALL
SELECT 'dedup', site, event_ts(ts_ms), fingerprint, state, reason_code, decision_reason
FROM clean WHERE reason_code IS NOT NULL
UNION ALL
SELECT 'noise', site, event_ts(ts_ms), fingerprint, CASE WHEN noise THEN 'flagged' ELSE 'not_flagged' END,
       noise_reason_code, NULL
FROM clean WHERE noise_reason_code IS NOT NULL;

-- The NOC's audit trail (topic noc.audit, append-only): who did what, when and from where, newest first.
-- Logins, logouts, failed logins, approvals, rejections, refused requests and user changes.
CREATE OR REPLACE VIEW v_audit AS
SELECT epoch_ms(ts_ms) AS time, event, actor, role, target, client, source, detail
FROM noc_audit
ORDER BY ts_ms DESC, _partition, _offset DESC;
