"""Prometheus samples to points: units, counters to rates (resets), combining series, XID alarms, rejects."""

from __future__ import annotations

import pytest

from opsloop.models.prom_metrics import (DCGM, DEFAULT_MAPPING, Batch, CounterRates, MetricMap, Normalizer,
                                         RelabelRule,
                                         Sample, metric_map)

pytestmark = pytest.mark.unit

GPU0 = {"gpu": "0", "UUID": "GPU-0", "Hostname": "n7"}
GPU1 = {"gpu": "1", "UUID": "GPU-1", "Hostname": "n7"}


def dcgm_norm() -> Normalizer:
    return Normalizer(DCGM, {"n7:9400/gpu0": "n7-g0", "n7:9400/gpu1": "n7-g1"}, "demo", "prometheus:dcgm")


def by_metric(points):
    return {(p["device"], p["metric"]): (p["value"], p["unit"], p["ts_ms"]) for p in points}


def test_dcgm_power_temperature_and_clocks_land_on_each_gpu_in_opsloop_units():
    out = dcgm_norm().normalize([Sample("DCGM_FI_DEV_POWER_USAGE", GPU0, 412.5, None),
                                 Sample("DCGM_FI_DEV_GPU_TEMP", GPU1, 52.0, None),
                                 Sample("DCGM_FI_DEV_SM_CLOCK", GPU1, 1980.0, None)], 5_000, "n7:9400")
    assert by_metric(out.points) == {("n7-g0", "gpu_power_kw"): (pytest.approx(0.4125), "kW", 5_000),
                                     ("n7-g1", "gpu_temp_c"): (52.0, "degC", 5_000),
                                     ("n7-g1", "sm_clock_mhz"): (1980.0, "MHz", 5_000)}
    assert {p["device_type"] for p in out.points} == {"gpu"}


def test_a_sample_timestamp_is_the_event_time_else_the_poll_time():
    norm = dcgm_norm()
    out = norm.normalize([Sample("DCGM_FI_DEV_GPU_TEMP", GPU0, 40.0, 1_700_000_000_123)], 9_999, "n7:9400")
    assert out.points[0]["ts_ms"] == 1_700_000_000_123


def test_a_counter_becomes_a_rate_and_a_reset_never_gives_a_negative_rate():
    rates = CounterRates()
    assert rates.update(("c",), 0, 100.0) is None  # first sample: no interval yet
    assert rates.update(("c",), 2_000, 300.0) == 100.0
    assert rates.update(("c",), 2_000, 300.0) is None  # same sample again
    assert rates.update(("c",), 4_000, 50.0) == 25.0  # restarted: 50 counted since
    assert rates.resets == 1


def test_a_new_xid_raises_one_alarm_and_the_repeated_code_does_not():
    norm = dcgm_norm()
    assert norm.normalize([Sample("DCGM_FI_DEV_XID_ERRORS", GPU1, 0.0, None)], 1_000, "n7:9400").alarms == []
    first = norm.normalize([Sample("DCGM_FI_DEV_XID_ERRORS", GPU1, 79.0, None)], 2_000, "n7:9400")
    again = norm.normalize([Sample("DCGM_FI_DEV_XID_ERRORS", GPU1, 79.0, None)], 3_000, "n7:9400")
    assert [(a["code"], a["device"], a["severity"], a["attributes"]["UUID"]) for a in first.alarms] == [
        ("XID_79", "n7-g1", "critical", "GPU-1")]
    assert again.alarms == [] and first.points == []
    other = norm.normalize([Sample("DCGM_FI_DEV_XID_ERRORS", GPU1, 13.0, None)], 4_000, "n7:9400")
    assert [(a["code"], a["severity"]) for a in other.alarms] == [("XID_13", "major")]


def test_series_of_one_device_combine_and_where_selects_label_values():
    norm = Normalizer(DEFAULT_MAPPING, {"h:9100": "node-1"}, "demo", "prometheus:node")
    cpu = [Sample("node_cpu_seconds_total", {"cpu": str(c), "mode": m}, v, None)
           for c in range(2) for m, v in (("idle", 10.0), ("user", 5.0))]
    temps = [Sample("node_hwmon_temp_celsius", {"chip": "c", "sensor": f"temp{i}"}, t, None)
             for i, t in enumerate((41.0, 67.0))]
    norm.normalize(cpu, 0, "h:9100")
    later = [s._replace(value=s.value + (1.5 if s.labels["mode"] == "idle" else 0.5)) for s in cpu]
    out = norm.normalize(later + temps, 1_000, "h:9100")
    assert by_metric(out.points) == {("node-1", "cpu_idle_cores"): (3.0, "cores", 1_000),
                                     ("node-1", "hwmon_temp_c"): (67.0, "degC", 1_000)}


