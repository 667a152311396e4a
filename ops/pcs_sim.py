"""A PCS simulator: a real Modbus TCP server with SunSpec storage registers over a battery model.

The register image is ``models.sunspec`` (common model, inverter model 103 for
the measured AC power, storage controls model 124, battery model 802 for the
BMS's SoC, SoH, DC power and alarm bits, and two meter models 203: the grid meter
reads ``facility_kw`` minus the battery's discharge, the facility meter reads
``facility_kw``). ``bms_events`` and ``meter_events`` (grid, facility) hold the
alarm bits the models serve, for tests to set. Status registers are
read-only on the wire (a write to them gets ILLEGAL_ADDRESS, like a real PCS).
Every accepted write to the control registers is kept in ``register_log``
(time, first address, values) and applied to ``models.battery.PcsBattery``, which
honours the revert timeout; before every read the battery is advanced to the
injected ``clock`` and the status registers are refreshed, so tests drive time
by hand and never wait on the wall clock.

Grid-limit mode (``models.sunspec``'s vendor block): the simulator plays the site's EMS
controller, so it needs the site load behind the grid meter. ``site_meter`` is a callable
returning it in kW (``prometheus_meter`` reads it from a Prometheus page, e.g. the site twin's
``opsloop_twin_facility_kw``, as the twin reads the ESS power from these registers); a thread
reads it every ``meter_s`` wall seconds and the battery follows it. Without one the load is
``facility_kw``, set by hand.

With ``settings``, ``publish_telemetry()`` (called by a thread every
``telemetry_s``, or by hand) sends the battery's ``ess_soc_pct``,
``ess_soh_pct`` and ``ess_kw`` to ``telemetry.raw``.

``opsloop pcs-sim`` runs it in the foreground; ``opsloop up`` starts one in the background.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from opsloop.models import sunspec
from opsloop.config.settings import Settings
from opsloop.config.site import Site
from opsloop.models.battery import Battery, Command, PcsBattery

log = logging.getLogger("opsloop.pcs_sim")
WRITE_CODES = (6, 16, 23)


class PcsSimulator:
    def __init__(self, battery: PcsBattery, port: int, host: str = "127.0.0.1", *, device: str = "ess-1",
                 site: str = "demo", wchamax_kw: float | None = None, reserve_pct: float | None = None,
                 clock: Callable[[], float] = time.time, settings: Settings | None = None,
                 telemetry_s: float | None = None, site_meter: Callable[[], float | None] | None = None,
                 meter_s: float = 0.05):
        self.battery = battery
        self.host, self.port = host, port
        self.device, self.site = device, site
        self.wchamax_kw = wchamax_kw or battery.battery.pcs_discharge_kw
        self.clock = clock
        self.settings = settings
        self.telemetry_s = telemetry_s
        self.site_meter, self.meter_s = site_meter, meter_s
        self.meter_errors = 0
        reserve_pct = battery.battery.reserve_soc_pct if reserve_pct is None else reserve_pct
        self.registers = sunspec.initial_registers(self.wchamax_kw, reserve_pct)
        self.register_log: list[tuple[float, int, list[int]]] = []
        self.facility_kw = 0.0  # the site's load behind the grid meter
        self.bms_events = 0  # model 802 Evt1 bits
        self.meter_events = {"grid": 0, "facility": 0}  # model 203 Evt bits
        # Raw point values forced after every refresh, (model id register, model id, {point: raw}): a meter
        # that does not implement a point (its sentinel), a broken scale factor.
        self.overrides: list[tuple[int, int, dict[str, int]]] = []
        self._lock = threading.Lock()
        self._modbus = None  # ops.loop_thread.ModbusThread while serving
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._producer = None
        self._refresh()

    # -- register image <-> battery ---------------------------------------------------

    def _refresh(self) -> None:
        """Write the battery's state into the status registers (the same list the server serves)."""
        b, regs = self.battery, self.registers
        soc = round(b.soc_pct / 10 ** sunspec.SOC_SF)
        regs[sunspec.address("ChaState") - sunspec.BASE] = soc
        power = b.power_kw
        state = ("discharging" if power > 0 else "charging" if power < 0 else
                 "empty" if b.soc_pct <= b.min_soc_pct else "full" if b.soc_pct >= 100 else "holding")
        regs[sunspec.address("ChaSt") - sunspec.BASE] = sunspec.CHA_ST[state]
        regs[sunspec.INVERTER_W - sunspec.BASE] = sunspec.to_u16(round(power * 1000 / 10 ** sunspec.W_SF))
        self._refresh_bms_and_meters()
        if b.reverted:  # the PCS went back to idle by itself: its control registers say so
            for point in ("StorCtl_Mod", "OutWRte", "InWRte"):
                regs[sunspec.address(point) - sunspec.BASE] = 0
            regs[sunspec.grid_limit_address("GLimEna") - sunspec.BASE] = 0

    def _refresh_bms_and_meters(self) -> None:
        b, regs, W = self.battery, self.registers, 1000.0
        w_sf = sunspec.scale_for(b.power_kw * W)
        sunspec.put(regs, sunspec.BATTERY_AT, sunspec.BATTERY_ID, {
            "SoC": round(b.soc_pct * 10), "SoC_SF": -1, "SoH": round(b.battery.soh_pct * 10), "SoH_SF": -1,
            "W": round(b.power_kw * W / 10 ** w_sf), "W_SF": w_sf, "Evt1": self.bms_events})
        for at, which, kw in ((sunspec.GRID_METER_AT, "grid", self.facility_kw - b.power_kw),
                              (sunspec.FACILITY_METER_AT, "facility", self.facility_kw)):
            sunspec.put(regs, at, sunspec.METER_ID, sunspec.meter_values(kw, self.meter_events[which]))
        for at, model, values in self.overrides:
            sunspec.put(regs, at, model, values)

    def _apply_controls(self) -> None:
        values = sunspec.storage_values(self.registers)
        at = sunspec.grid_limit_address("GLimEna") - sunspec.BASE
        limit = sunspec.grid_limit_from(self.registers[at:at + sunspec.GRID_LIMIT_LEN])
        if limit is None:
            self.battery.command(sunspec.setpoint_from(values, self.wchamax_kw), values["InOutWRte_RvrtTms"],
                                 self.clock())
            return
        # Grid-limit mode: the rates are caps, each direction allowed by its StorCtl_Mod bit.
        scale, mode = self.wchamax_kw / 100 * 10 ** sunspec.RATE_SF, values["StorCtl_Mod"]
        cap_out = values["OutWRte"] * scale if mode & sunspec.DISCHARGE else 0.0
        cap_in = values["InWRte"] * scale if mode & sunspec.CHARGE else 0.0
        self.battery.follow(Command(limit_kw=limit[0], max_discharge_kw=cap_out, charge_kw=cap_in,
                                    charge_ceiling_kw=limit[1]), values["InOutWRte_RvrtTms"], self.clock())

    def measure_site(self, kw: float) -> None:
        """The site meter reads ``kw`` now: the meters show it and a grid-limit mode follows it."""
        with self._lock:
            self.facility_kw = float(kw)
            self.battery.measure(kw, self.clock())
            self._refresh()

    def _meter_loop(self) -> None:
        while not self._stop.wait(self.meter_s):
            try:
                kw = self.site_meter()
            except Exception as exc:  # noqa: BLE001 (a meter that does not answer: keep the last reading)
                self.meter_errors += 1
                if self.meter_errors == 1:
                    log.warning("PCS simulator: site meter not answering (%s); keeping %.0f kW", exc, self.facility_kw)
                continue
            if kw is not None:
                self.measure_site(kw)

    def tick(self) -> None:
        """Advance the battery to the clock's time and refresh the status registers."""
        with self._lock:
            self.battery.advance(self.clock())
            self._refresh()

    async def _on_access(self, func_code, start_address, address, count, registers, set_values):
        with self._lock:
            if set_values is None:
                self.battery.advance(self.clock())
                self._refresh()
                return None
            if func_code in WRITE_CODES:
                self.register_log.append((self.clock(), address, list(set_values)))
                offset = address - start_address
                registers[offset:offset + len(set_values)] = set_values  # apply now, so the model sees it
                self._apply_controls()
                self._refresh()
        return None

    # -- Modbus server ------------------------------------------------------------------

    def _simdata(self) -> list:
        from pymodbus.simulator import DataType, SimData

        writable = {sunspec.address(p) for p in sunspec.CONTROL_POINTS} | {
            sunspec.grid_limit_address(p) for p in sunspec.GRID_LIMIT_POINTS}
        blocks, start = [], sunspec.BASE
        for addr in range(sunspec.BASE, sunspec.BASE + sunspec.REGISTER_COUNT + 1):
            boundary = addr == sunspec.BASE + sunspec.REGISTER_COUNT or (addr in writable) != (start in writable)
            if boundary and addr > start:
                blocks.append(SimData(start, values=self.registers[start - sunspec.BASE:addr - sunspec.BASE],
                                      datatype=DataType.REGISTERS, readonly=start not in writable))
                start = addr
        return blocks

    def start(self) -> "PcsSimulator":
        from pymodbus.simulator import SimDevice

        from opsloop.ops.loop_thread import ModbusThread

        self._modbus = ModbusThread(lambda: SimDevice(id=0, simdata=self._simdata(), action=self._on_access),
                                    self.host, self.port, "PCS simulator", f"pcs-sim-{self.port}",
                                    on_listening=self._bind_image).start()
        if self.site_meter is not None:
            meter = threading.Thread(target=self._meter_loop, name="pcs-sim-meter", daemon=True)
            meter.start()
            self._threads.append(meter)
        if self.settings is not None and self.telemetry_s:
            publisher = threading.Thread(target=self._publish_loop, name="pcs-sim-telemetry", daemon=True)
            publisher.start()
            self._threads.append(publisher)
        log.info("PCS simulator on %s:%s (SunSpec at %s)", self.host, self.port, sunspec.BASE)
        return self

    def _bind_image(self, server) -> None:
        """Serve ``self.registers`` itself: pymodbus copied the image into its runtime block on start."""
        start, _, registers, _ = server.context.devices[0].block["x"]
        if start != sunspec.BASE or len(registers) < sunspec.REGISTER_COUNT:
            raise RuntimeError(f"unexpected pymodbus register block at {start} of {len(registers)} registers")
        registers[:sunspec.REGISTER_COUNT] = self.registers
        self.registers = registers

    def stop(self) -> None:
        self._stop.set()
        if self._modbus is not None:
            self._modbus.stop()
        for thread in self._threads:
            thread.join(10)
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None

    def __enter__(self) -> "PcsSimulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- telemetry ------------------------------------------------------------------------

    def publish_telemetry(self) -> None:
        from opsloop.connectors.kafka import producer, send_record
        from opsloop.schemas.codec import Codec

        if self._producer is None:
            self._producer = producer(self.settings)
        self.tick()
        codec, ts_ms = Codec.default(), int(self.clock() * 1000)
        b = self.battery
        for metric, value, unit in (("ess_soc_pct", b.soc_pct, "%"), ("ess_soh_pct", b.battery.soh_pct, "%"),
                                    ("ess_kw", b.power_kw, "kW")):
            point = {"ts_ms": ts_ms, "site": self.site, "device": self.device, "device_type": "ess",
                     "metric": metric, "value": float(value), "unit": unit, "source": "pcs-sim"}
            send_record(self._producer, self.settings, "telemetry.raw", point, codec)
        self._producer.poll(0)

    def _publish_loop(self) -> None:
        while not self._stop.wait(self.telemetry_s):
            try:
                self.publish_telemetry()
            except Exception:  # keep serving Modbus; the next tick tries again
                log.exception("PCS simulator telemetry failed")


