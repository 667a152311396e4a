"""The cooling lever against a real BACnet/IP device: the twin's plant (bacpypes3) served on a UDP port of
127.0.0.1, read and commanded by connectors/bacnet.py; and the week's evaluation on it, shortened."""

import pytest

from opsloop.config.assets import POLICY_FILE
from opsloop.config.policy import load_policy
from opsloop.connectors.bacnet import BacnetClient, BacnetError, SetpointDriver, free_udp_port
from opsloop.models import cooling
from opsloop.models.twin import SiteState
from opsloop.ops.twin_protocols import SETPOINT_OBJECT, BacnetPlant

pytestmark = pytest.mark.integration
LIMITS = load_policy(POLICY_FILE).cooling


@pytest.fixture
def plant():
    served = BacnetPlant(free_udp_port(), ["zone-a1", "zone-b1"], setpoint_c=18.0).start()
    served.show(SiteState(0, 20.0, 1.0, 1.0, 2.0, 0.0, 2.0, zone_c={"zone-a1": 21.5, "zone-b1": 20.5}))
    yield served
    served.stop()


@pytest.fixture
def client():
    c = BacnetClient(timeout_s=2.0)
    yield c
    c.close()


def test_a_write_reads_back_moves_the_plant_and_verifies_once_the_inlets_hold(plant, client):
    driver = SetpointDriver(client, plant.address, SETPOINT_OBJECT, plant.inlet_objects)
    before = driver.read()
    assert before.setpoint_c == 18.0 and before.inlet_c == pytest.approx({"zone-a1": 21.5, "zone-b1": 20.5})
    assert driver.write(19.0) == 19.0
    assert plant.setpoint_c() == 19.0  # what the twin reads back each poll
    plant.show(SiteState(0, 20.0, 1.0, 1.0, 2.0, 0.0, 2.0, zone_c={"zone-a1": 22.5, "zone-b1": 21.5}))
    after = driver.read()
    verdict = cooling.verify(19.0, after.setpoint_c, after.inlet_c, LIMITS, applied_ms=0, now_ms=900_000)
    assert verdict.status == cooling.VERIFIED


def test_a_higher_priority_command_shows_on_read_back_and_the_change_is_reverted(plant, client):
    bms = BacnetClient(timeout_s=2.0)  # the building management system holds the setpoint at priority 5
    try:
        bms.write_real(plant.address, SETPOINT_OBJECT, 17.0, priority=5)
        driver = SetpointDriver(client, plant.address, SETPOINT_OBJECT, plant.inlet_objects, priority=8)
        read_back = driver.write(20.0)
        verdict = cooling.verify(20.0, read_back, driver.read().inlet_c, LIMITS, applied_ms=0, now_ms=1000)
        assert (read_back, verdict.reason_code) == (17.0, cooling.READBACK_MISMATCH)
        driver.write(18.0)  # the revert: our slot back to what held before
        bms.write_real(plant.address, SETPOINT_OBJECT, None, priority=5)  # the BMS lets go
        assert driver.read().setpoint_c == 18.0  # our reverted value, not the refused 20
    finally:
        bms.close()


def test_a_device_that_does_not_answer_raises_instead_of_hanging(client):
    client.timeout_s = 0.5
    with pytest.raises(BacnetError):
        client.read_real(f"127.0.0.1:{free_udp_port()}", SETPOINT_OBJECT)


def test_a_day_of_the_loop_on_the_twin_saves_cooling_with_every_change_verified_or_reverted():
    from opsloop.ops.evals.cooling import evaluate

    result = evaluate(days=1.0)
    loop = result["runs"][-1]
    assert loop["inlet_violations"] == 0 and loop["changes"] > 0
    assert loop["verified"] + loop["reverted"] == loop["changes"]
    assert result["saved_share"]["no loop"] > 0.03  # the day starts at 18 degC: less saved than over a week
    assert result["runs"][0]["cooling_kwh"] > loop["cooling_kwh"]


def test_the_twin_reads_its_setpoint_back_from_its_bacnet_device_so_a_write_moves_power_and_inlets(client):
    from opsloop.config.assets import DEMO_SITE
    from opsloop.config.site import load_site
    from opsloop.models.twin import SiteTwin
    from opsloop.ops.twin import DEFAULT_DATA, TwinPoller, read_curve

    site, curve = load_site(DEMO_SITE), read_curve(DEFAULT_DATA)
    twin = SiteTwin(site, curve)
    zones = [e["id"] for e in site.topology["cooling"] if e["type"] == "zone"]
    served = BacnetPlant(free_udp_port(), zones, twin.supply_setpoint_c).start()
    try:
        start = curve[0][0]
        poller = TwinPoller(twin, 60.0, start, outputs=[served.show], setpoint=served.setpoint_c)

        def cooling_and_setpoint(now_ms):
            points = poller.poll(now_ms).points
            pick = {(p["device"], p["metric"]): p["value"] for p in points if p["ts_ms"] == now_ms}
            return pick[("facility-meter-1", "cooling_kw")], pick[("crah-a1", "supply_setpoint_c")]

        cold_kw, cold_c = cooling_and_setpoint(start)
        driver = SetpointDriver(client, served.address, SETPOINT_OBJECT, served.inlet_objects)
        inlet_before = driver.read().inlet_c["zone-a1"]
        assert driver.write(21.0) == 21.0
        warm_kw, warm_c = cooling_and_setpoint(start + 60_000)
        assert (cold_c, warm_c) == (18.0, 21.0)
        assert warm_kw < cold_kw * 0.97  # 3 degC: about 9 % of chiller COP, the load barely moved in a minute
        later = start + 30 * 60_000
        poller.poll(later)
        assert driver.read().inlet_c["zone-a1"] > inlet_before + 2  # the zones follow the supply air
    finally:
        served.stop()
