"""The site twin's meters and PDUs as real sites expose them, besides its Prometheus page.

- ``MeterServer``: a SunSpec meter device over Modbus TCP (read-only): the ``SunS`` marker, the common
  model (1) and two wye meters (203), the grid meter then the facility meter, refreshed from every
  twin sample. The ``sunspec`` source kind and the SunSpec Alliance's client discover and read it as
  they read a site's meter; the grid meter shows facility minus the ESS power the twin read from the
  PCS, so a discharge lowers it.
- ``PduFiles``: each PDU's values as SNMP objects (models/pdu_mib.py), one JSON file per PDU
  (``<dir>/<pdu id>.json``, replaced whole, never half written), which an snmpd ``pass_persist``
  script serves; the ``snmp`` source kind then polls the agent as it polls a site's PDU.
- ``BacnetPlant``: the cooling plant as a BACnet/IP device (bacpypes3): the supply-air setpoint as a
  commandable analog value (``analog-value,1``, priority array, relinquish default = the twin's
  setpoint) and each zone's inlet temperature as an analog input (``analog-input,<n>``, named for the
  zone), refreshed from every twin sample; the twin reads the setpoint back each poll, so a write by
  the cooling lever moves the chillers' power and the inlets.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from opsloop.config.site import Site
from opsloop.models import sunspec
from opsloop.models.pdu_mib import pdu_objects
from opsloop.models.twin import SiteState

log = logging.getLogger("opsloop.twin")
GRID, FACILITY = 0, 1  # meter order in the image: the first 203 is the grid connection


class MeterServer:
    """The twin's grid and facility meters as a SunSpec Modbus TCP device on ``host:port`` (unit any)."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.host, self.port = host, port
        self.image = sunspec.meter_image(2)
        self._lock = threading.Lock()
        self._modbus = None  # ops.loop_thread.ModbusThread while serving

    def show(self, state: SiteState) -> None:
        """The meters read ``state`` from now on (both models change together: no read sees half of it)."""
        with self._lock:
            sunspec.put(self.image, sunspec.meter_at(GRID), sunspec.METER_ID, sunspec.meter_values(state.grid_kw))
            sunspec.put(self.image, sunspec.meter_at(FACILITY), sunspec.METER_ID,
                        sunspec.meter_values(state.facility_kw))

    async def _on_access(self, func_code, start_address, address, count, registers, set_values):
        with self._lock:  # copy the image in under the lock, so a read never straddles an update
            registers[:len(self.image)] = self.image
        return None

    def start(self) -> "MeterServer":
        from pymodbus.simulator import DataType, SimData, SimDevice

        from opsloop.ops.loop_thread import ModbusThread

        def device():
            block = SimData(sunspec.BASE, values=list(self.image), datatype=DataType.REGISTERS, readonly=True)
            return SimDevice(id=0, simdata=[block], action=self._on_access)

        self._modbus = ModbusThread(device, self.host, self.port, "twin meter", f"twin-meter-{self.port}").start()
        log.info("twin: SunSpec meters on %s:%s", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._modbus is not None:
            self._modbus.stop()


class PduFiles:
    """Every PDU's SNMP objects in ``directory/<pdu id>.json``; its outlets and inlet sensors are its racks."""

    def __init__(self, site: Site, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        racks = (site.topology or {}).get("racks", ())
        self.racks = {p.id: [r["id"] for r in racks if r.get("pdu") == p.id] for p in site.pdus}
        self.zone_of = {r["id"]: r.get("zone") for r in racks}

    def path(self, pdu: str) -> Path:
        return self.directory / f"{pdu}.json"

    def show(self, state: SiteState) -> None:
        for pdu, kw in state.pdu_kw.items():
            racks = self.racks.get(pdu, [])
            inlets = [state.zone_c[self.zone_of[r]] for r in racks if self.zone_of.get(r) in state.zone_c]
            objects = pdu_objects(kw, [state.rack_kw.get(r, 0.0) for r in racks], inlets)
            tmp = self.path(pdu).with_suffix(".tmp")
            tmp.write_text(json.dumps(objects))
            tmp.replace(self.path(pdu))  # the agent's script sees the old file or the new one


SETPOINT_OBJECT = "analog-value,1"


class BacnetPlant:
    """The twin's cooling plant as a BACnet/IP device on ``host:port`` (UDP), instance ``device_instance``."""

    def __init__(self, port: int, zones: list[str], setpoint_c: float, host: str = "127.0.0.1",
                 device_instance: int = 1001):
        self.host, self.port, self.device_instance = host, port, device_instance
        self.zones, self.initial_c = list(zones), setpoint_c
        self.inlet_objects = {z: f"analog-input,{i + 1}" for i, z in enumerate(self.zones)}
        self._server = None  # ops.loop_thread.LoopThread while serving
        self._app = self._setpoint = None
        self._inputs: dict = {}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _build(self):
        from bacpypes3.app import Application
        from bacpypes3.local.analog import AnalogInputObject, AnalogValueObjectCmd
        from bacpypes3.local.device import DeviceObject
        from bacpypes3.local.networkport import NetworkPortObject

        device = DeviceObject(objectIdentifier=("device", self.device_instance), objectName="twin-cooling-plant",
                              vendorIdentifier=999)
        port = NetworkPortObject(self.address, objectIdentifier=("network-port", 1), objectName="NetworkPort-1",
                                 networkNumberQuality="unknown")
        self._setpoint = AnalogValueObjectCmd(
            objectIdentifier=("analog-value", 1), objectName="supply-air-setpoint", presentValue=self.initial_c,
            relinquishDefault=self.initial_c, units="degreesCelsius", statusFlags=[0, 0, 0, 0], covIncrement=0.1)
        self._inputs = {z: AnalogInputObject(objectIdentifier=("analog-input", i + 1), objectName=f"{z}-inlet-temp",
                                             presentValue=0.0, units="degreesCelsius", statusFlags=[0, 0, 0, 0],
                                             covIncrement=0.1)
                        for i, z in enumerate(self.zones)}
        return Application.from_object_list([device, port, self._setpoint, *self._inputs.values()])

    def start(self) -> "BacnetPlant":
        from opsloop.ops.loop_thread import LoopThread

        async def listen() -> None:  # bacpypes3 binds its UDP endpoint inside a running loop
            self._app = self._build()

        async def close() -> None:
            self._app.close()

        self._server = LoopThread(listen, f"BACnet plant on {self.address}", "twin-bacnet", close=close).start(10)
        log.info("twin: BACnet cooling plant on %s (device %d)", self.address, self.device_instance)
        return self

    def setpoint_c(self) -> float:
        """The setpoint's present value: what the priority array commands now."""
        return float(self._setpoint.presentValue)

    def show(self, state: SiteState) -> None:
        """The inlet objects read ``state``'s zones from now on (set on the plant's own loop)."""
        def update() -> None:
            for zone, obj in self._inputs.items():
                if zone in state.zone_c:
                    obj.presentValue = float(state.zone_c[zone])
        if self._server is not None:
            self._server.call_soon(update)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(5)
            self._server = None
