"""The site twin read as a site is read: its grid and facility meters over SunSpec Modbus TCP (our ``sunspec``
source and the SunSpec Alliance's client discover them) and its PDUs over SNMP (Debian's snmpd serving the files
the twin writes), each matching the twin's physics; a discharge the PCS is told to make lowers the meter read over
SunSpec. The ESS power comes from the real PCS simulator's registers, as in a twin run."""

from __future__ import annotations

import json

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.pcs import PcsClient
from opsloop.connectors.sources import KINDS
from opsloop.models.pdu_mib import PDU_ROOT
from opsloop.models.twin import SiteTwin
from opsloop.ops import pcs_sim
from opsloop.ops.twin import DEFAULT_DATA, TwinPoller, read_curve
from opsloop.ops.twin_protocols import MeterServer, PduFiles

from actuation import free_port
from opsloop.ops.snmp_pdu import COMMUNITY, LocalSnmpd

pytestmark = pytest.mark.integration

SITE = load_site(DEMO_SITE)
START_MS = 960_163_200_000 + 14 * 3_600_000  # an afternoon of the bundled curve
METERS = {"203": "grid-meter-1", "203:2": "facility-meter-1"}
PDU_MAPPING = {"metrics": [{"oid": f"{PDU_ROOT}.1.2", "metric": "it_kw", "scale": 0.001, "unit": "kW"},
                           {"oid": f"{PDU_ROOT}.2.1.2", "metric": "outlet{index}_kw", "scale": 0.001, "unit": "kW"},
                           {"oid": f"{PDU_ROOT}.5.1.2", "metric": "inlet{index}_temp_c", "scale": 0.1,
                            "unit": "degC"}],
               "alarms": [{"oid": f"{PDU_ROOT}.3.1.2", "raise_on": [2], "code": "PDU_BREAKER_OPEN",
                           "severity": "major", "text": "breaker {index} open"}]}


def source(kind: str, name: str, devices: dict, **options):
    block = {"kind": kind, "name": name, "timeout_s": 1, "interval_s": 1, "devices": devices,
             "options": {"host": "127.0.0.1", **options}}
    return parse_sources({"site": SITE.id, "sources": [block]}, "sources.yaml")[0]


def by_metric(readings) -> dict[tuple[str, str], float]:
    return {(p["device"], p["metric"]): p["value"] for p in readings.points}


@pytest.fixture
def running_twin(tmp_path):
    """The twin's poller on a hand-driven clock, showing its state on a SunSpec meter and in PDU files; the PCS
    simulator behind it, with a client to command it as the PCS sink would."""
    pcs_port, now = free_port(), [START_MS / 1000]
    sim = pcs_sim.from_site(SITE, pcs_port, clock=lambda: now[0], soc_pct=60.0).start()
    meter = MeterServer(free_port()).start()
    files = PduFiles(SITE, tmp_path / "pdus")
    twin_pcs, sink = PcsClient("127.0.0.1", pcs_port, timeout_s=1.0), PcsClient("127.0.0.1", pcs_port, timeout_s=1.0)
    twin = SiteTwin(SITE, read_curve(DEFAULT_DATA))
    poller = TwinPoller(twin, 60.0, START_MS, pcs=twin_pcs, outputs=[meter.show, files.show])
    try:
        yield poller, meter, files, sink, now
    finally:
        sink.close()
        poller.close()
        meter.stop()
        sim.stop()


def play(poller, now, ts_ms: int) -> dict[tuple[str, str], float]:
    now[0] = ts_ms / 1000
    return by_metric(poller.poll(ts_ms))


def read_sunspec(port: int) -> dict[tuple[str, str], float]:
    poller = KINDS["sunspec"].build(source("sunspec", "sunspec-pcs", METERS, port=port), SITE, None)
    try:
        readings = poller.poll(START_MS)
        assert readings.rejects == []
        return by_metric(readings)
    finally:
        poller.close()


