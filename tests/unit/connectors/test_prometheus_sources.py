"""The prometheus and remote-write kinds without a broker: real vLLM scrapes, the DCGM fixture, bad lines,
remote-write bodies and the receiver's answers, the example configs against the demo site."""

from __future__ import annotations

import io
from pathlib import Path

import cramjam
import pytest

from opsloop.config.site import load_site
from opsloop.config.sources import load_sources, parse_sources
from opsloop.connectors.sources import KINDS
from opsloop.connectors.sources.base import Readings
from opsloop.connectors.sources.loop import mapping_errors
from opsloop.connectors.sources.prometheus import normalizer, parse_exposition, readings
from opsloop.connectors.sources.remote_write import RawWriteRequest, RemoteWriteReceiver, Token, WriteRequest

pytestmark = pytest.mark.unit

DATA = Path(__file__).parents[2] / "data"
ROOT = Path(__file__).parents[3]
SITE = load_site(ROOT / "config" / "sites" / "demo.yaml")


def config(kind: str, devices: dict, **options):
    return parse_sources({"site": "demo", "sources": [{"kind": kind, "name": "prom-node", "devices": devices,
                                                        "options": options}]}, "t.yaml")[0]


def points(r: Readings) -> dict:
    return {(p["device"], p["metric"]): p["value"] for p in r.points}


def test_real_vllm_scrapes_give_queue_kv_cache_and_token_throughput():
    norm = normalizer(config("prometheus", {"10.1.2.3:8000": "rack-b01-n1"}, url="u", mapping="vllm"), SITE)
    busy, bad = parse_exposition((DATA / "vllm" / "metrics-busy.prom").read_text())
    idle, bad_idle = parse_exposition((DATA / "vllm" / "metrics-idle.prom").read_text())
    assert bad == bad_idle == [] and len(busy) > 300
    first = readings(norm.normalize(busy, 1_000_000, "10.1.2.3:8000"))
    second = readings(norm.normalize(idle, 1_010_000, "10.1.2.3:8000"))
    assert points(first) == {("rack-b01-n1", "llm_requests_running"): 4.0,
                             ("rack-b01-n1", "llm_requests_waiting"): 0.0,
                             ("rack-b01-n1", "kv_cache_usage_pct"): pytest.approx(1.1019283746556474)}
    assert points(second) == {("rack-b01-n1", "llm_requests_running"): 0.0,
                              ("rack-b01-n1", "llm_requests_waiting"): 0.0,
                              ("rack-b01-n1", "kv_cache_usage_pct"): 0.0,
                              ("rack-b01-n1", "llm_preemptions_per_s"): 0.0,
                              ("rack-b01-n1", "prompt_tokens_per_s"): 0.0,  # 264 -> 264 tokens
                              ("rack-b01-n1", "generation_tokens_per_s"): pytest.approx(4.9)}  # 275 -> 324 in 10 s
    assert {p["device_type"] for p in second.points} == {"gpu_node"}  # the demo topology types the device
    assert first.rejects == second.rejects == []


def test_dcgm_scrapes_give_gpu_power_energy_rate_errors_and_an_xid_alarm():
    devices = {"127.0.0.1:9400/gpu0": "rack-a01-n1-g0", "127.0.0.1:9400/gpu1": "rack-a01-n1-g1"}
    norm = normalizer(config("prometheus", devices, url="u", mapping="dcgm"), SITE)
    one, _ = parse_exposition((DATA / "dcgm" / "metrics-1.prom").read_text())
    two, _ = parse_exposition((DATA / "dcgm" / "metrics-2.prom").read_text())
    first = readings(norm.normalize(one, 0, "127.0.0.1:9400"))
    second = readings(norm.normalize(two, 15_000, "127.0.0.1:9400"))
    assert first.alarms == [] and first.rejects == second.rejects == []
    got = points(second)
    assert got[("rack-a01-n1-g1", "gpu_power_kw")] == pytest.approx(0.69987)
    assert got[("rack-a01-n1-g1", "gpu_energy_power_kw")] == pytest.approx(0.69987)  # mJ counter over 15 s
    assert got[("rack-a01-n1-g0", "gpu_energy_power_kw")] == pytest.approx(0.4205)
    assert (got[("rack-a01-n1-g1", "ecc_dbe_count")], got[("rack-a01-n1-g1", "rows_remapped_uncorrectable")]) == (1, 1)
    assert (got[("rack-a01-n1-g0", "gpu_temp_c")], got[("rack-a01-n1-g0", "sm_clock_mhz")]) == (39.0, 1980.0)
    assert [(a["code"], a["device"], a["device_type"], a["severity"]) for a in second.alarms] == [
        ("XID_79", "rack-a01-n1-g1", "gpu", "critical")]


