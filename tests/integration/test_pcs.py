"""The PCS simulator over real Modbus TCP, the PCS client, and the PCS sink on the real broker."""

from __future__ import annotations

import pytest

from actuation import Running, action, approved, free_port, publish, results
from opsloop.connectors.kafka import producer, wait_delivered
from opsloop.connectors.pcs import PcsClient, PcsError
from opsloop.streams.pcs_sink import PcsSink
from opsloop.models import sunspec
from opsloop.ops.pcs_sim import from_site
from opsloop.config.policy import load_policy
from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def sim():
    clock = Clock()
    with from_site(load_site(DEMO_SITE), free_port(), clock=clock, soc_pct=80.0) as simulator:
        simulator.test_clock = clock
        yield simulator


def test_setpoint_is_written_read_back_integrated_and_reverts_by_itself(sim):
    client = PcsClient("127.0.0.1", sim.port)
    try:
        reading = client.write_setpoint(2500.0, revert_s=600)
        assert client.matches(reading, 2500.0) and reading.revert_s == 600
        assert reading.values["StorCtl_Mod"] == sunspec.DISCHARGE and reading.values["OutWRte"] == 5000
        sim.test_clock.t += 360  # 6 min at 2.5 MW = 250 kWh of 9.7 MWh usable, one-way losses sqrt(0.9)
        expected_soc = 80 - 250 / 0.9 ** 0.5 / (10_000 * 0.97) * 100
        reading = client.read()
        assert reading.soc_pct == pytest.approx(expected_soc, abs=0.1)
        assert reading.charge_state == sunspec.CHA_ST["discharging"]
        sim.test_clock.t += 600  # past the revert timeout: idle, by itself
        reading = client.read()
        assert reading.setpoint_kw == 0 and sim.battery.power_kw == 0 and sim.battery.reverted
        assert sim.battery.soc_pct == pytest.approx(80 - 2500 * 600 / 3600 / 0.9 ** 0.5 / 9700 * 100, abs=1e-6)
    finally:
        client.close()


def test_status_registers_refuse_writes_and_setpoints_beyond_the_rating_are_refused(sim):
    client = PcsClient("127.0.0.1", sim.port)
    try:
        assert client.client.write_register(sunspec.address("ChaState"), 1000, device_id=1).isError()
        with pytest.raises(PcsError, match="outside the PCS rating"):
            client.write_setpoint(9000.0, 60)
        assert sim.register_log == []
    finally:
        client.close()


def test_sink_executes_each_approved_action_once_and_publishes_results(kafka_settings, read_topic):
    site = load_site(kafka_settings.topology)
    with from_site(site, free_port(), soc_pct=80.0) as sim:
        settings = kafka_settings.replace(pcs_modbus=f"127.0.0.1:{sim.port}")
        discharge = action("pcs-1", "pcs_discharge", setpoint_kw=1500.0)
        too_big = action("pcs-2", "pcs_discharge", setpoint_kw=4500.0)  # beyond the policy: the sink refuses too
        unapproved = action("pcs-3", "pcs_discharge", setpoint_kw=1000.0)
        prod = producer(settings)  # first, on the partition of the rest: handled before the results below
        prod.produce(settings.topic("actions.approved"), key=b"k", value=b"\xc3\x01 not an action")
        wait_delivered(prod)
        del prod
        publish(settings, "actions.approved", "ApprovedAction",
                [approved(discharge), approved(discharge), approved(too_big), approved(unapproved, "needs_approval")])
        sink = PcsSink(settings, load_policy(settings.policy), site)
        seen = []
        sink.on_result = lambda r: (seen.append(r), len(seen) >= 2 and runner.stop.set())
        with Running(sink) as runner:
            runner.thread.join(90)
        writes = [values for _, _, values in sim.register_log]
        assert writes == [[3000, 0, 0, writes[0][3]], [sunspec.DISCHARGE]]  # one execution: two register writes
        assert 590 <= writes[0][3] <= 600  # revert timeout = time left until the action expires
        by_id = {r["action_id"]: r for r in results(settings, read_topic)}
        assert by_id["pcs-1"]["status"] == "executed" and "1500 kW" in by_id["pcs-1"]["observed_effect"]
        assert by_id["pcs-2"]["status"] == "failed" and "policy limit" in by_id["pcs-2"]["detail"]
        assert "pcs-3" not in by_id
        assert sink.stats["skipped_duplicates"] == 1 and sink.stats["ignored"] == 1
        [dead] = [Codec.default().decode_as("DeadLetter", m.value()) for m in read_topic(settings, "deadletter")]
        assert dead["value"] == b"\xc3\x01 not an action" and (dead["error_kind"], dead["agent"]) == ("decode", "pcs-sink")


