"""The cooling sink: approved ``cooling_setpoint`` actions → the plant's supply-air setpoint over BACnet/IP.

The actuator sinks' ledger and checks (streams/actuator.py): claimed before the device is touched, at
most once across crashes, only verdicts the guard signed. Executing reads the sink's own priority slot (what a
revert restores, planned in the ledger before the write: relinquished if it was empty), commands the new setpoint at
``OPSLOOP_BACNET_PRIORITY`` and reads it back: a value that does not read back (a higher priority
holds the object) is reverted at once and the action fails.

Then, every ``check_s`` until it is judged, ``models.cooling.verify`` on what the device reads now
(present value and inlets): ``verified`` once it held, or ``reverted`` (the slot restored,
a major ``COOLING_SETPOINT_REVERTED`` alarm) on a failed check or when ``revert_timeout_s`` passes
with no verdict, whether or not the device answered meanwhile. A verified setpoint stays: it is the
plant's new normal, not a temporary action, and only a later action moves it.
"""

from __future__ import annotations

import logging

from opsloop.config.site import Site
from opsloop.connectors.bacnet import BacnetClient, BacnetError, SetpointDriver
from opsloop.connectors.ledger import EXECUTED, FAILED
from opsloop.models import cooling
from opsloop.models.records import action_alarm, action_result
from opsloop.streams.actuator import ActuatorSink

log = logging.getLogger("opsloop.cooling")


def inlet_objects(spec: str, site: Site) -> dict[str, str]:
    """``zone=object,...`` or, empty, ``analog-input,1..`` in the site file's zone order (the twin's layout).

    >>> inlet_objects("zone-a1=analog-input,7;zone-b1=analog-input,9", None)
    {'zone-a1': 'analog-input,7', 'zone-b1': 'analog-input,9'}
    """
    if spec.strip():
        return dict(item.split("=", 1) for item in spec.split(";") if "=" in item)
    zones = [e["id"] for e in (site.topology or {}).get("cooling", ()) if e.get("type") == "zone"]
    return {z: f"analog-input,{i + 1}" for i, z in enumerate(zones)}


def _slot(value: float | None) -> str:
    return "the priority slot (relinquished)" if value is None else f"the priority slot ({value:g} degC)"


class CoolingSink(ActuatorSink):
    name = "cooling-sink"
    kinds = (cooling.KIND,)
    device_type = "crah"
    check_s = 10.0  # site-clock seconds between verification reads

    def __init__(self, settings, policy, site: Site, driver: SetpointDriver | None = None, clock=None):
        super().__init__(settings, policy, **({"clock": clock} if clock else {}))
        self.site = site
        self._driver = driver  # built on first use: a worker running every agent opens no socket for nothing
        self._last_check_ms = 0

    @property
    def driver(self) -> SetpointDriver:
        if self._driver is None:
            s = self.settings
            self._driver = SetpointDriver(BacnetClient(), s.bacnet_device, s.bacnet_setpoint_object,
                                          inlet_objects(s.bacnet_inlet_objects, self.site), s.bacnet_priority)
        return self._driver

    def execute(self, action: dict):
        limits = self.policy.cooling
        if limits is None:
            raise BacnetError("the policy has no cooling section: setpoint actions are off")
        requested = float(action["params"]["setpoint_c"])
        previous, slot = self.driver.read().setpoint_c, self.driver.slot()
        self.ledger.plan(action["action_id"], [slot])
        read_back = self.driver.write(requested)
        if abs(read_back - requested) > cooling.READBACK_TOLERANCE_C:
            self.driver.restore(slot)
            self.stats["reverted"] += 1
            return FAILED, action_result(action, "failed", f"setpoint reads {read_back:g} degC, not {requested:g}",
                                         f"{cooling.READBACK_MISMATCH}: a higher priority holds it; restored "
                                         f"{_slot(slot)}", self.name, self.now_ms()), None
        return EXECUTED, action_result(action, "executed", f"setpoint {previous:g} -> {requested:g} degC, read back",
                                       f"BACnet priority {self.driver.priority}; verified or reverted within "
                                       f"{limits.revert_timeout_s:g} s", self.name, self.now_ms()), [slot]

    def reconcile(self, action: dict):
        """Started, result unknown: write back the value read before (a change nobody verifies is not kept)."""
        entry = self.ledger.get(action["action_id"])
        if entry.undo:
            self.driver.restore(entry.undo[0])
        return FAILED, action_result(action, "failed", f"restored {_slot(entry.undo[0])}" if entry.undo else
                                     "nothing changed", "interrupted; not repeated (at most once)", self.name,
                                     self.now_ms()), None

    def housekeeping(self) -> bool:
        now = self.now_ms()
        if now - self._last_check_ms < self.check_s * 1000:
            return False
        self._last_check_ms = now
        sent = False
        for entry in self.ledger.awaiting_verification():
            if entry.action["kind"] == cooling.KIND:
                sent |= self._judge(entry, now)
        return sent

    def _judge(self, entry, now: int) -> bool:
        action, limits = entry.action, self.policy.cooling
        requested = float(action["params"]["setpoint_c"])
        raised = requested > float(action["params"].get("from_c", requested))
        try:
            reading = self.driver.read()
            verdict = cooling.verify(requested, reading.setpoint_c, reading.inlet_c, limits, entry.result["ts_ms"],
                                     now, raised)
        except BacnetError as exc:
            if now - entry.result["ts_ms"] < limits.revert_timeout_s * 1000:
                log.warning("%s: cannot read the plant yet: %s", self.name, exc)
                return False
            verdict = cooling.Verdict(cooling.REVERT, cooling.NO_VERDICT, f"the plant did not answer: {exc}")
        if verdict.status == cooling.PENDING:
            return False
        if verdict.status == cooling.VERIFIED:
            self.ledger.mark_verified(entry.action_id, True)
            self.stats["verified"] += 1
            self.publish(action_result(action, "verified", verdict.text, entry.result["observed_effect"], self.name,
                                       now))
            return True
        try:
            self.driver.restore(entry.undo[0])
        except BacnetError as exc:
            log.warning("%s: cannot revert %s yet: %s", self.name, entry.action_id[:120], exc)
            return False
        self.ledger.mark_verified(entry.action_id, False)
        self.ledger.mark_undone(entry.action_id)
        self.stats["reverted"] += 1
        self.publish(action_result(action, "reverted", f"restored {_slot(entry.undo[0])}",
                                   f"{verdict.reason_code}: {verdict.text}", self.name, now))
        self.raise_alarm(action_alarm(action, self.device_type, f"opsloop.{self.name}", "COOLING_SETPOINT_REVERTED",
                                      f"{action['kind']} {action['action_id'][:120]} reverted: {verdict.text}", now))
        return True

    def settled(self) -> bool:
        return not any(e.action["kind"] == cooling.KIND for e in self.ledger.awaiting_verification())

    def close(self) -> None:
        super().close()
        if self._driver is not None:
            self._driver.client.close()