def test_the_meters_read_over_sunspec_are_the_twins_and_a_discharge_lowers_the_grid_meter(running_twin):
    poller, meter, _, sink, now = running_twin
    physics = play(poller, now, START_MS)
    idle = read_sunspec(meter.port)
    # W is an int16 with a scale factor: at tens of MW it is kept to 10 kW
    assert idle[("grid-meter-1", "grid_kw")] == pytest.approx(physics[("grid-meter-1", "grid_kw")], abs=10)
    assert idle[("facility-meter-1", "facility_kw")] == pytest.approx(
        physics[("facility-meter-1", "facility_kw")], abs=10)
    assert idle[("grid-meter-1", "grid_kw")] == pytest.approx(idle[("facility-meter-1", "facility_kw")], abs=20)

    sink.write_setpoint(4000.0, 600)  # the PCS sink's write: 4 MW discharge
    physics = play(poller, now, START_MS + 60_000)
    discharging = read_sunspec(meter.port)
    assert physics[("ess-1", "ess_kw")] == pytest.approx(4000.0)
    assert discharging[("grid-meter-1", "grid_kw")] == pytest.approx(physics[("grid-meter-1", "grid_kw")], abs=10)
    cut = discharging[("facility-meter-1", "facility_kw")] - discharging[("grid-meter-1", "grid_kw")]
    assert cut == pytest.approx(4000.0, abs=20)
    assert discharging[("grid-meter-1", "grid_kw")] < idle[("grid-meter-1", "grid_kw")] - 3000


def test_the_sunspec_alliances_client_discovers_the_twins_meters(running_twin):
    from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

    poller, meter, _, _, now = running_twin
    physics = play(poller, now, START_MS)
    device = SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=meter.port, timeout=5)
    try:
        device.scan()
        assert [m.model_id for m in device.model_list] == [1, 203, 203]
        assert device.models[1][0].Md.cvalue == "twin-meter"
        assert device.models[203][0].W.cvalue / 1000 == pytest.approx(physics[("grid-meter-1", "grid_kw")], abs=10)
        assert device.models[203][1].W.cvalue / 1000 == pytest.approx(
            physics[("facility-meter-1", "facility_kw")], abs=10)
    finally:
        device.close()


def test_the_pdus_read_over_snmp_are_the_twins_and_a_breaker_trip_shows(running_twin, tmp_path):
    from opsloop.models.twin import Fault

    poller, _, files, _, now = running_twin
    physics = play(poller, now, START_MS)
    agent = LocalSnmpd(tmp_path / "snmpd-a1")
    (tmp_path / "snmpd-a1").mkdir()
    agent.values_file = files.path("pdu-a1")  # the agent serves the file the twin writes
    agent.start(json.loads(files.path("pdu-a1").read_text()))
    config = source("snmp", "pdu-a1-snmp", {f"127.0.0.1:{agent.port}": "pdu-a1"}, port=agent.port, retries=0,
                    version="v2c", community=COMMUNITY, **PDU_MAPPING)
    snmp = KINDS["snmp"].build(config, SITE, None)
    try:
        read = by_metric(snmp.poll(START_MS))
        assert read[("pdu-a1", "it_kw")] == pytest.approx(physics[("pdu-a1", "it_kw")], abs=0.001)
        assert read[("pdu-a1", "outlet1_kw")] == pytest.approx(physics[("rack-a01", "rack_kw")], abs=0.001)
        assert read[("pdu-a1", "outlet2_kw")] == pytest.approx(physics[("rack-a02", "rack_kw")], abs=0.001)
        assert read[("pdu-a1", "inlet1_temp_c")] == pytest.approx(physics[("rack-a01", "inlet_temp_c")], abs=0.05)

        # a breaker trip darkens rack-a02: the PDU's power falls and its breaker reads open over SNMP
        poller.twin.inject(Fault("power", "rack-a02", START_MS + 30_000, START_MS + 3_600_000,
                                 frozenset({"rack-a02"})))
        physics = play(poller, now, START_MS + 60_000)
        tripped = snmp.poll(START_MS + 60_000)
        read = by_metric(tripped)
        assert read[("pdu-a1", "outlet2_kw")] == 0.0
        assert read[("pdu-a1", "it_kw")] == pytest.approx(physics[("pdu-a1", "it_kw")], abs=0.001)
        assert read[("pdu-a1", "it_kw")] == pytest.approx(read[("pdu-a1", "outlet1_kw")], abs=0.002)
        assert [(a["code"], a["state"], a["text"]) for a in tripped.alarms] == [
            ("PDU_BREAKER_OPEN", "raise", "pdu-a1: breaker 2 open")]
    finally:
        snmp.close()
        agent.stop()