def test_grid_limit_mode_follows_the_site_meter_within_its_cap_and_reverts(sim):
    client = PcsClient("127.0.0.1", sim.port)
    try:
        sim.measure_site(10_000.0)
        reading = client.write_grid_limit(9_000.0, max_discharge_kw=1_500.0, charge_kw=0.0,
                                          charge_ceiling_kw=8_500.0, revert_s=900)
        assert client.holds_grid_limit(reading, 9_000.0, 1_500.0, 0.0, 8_500.0) and not client.matches(reading, 0.0)
        assert "grid limit 9000 kW" in reading.describe()
        assert client.power_kw() == pytest.approx(1_000.0)  # just enough to hold 9 MW of import
        sim.test_clock.t += 60
        sim.measure_site(11_000.0)  # the load rises past the cap: the PCS gives its cap, no more
        assert client.power_kw() == pytest.approx(1_500.0)
        sim.test_clock.t += 60
        sim.measure_site(8_000.0)  # under the limit, no recharge allowed: idle
        assert client.power_kw() == 0.0
        sim.test_clock.t += 900  # past the revert timeout: the mode ends with it
        reading = client.read()
        assert reading.grid_limit is None and sim.battery.grid_limit is None and sim.battery.reverted
        # a plain setpoint after a grid limit switches the limit off (last, so no state in between gives more)
        client.write_grid_limit(9_000.0, 1_500.0, 0.0, 8_500.0, revert_s=900)
        reading = client.write_setpoint(500.0, revert_s=600)
        assert client.matches(reading, 500.0) and sim.battery.grid_limit is None and client.power_kw() == 500.0
    finally:
        client.close()


def test_grid_limit_mode_recharges_under_its_ceiling_and_keeps_the_reserve(sim):
    client = PcsClient("127.0.0.1", sim.port)
    try:
        sim.measure_site(8_000.0)
        client.write_grid_limit(9_000.0, max_discharge_kw=0.0, charge_kw=2_000.0, charge_ceiling_kw=8_500.0,
                                revert_s=900)
        assert client.power_kw() == pytest.approx(-500.0)  # charges only up to the ceiling
        sim.battery.soc_pct = sim.battery.battery.reserve_soc_pct  # at the reserve, a discharge is refused
        client.write_grid_limit(7_000.0, max_discharge_kw=2_000.0, charge_kw=0.0, charge_ceiling_kw=7_000.0,
                                revert_s=900)
        assert client.power_kw() == 0.0
    finally:
        client.close()


def test_sink_writes_a_grid_limit_action_as_the_pcs_grid_limit_mode(kafka_settings, read_topic):
    site = load_site(kafka_settings.topology)
    with from_site(site, free_port(), soc_pct=80.0) as sim:
        sim.measure_site(10_000.0)
        settings = kafka_settings.replace(pcs_modbus=f"127.0.0.1:{sim.port}")
        hold = action("pcs-limit", "pcs_discharge", setpoint_kw=2000.0, control="grid_limit", grid_limit_kw=9200.0,
                      charge_kw=0.0, charge_ceiling_kw=8800.0, expected_kw=800.0)
        publish(settings, "actions.approved", "ApprovedAction", [approved(hold)])
        sink = PcsSink(settings, load_policy(settings.policy), site)
        sink.on_result = lambda r: runner.stop.set()
        with Running(sink) as runner:
            runner.thread.join(90)
        assert sim.battery.grid_limit is not None and sim.battery.power_kw == pytest.approx(800.0)
        [result] = results(settings, read_topic)
        assert result["status"] == "executed" and "grid limit 9200 kW" in result["observed_effect"]