def test_nan_unmapped_device_and_kept_but_unmapped_metric_are_rejected_with_the_name_the_rest_is_kept():
    norm = Normalizer(DCGM, {"n7:9400/gpu0": "n7-g0"}, "demo", "prometheus:dcgm", keep="DCGM_.*")
    out = norm.normalize([Sample("DCGM_FI_DEV_GPU_TEMP", GPU0, float("nan"), None),
                          Sample("DCGM_FI_DEV_GPU_TEMP", GPU1, 50.0, None),
                          Sample("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", GPU0, 1.0, None),
                          Sample("go_goroutines", {}, 12.0, None),
                          Sample("DCGM_FI_DEV_SM_CLOCK", GPU0, 1410.0, None)], 1_000, "n7:9400")
    assert [(r.kind, r.reason.split(" ")[0]) for r in out.rejects] == [
        ("invalid", "DCGM_FI_DEV_GPU_TEMP"), ("unknown", "DCGM_FI_DEV_GPU_TEMP:"), ("unknown", "metric")]
    assert "NaN" in out.rejects[0].reason and "'n7:9400/gpu1'" in out.rejects[1].reason
    assert "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL" in out.rejects[2].reason
    assert out.rejects[0].raw.startswith(b"DCGM_FI_DEV_GPU_TEMP{") and out.filtered == 1
    assert by_metric(out.points) == {("n7-g0", "sm_clock_mhz"): (1410.0, "MHz", 1_000)}


def test_relabel_rules_keep_and_drop_on_labels():
    keep_node = RelabelRule("keep", "node-.*", ("instance",))
    drop_lo = RelabelRule("drop", "node_network_.*;lo", ("__name__", "device"))
    assert keep_node.admits("up", {"instance": "node-1"}) and not keep_node.admits("up", {"instance": "db"})
    assert not drop_lo.admits("node_network_receive_bytes_total", {"device": "lo"})
    assert drop_lo.admits("node_network_receive_bytes_total", {"device": "eth0"})
    with pytest.raises(ValueError, match="keep or drop"):
        RelabelRule("replace", ".*")


def test_a_config_entry_becomes_a_metric_map_and_a_bad_one_is_named():
    assert metric_map("x", {"metric": "x_kw", "unit": "kW", "scale": 1, "rate": True}, "o") == MetricMap(
        "x_kw", "kW", 1.0, rate=True)
    with pytest.raises(ValueError, match=r"metrics\['x'\] needs metric and unit; unknown key\(s\) colour"):
        metric_map("x", {"metric": "x", "colour": "red"}, "o")


def test_a_route_is_decided_by_the_series_and_taken_per_sample_as_normalize_does():
    norm = Normalizer(DCGM, {"n7:9400/gpu0": "gpu-0"}, site="demo", source="t")
    routed = norm.route("DCGM_FI_DEV_GPU_TEMP", GPU0, "n7:9400")
    assert (routed.device, routed.device_type, routed.skip, routed.error) == ("gpu-0", "gpu", False, None)
    assert norm.route("DCGM_FI_DEV_GPU_TEMP", GPU1, "n7:9400").device is None  # gpu1 is not mapped
    assert norm.route("go_goroutines", GPU0, "n7:9400").selected is False
    assert norm.route("DCGM_FI_DEV_GPU_TEMP", {}, "").error[0] == "decode"  # no gpu label to name the device
    batch = Batch(norm, 5_000)
    for value in (41.0, float("nan"), float("inf")):
        batch.take(routed, value, None)
    batch.take(norm.route("DCGM_FI_DEV_GPU_TEMP", GPU1, "n7:9400"), 40.0, 4_000)
    out = batch.done()
    assert [(p["device"], p["value"], p["ts_ms"]) for p in out.points] == [("gpu-0", 41.0, 5_000)]
    assert [r.kind for r in out.rejects] == ["invalid", "invalid", "unknown"]
    assert [r.kind for r in out.rejects] == [r.kind for r in norm.normalize(
        [Sample("DCGM_FI_DEV_GPU_TEMP", GPU0, v, None) for v in (float("nan"), float("inf"))]
        + [Sample("DCGM_FI_DEV_GPU_TEMP", GPU1, 40.0, 4_000)], 5_000, "n7:9400").rejects]
