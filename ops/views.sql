-- NOC and downstream SQL views over the tables written by connectors/duckdb_sink.py.
-- Executed by the sink at start: every view is CREATE OR REPLACE, so editing this file is enough.
-- Times are TIMESTAMP in UTC, from the records' event times.

-- Site power per site and minute; a re-emitted window counts once (the latest emission wins).
CREATE OR REPLACE VIEW v_site_power AS
WITH windows AS (
    SELECT *
    FROM telemetry_site
    QUALIFY row_number() OVER (PARTITION BY site, window_start_ms ORDER BY _partition DESC, _offset DESC) = 1
)
SELECT
    site,
    date_trunc('minute', epoch_ms(window_start_ms)) AS minute,
    avg(grid_kw) AS grid_kw,
    avg(it_kw) AS it_kw,
    avg(facility_kw) AS facility_kw,
    -- energy-weighted over the minute's windows; equals the record's pue for one window a minute
    sum(facility_kw) FILTER (WHERE pue IS NOT NULL) / sum(it_kw) FILTER (WHERE pue IS NOT NULL) AS pue,
    avg(ess_soc_pct) AS ess_soc_pct,
    avg(ess_kw) AS ess_kw,
    avg(gpu_kw) AS gpu_kw,
    count(*) AS windows
FROM windows
GROUP BY site, minute;

-- Rejected messages, one row each however many agents rejected it (or re-sent it after a
-- restart): when first, from where, why, by which agents, and the size of the kept value.
CREATE OR REPLACE VIEW v_deadletter AS
SELECT
    epoch_ms(min(_kafka_ts_ms)) AS time,
    epoch_ms(any_value(message_ts_ms)) AS message_time,
    topic,
    "partition",
    "offset",
    arg_min(error_kind, _kafka_ts_ms) AS error_kind,
    arg_min(error, _kafka_ts_ms) AS error,
    array_to_string(list_sort(list(DISTINCT agent)), ', ') AS agents,
    any_value(octet_length(value)) AS value_bytes
FROM deadletter
GROUP BY topic, "partition", "offset";

-- Last value of every site/device/metric by event time (ties: the later message).
CREATE OR REPLACE VIEW v_telemetry_latest AS
SELECT site, device, device_type, metric, value, unit, epoch_ms(ts_ms) AS ts, source
FROM telemetry_raw
QUALIFY row_number() OVER (PARTITION BY site, device, metric ORDER BY ts_ms DESC, _partition DESC, _offset DESC) = 1;
