"""The cooling lever on the real broker: twin telemetry → efficiency agent (advice, and a proposal with
OPSLOOP_COOLING_LOOP) → guard (approve mode) → an operator's signed approval → cooling sink → the setpoint
of a real BACnet/IP device (the twin's plant, bacpypes3 on 127.0.0.1), verified."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from actuation import Running, feedback, publish, watch  # the integration tier's helpers

from opsloop.config.policy import load_policy
from opsloop.config.site import load_site
from opsloop.connectors.bacnet import BacnetClient, SetpointDriver, free_udp_port
from opsloop.models.twin import SiteTwin
from opsloop.ops.twin import DEFAULT_DATA, read_curve
from opsloop.ops.twin_protocols import SETPOINT_OBJECT, BacnetPlant
from opsloop.schemas.codec import Codec
from opsloop.streams.cooling_sink import CoolingSink
from opsloop.streams.efficiency import EfficiencyProcessor
from opsloop.streams.guard import GuardProcessor

pytestmark = pytest.mark.integration
CODEC = Codec.default()


def test_a_proposal_from_twin_telemetry_is_approved_written_over_bacnet_and_verified(kafka_settings, read_topic):
    settings = replace(kafka_settings, cooling_loop=True)
    site, policy, curve = load_site(settings.topology), load_policy(settings.policy), read_curve(DEFAULT_DATA)
    twin = SiteTwin(site, curve)
    start = curve[0][0]
    points = [p for step in range(3) for p in twin.points(twin.measure(start + step * 300_000))]
    publish(settings, "telemetry.raw", "TelemetryPoint", points, key=lambda p: p["site"].encode())

    stats = EfficiencyProcessor(settings, site, policy.cooling).run(threading.Event(), exit_when_idle=True)
    assert stats["samples"] == 2 and stats["proposed"] == 1
    [advice] = [CODEC.decode_as("EfficiencyAdvice", m.value()) for m in read_topic(settings, "advice.efficiency")]
    assert advice["reason_code"] == "setpoint_low" and advice["cost_per_day"] > 0
    [proposed] = [CODEC.decode_as("Action", m.value()) for m in read_topic(settings, "actions.proposed")]
    assert (proposed["kind"], proposed["params"]["setpoint_c"]) == ("cooling_setpoint", "19.0")

    created_s = proposed["created_ms"] / 1000
    plant = BacnetPlant(free_udp_port(), sorted(twin.measure(start + 600_000).zone_c), 18.0).start()
    now = {"s": created_s + 60}
    sink = CoolingSink(settings, policy, site, clock=lambda: now["s"],
                       driver=SetpointDriver(BacnetClient(), plant.address, SETPOINT_OBJECT, plant.inlet_objects))
    seen = watch(sink)
    guard = GuardProcessor(settings, policy, site, clock=lambda: now["s"])
    try:
        plant.show(twin.measure(start + 600_000))
        with Running(guard, safety_net_s=120), Running(sink, safety_net_s=120):
            deadline = time.monotonic() + 60
            asked = []
            while not asked and time.monotonic() < deadline:
                asked = [v for m in read_topic(settings, "actions.approved")
                         if (v := CODEC.decode_as("ApprovedAction", m.value()))["verdict"] == "needs_approval"]
            assert asked and asked[0]["action"]["action_id"] == proposed["action_id"]
            publish(settings, "operator.feedback", "Feedback",
                    [feedback(proposed["action_id"], ts_ms=proposed["created_ms"] + 30_000)],
                    key=lambda r: r["target_id"].encode())
            while not seen and time.monotonic() < deadline:
                time.sleep(0.2)
            assert [r["status"] for r in seen] == ["executed"] and plant.setpoint_c() == 19.0
            now["s"] += 1000  # the raise settled: the twin's zones follow the new supply air
            twin.supply_setpoint_c = plant.setpoint_c()
            plant.show(twin.measure(start + 1_600_000))
            while len(seen) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
        assert [r["status"] for r in seen] == ["executed", "verified"]
        assert plant.setpoint_c() == 19.0
    finally:
        plant.stop()
