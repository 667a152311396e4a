"""Kind ``sunspec`` against our PCS simulator over real Modbus TCP: discovery, scaling, bad data,
a Modbus exception, a dead device and the monitoring-loss alarm, and the SunSpec Alliance's own
client (pysunspec2) reading the same values."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from opsloop.config.site import parse_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources import KINDS
from opsloop.connectors.sources.base import SourceUnavailable
from opsloop.connectors.sources.loop import SourceRun
from opsloop.models import sunspec
from opsloop.ops.pcs_sim import from_site
from opsloop.schemas.codec import Codec

from actuation import free_port
from source_run import finish_and_read

pytestmark = pytest.mark.integration

SITE = parse_site({"site": {"id": "lab"},
                   "ess": [{"id": "ess-1", "capacity_kwh": 10000, "pcs_charge_kw": 5000, "pcs_discharge_kw": 5000,
                            "round_trip_efficiency": 0.9, "reserve_soc_pct": 10, "soh_pct": 97}],
                   "devices": [{"id": "grid-meter-1", "type": "grid_meter"},
                               {"id": "facility-meter-1", "type": "facility_meter"},
                               {"id": "sunspec-pcs", "type": "collector"}]}, "lab.yaml")
MAPPED = {"103": "ess-1", "124": "ess-1", "802": "ess-1", "203": "grid-meter-1", "203:2": "facility-meter-1"}


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def config(port: int, devices=MAPPED, **options):
    block = {"kind": "sunspec", "name": "sunspec-pcs", "timeout_s": 1, "interval_s": 0.01, "backoff_max_s": 0.01,
             "fail_after": 2, "devices": dict(devices), "options": {"host": "127.0.0.1", "port": port, **options}}
    return parse_sources({"site": "lab", "sources": [block]}, "sources.yaml")[0]


@pytest.fixture
def sim():
    clock = Clock()
    with from_site(SITE, free_port(), clock=clock, soc_pct=80.0) as simulator:
        simulator.facility_kw = 12_000.0
        simulator.battery.command(2500.0, 600, clock())  # discharging 2.5 MW: the grid meter reads 9.5 MW
        simulator.test_clock = clock
        yield simulator


def values(readings) -> dict[tuple[str, str], float]:
    return {(p["device"], p["metric"]): p["value"] for p in readings.points}


def test_meters_and_the_ess_are_read_by_discovery_scaled_to_kw_and_percent(sim):
    poller = KINDS["sunspec"].build(config(sim.port), SITE, sim.test_clock)
    try:
        got = poller.poll(1_000)
    finally:
        poller.close()
    v = values(got)
    assert v[("grid-meter-1", "grid_kw")] == pytest.approx(9500.0)
    assert v[("facility-meter-1", "facility_kw")] == pytest.approx(12000.0)
    assert v[("facility-meter-1", "facility_kw_a")] == pytest.approx(4000.0)
    assert v[("grid-meter-1", "grid_hz")] == 50.0 and v[("grid-meter-1", "grid_v")] == 230.0
    assert v[("ess-1", "ess_kw")] == pytest.approx(2500.0)  # model 103, the PCS's AC side
    assert v[("ess-1", "ess_dc_kw")] == pytest.approx(2500.0)  # model 802
    assert v[("ess-1", "ess_soc_pct")] == pytest.approx(80.0, abs=0.1)
    assert v[("ess-1", "ess_soh_pct")] == 97.0
    assert v[("ess-1", "ess_reserve_pct")] == 10.0 and v[("ess-1", "ess_charge_max_kw")] == 5000.0
    assert ("grid-meter-1", "grid_kvar") not in v  # the meter does not implement VAR: no point
    assert len([p for p in got.points if p["metric"] == "ess_soc_pct"]) == 1  # 802's SoC, not 124's as well
    assert {p["device_type"] for p in got.points} == {"grid_meter", "facility_meter", "ess"}
    assert got.rejects == [] and got.alarms == []


def test_pysunspec2_reads_the_same_values_as_our_source(sim):
    from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

    poller = KINDS["sunspec"].build(config(sim.port), SITE, sim.test_clock)
    try:
        ours = values(poller.poll(1_000))
    finally:
        poller.close()
    device = SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=sim.port, timeout=5)
    try:
        device.scan()
        theirs = {("grid-meter-1", "grid_kw"): device.models[203][0].W.cvalue / 1000,
                  ("facility-meter-1", "facility_kw"): device.models[203][1].W.cvalue / 1000,
                  ("facility-meter-1", "facility_kw_b"): device.models[203][1].WphB.cvalue / 1000,
                  ("facility-meter-1", "facility_a"): device.models[203][1].A.cvalue,
                  ("grid-meter-1", "grid_hz"): device.models[203][0].Hz.cvalue,
                  ("grid-meter-1", "grid_pf_pct"): device.models[203][0].PF.cvalue,
                  ("ess-1", "ess_kw"): device.models[103][0].W.cvalue / 1000,
                  ("ess-1", "ess_dc_kw"): device.models[802][0].W.cvalue / 1000,
                  ("ess-1", "ess_soc_pct"): device.models[802][0].SoC.cvalue,
                  ("ess-1", "ess_soh_pct"): device.models[802][0].SoH.cvalue,
                  ("ess-1", "ess_charge_max_kw"): device.models[124][0].WChaMax.cvalue / 1000}
        assert device.models[203][0].VAR.cvalue is None  # not implemented, for them as for us
        assert [m.model_id for m in device.model_list] == [1, 103, 124, 802, 203, 203]
    finally:
        device.close()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-9), key


def test_an_unimplemented_value_is_no_point_and_a_broken_scale_factor_is_dead_lettered(sim):
    sim.overrides = [(sunspec.FACILITY_METER_AT, sunspec.METER_ID, {"Hz": 0x8000}),
                     (sunspec.GRID_METER_AT, sunspec.METER_ID, {"W_SF": 0x8000})]
    poller = KINDS["sunspec"].build(config(sim.port), SITE, sim.test_clock)
    try:
        got = poller.poll(1_000)
    finally:
        poller.close()
    v = values(got)
    assert ("facility-meter-1", "facility_hz") not in v and ("facility-meter-1", "facility_kw") in v
    assert ("grid-meter-1", "grid_kw") not in v and ("grid-meter-1", "grid_hz") in v
    # W and the three phase powers share W_SF: 9.5 MW at SF 3 is 9500, a third of it 3167
    assert [(r.kind, r.reason) for r in got.rejects] == [
        ("invalid", f"SunSpec model 203 of grid-meter-1: {point} = {raw} has no usable scale factor W_SF (0x8000)")
        for point, raw in (("W", 9500), ("WphA", 3167), ("WphB", 3167), ("WphC", 3167))]


def test_a_model_the_config_does_not_map_is_dead_lettered_as_unknown_once(sim):
    poller = KINDS["sunspec"].build(config(sim.port, devices={k: v for k, v in MAPPED.items() if k != "203:2"}),
                                    SITE, sim.test_clock)
    try:
        first, second = poller.poll(1_000), poller.poll(2_000)
    finally:
        poller.close()
    assert [(r.kind, r.raw) for r in first.rejects] == [("unknown", f"model 203:2 at {sunspec.FACILITY_METER_AT}".encode())]
    assert "203:2" in first.rejects[0].reason and second.rejects == []
    assert not any(p["device"] == "facility-meter-1" for p in first.points)


def test_an_ignored_model_is_neither_read_nor_dead_lettered(sim):
    meters_elsewhere = {k: v for k, v in MAPPED.items() if not k.startswith("203")}  # the site meter is another device
    poller = KINDS["sunspec"].build(config(sim.port, devices=meters_elsewhere, ignore=["203", "203:2"]),
                                    SITE, sim.test_clock)
    try:
        readings = poller.poll(1_000)
    finally:
        poller.close()
    assert readings.rejects == []
    assert {p["device"] for p in readings.points} == {"ess-1"}


def test_ignore_must_be_a_list():
    with pytest.raises(ValueError, match="options.ignore must be a list"):
        KINDS["sunspec"].build(config(1, ignore="203"), SITE, Clock())


def test_a_modbus_exception_and_a_refused_connection_are_source_unavailable(sim):
    poller = KINDS["sunspec"].build(config(sim.port, base=50000), SITE, sim.test_clock)
    try:
        with pytest.raises(SourceUnavailable, match=r"Modbus exception 2 \(illegal data address\) reading 2 "
                                                    r"registers at 50000"):
            poller.poll(1_000)
    finally:
        poller.close()
    dead = KINDS["sunspec"].build(config(free_port()), SITE, sim.test_clock)
    with pytest.raises(SourceUnavailable, match="cannot connect"):
        dead.poll(1_000)


def test_a_device_that_accepts_but_never_answers_times_out_as_source_unavailable():
    import socket
    import time

    with socket.socket() as silent:  # the TCP handshake succeeds (listen backlog), no Modbus reply ever comes
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        poller = KINDS["sunspec"].build(config(silent.getsockname()[1]), SITE, None)
        began = time.monotonic()
        try:
            with pytest.raises(SourceUnavailable, match="reading 2 registers at 40000"):
                poller.poll(1_000)
        finally:
            poller.close()
        assert time.monotonic() - began < 5  # timeout_s is 1: the poll gives up, it does not hang


def test_bms_alarms_and_monitoring_loss_reach_kafka(kafka_settings, read_topic):
    clock = Clock()
    port = free_port()
    site_sim = from_site(SITE, port, clock=clock, soc_pct=80.0)
    site_sim.facility_kw = 8000.0
    source = SourceRun(kafka_settings, config(port), SITE, KINDS["sunspec"].build(config(port), SITE, clock),
                       clock=clock)
    with site_sim:
        source.poll_once()
        site_sim.bms_events = 1 << 1  # OVER_TEMP_ALARM
        source.poll_once()
        site_sim.bms_events = 0
        source.poll_once()
    for _ in range(2):  # the device is gone: fail_after = 2
        source.poll_once()
    with from_site(SITE, port, clock=clock, soc_pct=80.0) as back:  # the device is back
        back.facility_kw = 7000.0
        source.poll_once()
        published = finish_and_read(source, kafka_settings, read_topic)
    alarms, points = published["Alarm"], published["TelemetryPoint"]
    by_device = {d: [(a["code"], a["state"]) for a in alarms if a["device"] == d] for d in ("ess-1", "sunspec-pcs")}
    assert by_device == {"ess-1": [("BMS_OVER_TEMP_ALARM", "raise"), ("BMS_OVER_TEMP_ALARM", "clear")],
                         "sunspec-pcs": [("COLLECTOR_DOWN", "raise"), ("COLLECTOR_DOWN", "clear")]}
    assert len(alarms) == 4
    assert [p["value"] for p in points if p["metric"] == "grid_kw"] == [8000.0, 8000.0, 8000.0, 7000.0]


def test_opsloop_source_runs_the_example_config_on_the_demo_site(kafka_settings, read_topic, tmp_path):
    import yaml

    from opsloop.config.assets import DEMO_SITE
    from opsloop.config.site import load_site
    from opsloop.ops import sources

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "ops" / "sources" / "sunspec.yaml").read_text())
    port = free_port()
    doc["sources"][0]["options"]["port"] = port
    doc["sources"][0]["interval_s"] = 0.2
    config_file = tmp_path / "sunspec.yaml"
    config_file.write_text(yaml.safe_dump(doc))
    with from_site(load_site(DEMO_SITE), port, soc_pct=55.0) as simulator:
        simulator.facility_kw = 30_000.0
        stop = threading.Event()
        threading.Timer(2.0, stop.set).start()
        health = sources.run(kafka_settings, "sunspec", config_file, stop=stop)
    assert health["sunspec-pcs"]["status"] == "ok" and health["sunspec-pcs"]["dead_letters"] == 0
    codec = Codec.default()
    points = [codec.decode_as("TelemetryPoint", m.value()) for m in read_topic(kafka_settings, "telemetry.raw")]
    latest = {(p["device"], p["metric"]): p["value"] for p in points}
    assert latest[("grid-meter-1", "grid_kw")] == 30_000.0 and latest[("ess-1", "ess_soc_pct")] == 55.0
    assert {p["site"] for p in points} == {"demo"} and {p["source"] for p in points} == {"sunspec-pcs"}


MANY = parse_site({"site": {"id": "lab"},
                   "ess": [{"id": "ess-1", "capacity_kwh": 10000, "pcs_charge_kw": 5000, "pcs_discharge_kw": 5000,
                            "round_trip_efficiency": 0.9, "reserve_soc_pct": 10, "soh_pct": 97}],
                   "devices": [{"id": f"{kind}-meter-{i}", "type": f"{kind}_meter"}
                               for i in (1, 2, 3) for kind in ("grid", "facility")]
                   + [{"id": "sunspec-pcs", "type": "collector"}]}, "lab.yaml")


def test_one_source_polls_several_devices_at_once_and_a_dead_one_does_not_stop_the_others():
    clock = Clock()
    sims = [from_site(MANY, free_port(), clock=clock, soc_pct=80.0) for _ in range(3)]
    dead_port = free_port()
    targets = [{"host": "127.0.0.1", "port": s.port, "name": f"pcs-{i}"} for i, s in enumerate(sims, 1)]
    devices = {f"pcs-{i}/{model}": f"{kind}-meter-{i}" for i in (1, 2, 3)
               for model, kind in (("203", "grid"), ("203:2", "facility"))}
    devices["pcs-1/103"] = "ess-1"
    block = {"kind": "sunspec", "name": "sunspec-pcs", "timeout_s": 1, "devices": devices,
             "options": {"targets": targets + [{"host": "127.0.0.1", "port": dead_port}]}}
    cfg = parse_sources({"site": "lab", "sources": [block]}, "sources.yaml")[0]
    for i, s in enumerate(sims, 1):
        s.facility_kw = 1000.0 * i
        s.start()
    poller = KINDS["sunspec"].build(cfg, MANY, clock)
    try:
        got = poller.poll(1_000)
        again = poller.poll(2_000)
    finally:
        poller.close()
        for s in sims:
            s.stop()
    v = values(got)
    assert [v[(f"facility-meter-{i}", "facility_kw")] for i in (1, 2, 3)] == [1000.0, 2000.0, 3000.0]
    assert v[("ess-1", "ess_kw")] == 0.0
    # the 124 and 802 of pcs-1, and 103, 124, 802 of pcs-2 and pcs-3, are not mapped: named with their target
    unknown = sorted(r.reason.split("(devices: {")[1].split(":")[0] for r in got.rejects if r.kind == "unknown")
    assert unknown == ["'pcs-1/124'", "'pcs-1/802'", "'pcs-2/103'", "'pcs-2/124'", "'pcs-2/802'",
                       "'pcs-3/103'", "'pcs-3/124'", "'pcs-3/802'"]
    assert len(again.points) == len(got.points) and again.rejects == []
    assert poller.failed_targets == {f"127.0.0.1:{dead_port} unit 1": 2}
    everything_dead = parse_sources({"site": "lab", "sources": [{**block, "options": {"targets": [
        {"host": "127.0.0.1", "port": dead_port}, {"host": "127.0.0.1", "port": free_port(), "unit": 2}]}}]},
        "sources.yaml")[0]
    poller = KINDS["sunspec"].build(everything_dead, MANY, clock)
    try:
        with pytest.raises(SourceUnavailable, match=f"127.0.0.1:{dead_port} unit 1: cannot connect.*unit 2: cannot"):
            poller.poll(3_000)
    finally:
        poller.close()
