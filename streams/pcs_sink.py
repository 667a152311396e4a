"""The PCS sink: approved ``pcs_*`` actions → SunSpec setpoints over Modbus TCP, read back, ``ActionResult``.

Each setpoint carries a revert timeout equal to the time left until the
action's expiry, so the PCS returns to idle by itself when the action ends or
opsloop goes silent; undoing a PCS action needs nothing more. The sink checks
the target and the policy's power limit once more before writing (the guard
decided, but the device end trusts nothing it can check cheaply). A grid-limit
action (``params.control`` = ``grid_limit``, see ``models.peak_loop``) is written as
the PCS's grid-limit mode (``PcsClient.write_grid_limit``): the limit, the charge
ceiling, and ``setpoint_kw`` as the cap of its direction.
"""

from __future__ import annotations

import math

from opsloop.config.site import Site
from opsloop.models.records import action_result
from opsloop.streams.actuator import ActuatorSink
from opsloop.connectors.ledger import EXECUTED, FAILED
from opsloop.connectors.pcs import PcsClient, parse_endpoint

MAX_REVERT_S = 65535  # a uint16 register


class PcsSink(ActuatorSink):
    name = "pcs-sink"
    kinds = ("pcs_discharge", "pcs_charge", "pcs_idle")
    device_type = "pcs"

    def __init__(self, settings, policy, site: Site, clock=None, targets: tuple[str, ...] | None = None):
        super().__init__(settings, policy, **({"clock": clock} if clock else {}))
        host, port = parse_endpoint(settings.pcs_modbus)
        self.client = PcsClient(host, port)
        self.targets = targets if targets is not None else tuple(ess.id for ess in site.ess)

    def _setpoint(self, action: dict) -> float:
        return 0.0 if action["kind"] == "pcs_idle" else float(action["setpoint_kw"])

    @staticmethod
    def _grid_limit(action: dict) -> tuple[float, float, float, float] | None:
        """(limit, discharge cap, charge cap, charge ceiling) in kW for a grid-limit action, else None."""
        params = action.get("params") or {}
        if params.get("control") != "grid_limit" or action["kind"] == "pcs_idle":
            return None
        setpoint = float(action["setpoint_kw"])
        return (float(params["grid_limit_kw"]), max(0.0, setpoint), max(0.0, -setpoint),
                float(params.get("charge_ceiling_kw", params["grid_limit_kw"])))

    def _holds(self, reading, action: dict) -> bool:
        limit = self._grid_limit(action)
        return self.client.matches(reading, self._setpoint(action)) if limit is None else \
            self.client.holds_grid_limit(reading, limit[0], limit[1], limit[2], limit[3])

    def execute(self, action: dict):
        if action["target"] not in self.targets:
            raise ValueError(f"unknown PCS target {action['target']!r}; this sink drives {', '.join(self.targets)}")
        setpoint = self._setpoint(action)
        if abs(setpoint) > self.policy.pcs.max_kw:
            raise ValueError(f"setpoint {setpoint:g} kW exceeds the policy limit of {self.policy.pcs.max_kw:g} kW")
        revert_s = min(MAX_REVERT_S, max(1, math.ceil((action["expires_ms"] - self.now_ms()) / 1000)))
        limit = self._grid_limit(action)
        if limit is None:
            reading = self.client.write_setpoint(setpoint, revert_s)
        else:
            reading = self.client.write_grid_limit(limit[0], limit[1], limit[2], limit[3], revert_s)
        if not self._holds(reading, action):
            return FAILED, action_result(action, "failed", f"PCS reads back {reading.describe()}",
                                         f"asked for {setpoint:g} kW{' as a grid-limit cap' if limit else ''}; "
                                         "read-back differs", self.name,
                                         self.now_ms()), None
        return EXECUTED, action_result(action, "executed", f"PCS holds {reading.describe()}",
                                       f"wrote SunSpec model 124{' and the grid limit' if limit else ''} on "
                                       f"{self.client.endpoint}", self.name,
                                       self.now_ms()), None

    def reconcile(self, action: dict):
        self.client.connect()
        reading = self.client.read()
        if self._holds(reading, action):
            return EXECUTED, action_result(action, "executed", f"PCS holds {reading.describe()}",
                                           "confirmed by read-back after a restart (not written again)", self.name,
                                           self.now_ms()), None
        return FAILED, action_result(action, "failed", f"PCS reads back {reading.describe()}",
                                     "interrupted before confirmation; not repeated (at most once)", self.name,
                                     self.now_ms()), None

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.client.close()
