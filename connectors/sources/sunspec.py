"""Kind ``sunspec``: meters, inverters, storage and batteries over Modbus TCP, found by SunSpec discovery.

At the first poll (and after any failed one) the poller reads the ``SunS`` marker at the
configured base address (40000 unless ``options.base`` says 0 or 50000), then walks the model
headers (id, length) to the end marker: addresses come from the device, never from us. Each
model instance is named by its id, the second and later ones of an id as ``<id>:<n>`` (``203``,
``203:2``); ``devices`` maps those names to site devices, whose type gives the metric prefix
(grid_meter -> ``grid_kw``). Decoding and units: ``models.sunspec_points``.

A refused or timed-out connection, a Modbus exception response or a device without the marker
is ``SourceUnavailable`` (the loop backs off and raises the monitoring-loss alarm). Model
instances opsloop reads but the config does not map are dead-lettered (``unknown``) once per
discovery; values without a usable scale factor are dead-lettered (``invalid``) per poll.
Event bits (meter ``Evt``, battery ``Evt1``) become Alarms when they rise and clears when they fall.
``options.ignore`` lists model instances (keyed as ``devices`` is) read elsewhere or not at all, such as
a PCS's own meter where the site meter is another device: they are neither read nor dead-lettered.

One source may poll many devices: ``options.targets`` lists them (``host``, ``port``, ``unit``,
``base``, and a ``name``, by default ``host:port``, or ``host:port#unit`` for a unit other than 1),
and ``devices`` keys then name the target too: ``"<name>/203:2"``. The targets are polled at once,
each by its own worker thread with its own connection (a Modbus TCP device answers one request at a
time; waiting on the network does not hold the others). A poll fails (``SourceUnavailable``) when
every target failed; when only some did, the rest is published and the failed ones are logged by
name and counted in ``failed_targets``.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from opsloop.config.site import Site
from opsloop.config.sources import SourceConfig
from opsloop.connectors.sources.base import Readings, Reject, SourceUnavailable
from opsloop.models import sunspec_points
from opsloop.models.names import device_types
from opsloop.models.records import alarm, telemetry_point

log = logging.getLogger("opsloop.source.sunspec")
MARKER = [0x5375, 0x6E53]  # "SunS"
END = 0xFFFF
MAX_READ = 125  # registers per Modbus read
MAX_MODELS = 64  # a chain longer than this is a device that never ends it
EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "device failure",
              6: "device busy", 10: "gateway path unavailable", 11: "gateway target did not respond"}


class SunSpecDevice:
    """One Modbus TCP device (a host, port and unit); ``prefix`` is put before its model names in
    ``devices`` (empty for a source with a single device)."""

    def __init__(self, config: SourceConfig, site: Site, target, prefix: str = ""):
        self.config = config
        self.site = site.id
        self.prefix = prefix
        self.host = str(_required(config, target, "host"))
        self.port = int(target.get("port", 502))
        self.unit = int(target.get("unit", 1))
        self.base = int(target.get("base", 40000))
        if self.base not in (0, 40000, 50000):
            raise config.error(f"options.base must be 0, 40000 or 50000 (SunSpec's base addresses), got {self.base}")
        self.types = device_types(site)
        self.client = ModbusTcpClient(self.host, port=self.port, timeout=config.timeout_s, retries=0)
        self.chain: list[tuple[str, int, int, int]] | None = None  # (name, model id, id register, length)
        self.events: dict[str, int] = {}  # last event bits per model instance
        ignore = config.option("ignore", [])
        if not isinstance(ignore, list):
            raise config.error(f"options.ignore must be a list of model instances such as \"203:2\", got {ignore!r}")
        self.ignore = frozenset(str(name) for name in ignore)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port} unit {self.unit}"

    def _read(self, address: int, count: int) -> list[int]:
        out: list[int] = []
        while count > 0:
            n = min(count, MAX_READ)
            try:
                response = self.client.read_holding_registers(address, count=n, device_id=self.unit)
            except ModbusException as exc:
                raise SourceUnavailable(f"{self.endpoint}: reading {n} registers at {address}: {exc}") from exc
            if response.isError():
                code = getattr(response, "exception_code", None)
                raise SourceUnavailable(f"{self.endpoint}: Modbus exception {code} "
                                        f"({EXCEPTIONS.get(code, 'unknown')}) reading {n} registers at {address}")
            out += response.registers
            address, count = address + n, count - n
        return out

    def discover(self) -> list[tuple[str, int, int, int]]:
        if self._read(self.base, 2) != MARKER:
            raise SourceUnavailable(f"{self.endpoint}: no SunSpec marker 'SunS' at {self.base}")
        chain, seen, at = [], {}, self.base + 2
        for _ in range(MAX_MODELS):
            model, length = self._read(at, 2)
            if model == END:
                return chain
            seen[model] = seen.get(model, 0) + 1
            chain.append((str(model) if seen[model] == 1 else f"{model}:{seen[model]}", model, at, length))
            at += 2 + length
        raise SourceUnavailable(f"{self.endpoint}: no SunSpec end marker after {MAX_MODELS} models")

    def poll(self, now_ms: int) -> Readings:
        try:
            if not self.client.connected and not self.client.connect():
                raise SourceUnavailable(f"{self.endpoint}: cannot connect (refused or timed out)")
            readings = Readings()
            if self.chain is None:
                self.chain = self.discover()
                log.info("%s: models %s", self.endpoint, ", ".join(f"{name}@{at}" for name, _, at, _ in self.chain))
                readings.rejects += self._unmapped()
            readings.extend(self._read_models(now_ms))
            return readings
        except SourceUnavailable:
            self.chain = None  # rediscover: the device may have restarted with another layout
            self.client.close()
            raise

    def _unmapped(self) -> list[Reject]:
        return [Reject(f"model {name} at {at}".encode(), "unknown",
                       f"SunSpec model {name} at register {at} of {self.endpoint} is not mapped to a site device "
                       f"(devices: {{{self.prefix + name!r}: ...}})")
                for name, model, at, _ in self.chain
                if model in sunspec_points.POINTS and self.device_of(name) is None and self.prefix + name not in self.ignore]

    def device_of(self, name: str) -> str | None:
        return self.config.device(self.prefix + name)

    def _read_models(self, now_ms: int) -> Readings:
        out, seen = Readings(), set()
        order = {m: i for i, m in enumerate(sunspec_points.PREFERENCE)}
        mapped = [(name, model, at, length, device) for name, model, at, length in self.chain
                  if model in sunspec_points.POINTS and (device := self.device_of(name)) is not None]
        for name, model, at, length, device in sorted(mapped, key=lambda m: order.get(m[1], len(order))):
            device_type = self.types.get(device, "device")
            values, problems, events = sunspec_points.decode(model, self._read(at + 2, length),
                                                             sunspec_points.prefix_of(device_type))
            for metric, value, unit in values:
                if (device, metric) not in seen:  # the BMS's SoC over the PCS's (PREFERENCE)
                    seen.add((device, metric))
                    out.points.append(telemetry_point(now_ms, self.site, device, device_type, metric, value, unit,
                                                      self.config.name))
            out.rejects += [Reject(f"model {name} {problem}".encode(), "invalid",
                                   f"SunSpec model {name} of {device}: {problem}") for problem in problems]
            if events is not None:
                before = self.events.get(name, 0)
                for code, severity, state in sunspec_points.event_changes(model, before, events):
                    out.alarms.append(alarm(now_ms, self.site, device, device_type, "opsloop.source.sunspec", code,
                                            f"{device}: SunSpec model {name} event {code} "
                                            f"{'set' if state == 'raise' else 'cleared'}",
                                            severity, state, {"model": name}))
                self.events[name] = events
        return out

    def close(self) -> None:
        self.client.close()


def _required(config: SourceConfig, target, key: str):
    if key not in target:
        raise config.error(f"options.{key} is required for kind sunspec (in options, or in each of options.targets)")
    return target[key]


def target_name(target) -> str:
    unit = int(target.get("unit", 1))
    return str(target.get("name") or f"{target['host']}:{target.get('port', 502)}" + (f"#{unit}" if unit != 1 else ""))


class SunSpecPoller:
    """A Poller over one device (``options.host``...) or many (``options.targets``), polled at once."""

    def __init__(self, config: SourceConfig, site: Site):
        targets = config.option("targets")
        if targets is None:
            self.devices = [SunSpecDevice(config, site, config.options)]
        else:
            if not isinstance(targets, list) or not targets or not all(isinstance(t, dict) for t in targets):
                raise config.error("options.targets must be a list of {host, port, unit, base, name}")
            names = [target_name(t) if "host" in t else "" for t in targets]
            if len(set(names)) != len(names):
                raise config.error(f"options.targets: two targets are named alike ({', '.join(names)}); give each a name")
            self.devices = [SunSpecDevice(config, site, t, f"{name}/") for t, name in zip(targets, names)]
        self.failed_targets: Counter = Counter()
        workers = int(config.option("workers", min(len(self.devices), 64)))
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=f"sunspec-{config.name}") if workers > 1 else None

    def poll(self, now_ms: int) -> Readings:
        if self.pool is None:
            results = [_attempt(device, now_ms) for device in self.devices]
        else:
            results = list(self.pool.map(_attempt, self.devices, [now_ms] * len(self.devices)))
        out, failed = Readings(), []
        for result in results:
            if isinstance(result, SourceUnavailable):
                failed.append(str(result))
            else:
                out.extend(result)
        if failed and len(failed) == len(self.devices):
            raise SourceUnavailable("; ".join(failed))
        for device, result in zip(self.devices, results):  # some answered: the poll counts, the others are named
            if isinstance(result, SourceUnavailable):
                self.failed_targets[device.endpoint] += 1
                log.warning("poll failed: %s", result)
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        for device in self.devices:
            device.close()


def _attempt(device: SunSpecDevice, now_ms: int) -> Readings | SourceUnavailable:
    try:
        return device.poll(now_ms)
    except SourceUnavailable as exc:
        return exc


def build(config: SourceConfig, site: Site, clock) -> SunSpecPoller:
    return SunSpecPoller(config, site)
