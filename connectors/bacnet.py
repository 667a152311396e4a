"""BACnet/IP over bacpypes3: read and command a cooling plant's setpoint, read its inlet temperatures.

bacpypes3 is asyncio; ``BacnetClient`` runs its own event loop in a daemon thread so the loop agents and
evaluations (synchronous) can call it. Each call is one confirmed request (ReadProperty, WriteProperty)
with a timeout; a device that does not answer raises ``BacnetError``.

``SetpointDriver`` is the cooling lever's device side: it writes the supply-air setpoint at one
command priority (8, manual operator, by default: above the BMS's own schedule at 16, below life
safety), reads the present value back and the inlet temperatures, and reverts by restoring its own
priority slot as it was before the change (relinquished, if it was empty), so whatever commanded the
object before, at any priority, commands it again. What counts as verified is decided by ``models.cooling.verify``, not here.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from typing import Mapping

PRESENT_VALUE = "present-value"


class BacnetError(RuntimeError):
    """A BACnet request failed: no answer in time, or an error, reject or abort from the device."""


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BacnetClient:
    """A BACnet/IP client device on ``host:port`` (a free UDP port by default)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, device_instance: int = 4_194_000,
                 timeout_s: float = 3.0):
        self.address = f"{host}:{port or free_udp_port(host)}"
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bacnet-client", daemon=True)
        self._thread.start()
        self._app = self._call(self._start(device_instance))

    async def _start(self, instance: int):
        from bacpypes3.app import Application
        from bacpypes3.local.device import DeviceObject
        from bacpypes3.local.networkport import NetworkPortObject

        device = DeviceObject(objectIdentifier=("device", instance), objectName=f"opsloop-{instance}",
                              vendorIdentifier=999)
        port = NetworkPortObject(self.address, objectIdentifier=("network-port", 1), objectName="NetworkPort-1",
                                 networkNumberQuality="unknown")
        return Application.from_object_list([device, port])

    def _call(self, coro, timeout_s: float | None = None):
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=timeout_s or self.timeout_s + 1)
        except TimeoutError:
            future.cancel()
            raise BacnetError("no answer in time") from None

    async def _read(self, device: str, obj: str, prop: str):
        from bacpypes3.pdu import Address

        return await asyncio.wait_for(self._app.read_property(Address(device), obj, prop), self.timeout_s)

    async def _write(self, device: str, obj: str, prop: str, value, priority: int | None):
        from bacpypes3.pdu import Address

        return await asyncio.wait_for(self._app.write_property(Address(device), obj, prop, value, priority=priority),
                                      self.timeout_s)

    def read_real(self, device: str, obj: str, prop: str = PRESENT_VALUE) -> float:
        """``prop`` of ``obj`` (``analog-value,1``) on the device at ``device`` (``host:port``), as a float."""
        try:
            value = self._call(self._read(device, obj, prop))
        except (asyncio.TimeoutError, TimeoutError):
            raise BacnetError(f"{device} {obj}: no answer in {self.timeout_s:g} s") from None
        try:
            return float(value)
        except (TypeError, ValueError):
            raise BacnetError(f"{device} {obj} {prop}: {value!r} is not a number") from None

    def read_slot(self, device: str, obj: str, priority: int) -> float | None:
        """What ``obj``'s priority array holds at ``priority``: a number, or None where the slot is relinquished."""
        try:
            value = self._call(self._read_index(device, obj, "priority-array", priority))
        except (asyncio.TimeoutError, TimeoutError):
            raise BacnetError(f"{device} {obj}: no answer in {self.timeout_s:g} s") from None
        real = getattr(value, "real", None)
        return None if real is None else float(real)

    async def _read_index(self, device: str, obj: str, prop: str, index: int):
        from bacpypes3.pdu import Address

        return await asyncio.wait_for(self._app.read_property(Address(device), obj, prop, index), self.timeout_s)

    def write_real(self, device: str, obj: str, value: float | None, priority: int | None = None,
                   prop: str = PRESENT_VALUE) -> None:
        """Command ``value`` at ``priority``; ``None`` relinquishes that priority (the next one, or the
        relinquish default, takes over)."""
        from bacpypes3.primitivedata import Null, Real

        try:
            answer = self._call(self._write(device, obj, prop, Null(()) if value is None else Real(value), priority))
        except (asyncio.TimeoutError, TimeoutError):
            raise BacnetError(f"{device} {obj}: no answer in {self.timeout_s:g} s") from None
        if answer is not None:  # an error, reject or abort PDU
            raise BacnetError(f"{device} {obj}: the device refused the write ({answer})")

    def close(self) -> None:
        if self._app is not None:
            self._loop.call_soon_threadsafe(self._app.close)
            self._app = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


@dataclass
class PlantReading:
    setpoint_c: float
    inlet_c: dict[str, float]


class SetpointDriver:
    """One plant's supply-air setpoint object and its inlet temperature objects, on one BACnet device."""

    def __init__(self, client: BacnetClient, device: str, setpoint_object: str, inlet_objects: Mapping[str, str],
                 priority: int = 8):
        self.client, self.device, self.setpoint_object = client, device, setpoint_object
        self.inlet_objects, self.priority = dict(inlet_objects), priority

    def read(self) -> PlantReading:
        """The setpoint's present value and every inlet, read now."""
        setpoint = self.client.read_real(self.device, self.setpoint_object)
        return PlantReading(setpoint, {name: self.client.read_real(self.device, obj)
                                       for name, obj in self.inlet_objects.items()})

    def write(self, setpoint_c: float) -> float:
        """Command ``setpoint_c`` and return the present value read back right after."""
        self.client.write_real(self.device, self.setpoint_object, setpoint_c, self.priority)
        return self.client.read_real(self.device, self.setpoint_object)

    def slot(self) -> float | None:
        """Our priority slot now (None: relinquished): what a revert restores."""
        return self.client.read_slot(self.device, self.setpoint_object, self.priority)

    def restore(self, slot: float | None) -> float:
        """Put our priority slot back as ``slot`` was (None relinquishes it); the present value after."""
        self.client.write_real(self.device, self.setpoint_object, slot, self.priority)
        return self.client.read_real(self.device, self.setpoint_object)