def test_a_malformed_line_is_one_decode_reject_and_every_other_sample_is_read():
    text = (DATA / "dcgm" / "metrics-1.prom").read_text().replace(
        "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n", "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\nDCGM_FI_DEV_GPU_TEMP{gpu=\"0\" 38\n")
    samples, bad = parse_exposition(text)
    whole, _ = parse_exposition((DATA / "dcgm" / "metrics-1.prom").read_text())
    assert [(b.kind, b.raw) for b in bad] == [("decode", b'DCGM_FI_DEV_GPU_TEMP{gpu="0" 38')]
    assert "malformed exposition line" in bad[0].reason
    assert [(s.name.removesuffix("_total"), s.value) for s in samples] == [
        (s.name.removesuffix("_total"), s.value) for s in whole]  # the typed parse adds _total to counters


def test_the_example_configs_fit_the_demo_site_and_name_registered_kinds():
    for path in sorted((ROOT / "ops" / "sources").glob("*.yaml")):
        for cfg in load_sources(path):
            if cfg.kind in ("prometheus", "remote-write"):
                assert cfg.kind in KINDS
                assert mapping_errors(cfg, SITE) == [], path
                normalizer(cfg, SITE)


def write_body(series: list[tuple[dict, list[tuple[float, int]]]]) -> bytes:
    request = WriteRequest()
    for labels, samples in series:
        ts = request.timeseries.add()
        for name, value in labels.items():
            ts.labels.add(name=name, value=value)
        for value, stamp in samples:
            ts.samples.add(value=value, timestamp=stamp)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


@pytest.fixture
def receiver():
    cfg = parse_sources({"site": "demo", "sources": [{
        "kind": "remote-write", "name": "prom-remote-write", "devices": {"n1:9100": "rack-a01-n1"},
        "options": {"listen": "127.0.0.1:0", "max_body_bytes": 2048,
                    "relabel": [{"action": "drop", "source_labels": ["__name__", "device"],
                                 "regex": "node_network_.*;lo"}]}}]}, "t.yaml")[0]
    rx = RemoteWriteReceiver(cfg, SITE, token=Token("s3cret"))
    yield rx
    rx.close()


def post(rx, body: bytes, auth: str | None = "Bearer s3cret", length: int | None = None):
    return rx.handle(auth, len(body) if length is None else length, io.BytesIO(body).read, 99_000)


def test_remote_write_maps_relabels_and_answers_each_bad_request_with_its_status_and_count(receiver):
    delivered: list[Readings] = []
    receiver.deliver = lambda r: delivered.append(r) or True
    node = {"job": "node", "instance": "n1:9100"}
    body = write_body([({"__name__": "node_load1", **node}, [(1.5, 1_000), (2.0, 16_000)]),
                       ({"__name__": "node_network_receive_bytes_total", "device": "lo", **node}, [(1e9, 1_000)]),
                       ({"__name__": "node_network_receive_bytes_total", "device": "eth0", **node},
                        [(1e6, 1_000), (4e6, 16_000)]),
                       ({"__name__": "node_load1", "job": "node", "instance": "other:9100"}, [(0.5, 1_000)]),
                       ({"__name__": "go_goroutines", **node}, [(12, 1_000)])])
    assert post(receiver, body) == (204, "")
    got = {(p["metric"], p["ts_ms"]): p["value"] for p in delivered[0].points}
    assert got == {("load_1m", 1_000): 1.5, ("load_1m", 16_000): 2.0, ("net_rx_mbps", 16_000): pytest.approx(1.6)}
    assert [(r.kind, "other:9100" in r.reason) for r in delivered[0].rejects] == [("unknown", True)]
    assert receiver.stats["skipped"] == 2  # lo relabelled away, go_goroutines not mapped nor kept

    assert post(receiver, body, auth="Bearer nope")[0] == 401
    assert post(receiver, body, auth=None)[0] == 401
    assert post(receiver, b"x" * 4096)[0] == 413
    status, reason = post(receiver, b"definitely not snappy")
    assert status == 400 and "not snappy" in reason
    assert [(r.kind, r.raw) for r in delivered[-1].rejects] == [("decode", b"definitely not snappy")]
    status, reason = post(receiver, bytes(cramjam.snappy.compress_raw(b"\xff\xff\xff")))
    assert status == 400 and "not a remote-write WriteRequest" in reason
    assert receiver.handle("Bearer s3cret", len(body), io.BytesIO(body).read, 0,
                           "application/x-protobuf;proto=io.prometheus.write.v2.Request")[0] == 415
    receiver.deliver = lambda r: False  # the buffer is full
    assert post(receiver, body)[0] == 503
    assert {k: receiver.stats[k] for k in ("accepted", "unauthorized", "too_large", "bad_body", "busy")} == {
        "accepted": 1, "unauthorized": 2, "too_large": 1, "bad_body": 2, "busy": 1}