def prometheus_meter(url: str, metric: str = "opsloop_twin_facility_kw", timeout_s: float = 1.0
                     ) -> Callable[[], float | None]:
    """A site meter read from a Prometheus text page: the first sample of ``metric`` (None while absent)."""
    import urllib.request

    def read() -> float | None:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(metric) and line[len(metric):len(metric) + 1] in ("{", " "):
                    return float(line.rsplit(" ", 1)[1])
        return None

    return read


def from_site(site: Site, port: int, settings: Settings | None = None, clock: Callable[[], float] = time.time,
              telemetry_s: float | None = None, soc_pct: float = 80.0, host: str = "127.0.0.1",
              site_meter: Callable[[], float | None] | None = None) -> PcsSimulator:
    """A simulator for the site's first ESS (capacity, PCS ratings, efficiency, SoH, reserve).

    With ``settings`` it can publish telemetry (see ``PcsSimulator``)."""
    if not site.ess:
        raise site.error("ess", "the PCS simulator needs an entry (id, capacity_kwh, pcs_charge_kw, pcs_discharge_kw)")
    ess = site.ess[0]
    battery = PcsBattery(Battery.from_spec(ess), soc_pct=soc_pct, min_soc_pct=0.0, now_s=clock())
    return PcsSimulator(battery, port, host, device=ess.id, site=site.id,
                        wchamax_kw=max(ess.pcs_charge_kw, ess.pcs_discharge_kw), clock=clock, settings=settings,
                        telemetry_s=telemetry_s, site_meter=site_meter)