def test_the_token_is_never_shown():
    assert "s3cret" not in repr(Token("s3cret"))


def test_a_vllm_restart_resets_its_counters_and_gives_no_negative_throughput():
    norm = normalizer(config("prometheus", {"10.1.2.3:8000": "rack-b01-n1"}, url="u", mapping="vllm"), SITE)
    idle, _ = parse_exposition((DATA / "vllm" / "metrics-idle.prom").read_text())
    busy, _ = parse_exposition((DATA / "vllm" / "metrics-busy.prom").read_text())
    norm.normalize(idle, 0, "10.1.2.3:8000")
    after = points(readings(norm.normalize(busy, 5_000, "10.1.2.3:8000")))  # 324 -> 275 generated tokens: restarted
    assert after[("rack-b01-n1", "generation_tokens_per_s")] == 55.0  # 275 since the restart, over 5 s
    assert norm.rates.resets == 1 and min(after.values()) >= 0


def test_a_remote_write_endpoint_off_loopback_without_a_token_is_refused(monkeypatch):
    monkeypatch.delenv("OPSLOOP_REMOTE_WRITE_TOKEN", raising=False)
    cfg = parse_sources({"site": "demo", "sources": [{"kind": "remote-write", "name": "prom-remote-write",
                                                       "options": {"listen": "0.0.0.0:0"}}]}, "t.yaml")[0]
    with pytest.raises(ValueError, match="no remote-write token"):
        RemoteWriteReceiver(cfg, SITE)


def test_a_scrape_target_no_device_maps_is_refused_at_start_with_the_target_named():
    from opsloop.connectors.sources.prometheus import PrometheusScrape

    cfg = config("prometheus", {"10.0.0.1:9100": "rack-a01-n1"}, urls=["http://10.0.0.1:9100/metrics",
                                                                       "http://10.0.0.2:9400/metrics"])
    with pytest.raises(ValueError, match=r"nothing maps target '10.0.0.2:9400'"):
        PrometheusScrape(cfg, SITE)


def test_a_reader_reads_known_series_from_their_values_alone_and_still_rejects_a_bad_value():
    from opsloop.connectors.sources.prometheus import ExpositionReader

    reader = ExpositionReader()
    first, _ = reader.read('up\t1\nvllm:x{a="b} c",d="e"} 2 1700000000000\n')
    again, bad = reader.read('up\t0\nvllm:x{a="b} c",d="e"} 3\nvllm:x{a="b} c",d="e"} zero\n')
    assert [(s.name, s.labels, s.value, s.ts_ms) for s in first] == [
        ("up", {}, 1.0, None), ("vllm:x", {"a": "b} c", "d": "e"}, 2.0, 1_700_000_000_000)]
    assert [(s.name, s.labels, s.value, s.ts_ms) for s in again] == [
        ("up", {}, 0.0, None), ("vllm:x", {"a": "b} c", "d": "e"}, 3.0, None)]
    assert [(b.kind, b.raw) for b in bad] == [("decode", b'vllm:x{a="b} c",d="e"} zero')]
    assert set(reader.series) == {"up", 'vllm:x{a="b} c",d="e"}'}


def test_remote_write_maps_a_series_once_and_reads_its_later_samples_through_the_same_route(receiver):
    delivered: list[Readings] = []
    receiver.deliver = lambda r: delivered.append(r) or True
    node = {"__name__": "node_network_receive_bytes_total", "device": "eth0", "job": "node", "instance": "n1:9100"}
    assert post(receiver, write_body([(node, [(1e6, 1_000)])])) == (204, "")
    assert post(receiver, write_body([(node, [(4e6, 16_000)])])) == (204, "")  # the counter's state carries over
    assert [(p["metric"], p["value"]) for p in delivered[1].points] == [("net_rx_mbps", pytest.approx(1.6))]
    assert len(receiver.routes.routes) == 1


def test_a_label_that_is_not_a_label_is_a_bad_body_and_no_sample_of_the_request_is_taken(receiver):
    delivered: list[Readings] = []
    receiver.deliver = lambda r: delivered.append(r) or True
    good = write_body([({"__name__": "node_load1", "instance": "n1:9100"}, [(1.0, 1_000)])])
    raw = RawWriteRequest()
    raw.ParseFromString(bytes(cramjam.snappy.decompress_raw(good)))
    series = raw.timeseries.add()
    series.labels.append(b"\x0a\xff")  # a string field whose length runs past the end
    series.samples.add(value=1.0, timestamp=1_000)
    status, reason = post(receiver, bytes(cramjam.snappy.compress_raw(raw.SerializeToString())))
    assert status == 400 and "a label" in reason
    assert [r.kind for r in delivered[0].rejects] == ["decode"] and not delivered[0].points