def serve_forever(settings: Settings, site: Site, telemetry_s: float | None = 1.0, meter_url: str | None = None) -> int:
    """`opsloop pcs-sim`: serve on ``settings.pcs_modbus`` and publish telemetry until SIGINT/SIGTERM."""
    import signal

    from opsloop.connectors.pcs import parse_endpoint

    host, port = parse_endpoint(settings.pcs_modbus)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    meter = prometheus_meter(meter_url) if meter_url else None
    with from_site(site, port, settings, clock=settings.clock(), host=host, telemetry_s=telemetry_s, site_meter=meter):
        print(f"PCS simulator on {host}:{port}, telemetry every {telemetry_s} s", flush=True)
        stop.wait()
    return 0


def _pid_file(settings: Settings):
    return settings.data_dir / "pcs-sim.pid"


def start_background(settings: Settings) -> str:
    """Start `opsloop pcs-sim` as a background process (idempotent); ``opsloop down`` stops it."""
    import os
    import socket
    import subprocess
    import sys

    from opsloop.connectors.pcs import parse_endpoint

    host, port = parse_endpoint(settings.pcs_modbus)
    pid_file = _pid_file(settings)
    if _alive(pid_file):
        return f"PCS simulator already running on {host}:{port}"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(settings.data_dir / "pcs-sim.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "opsloop.ops.cli", "pcs-sim"], stdout=log_file, stderr=log_file,
                            start_new_session=True, env={**os.environ, **settings.kafka_env()})
    pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return f"PCS simulator on {host}:{port} (pid {proc.pid}, log {settings.data_dir / 'pcs-sim.log'})"
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"PCS simulator did not come up on {host}:{port}; see {settings.data_dir / 'pcs-sim.log'}")


def stop_background(settings: Settings) -> str:
    import os
    import signal

    pid_file = _pid_file(settings)
    if not _alive(pid_file):
        pid_file.unlink(missing_ok=True)
        return "PCS simulator was not running"
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if not _alive(pid_file):
            break
        time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return f"stopped PCS simulator (pid {pid})"


def _alive(pid_file) -> bool:
    import os

    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    try:
        with open(f"/proc/{pid}/status") as status:
            return "State:\tZ" not in status.read()
    except OSError:
        return True
