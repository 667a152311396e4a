"""Linux power sensors as kW: hwmon power (µW) and energy (µJ) attributes, and powercap/RAPL zones.

Pure: the connector reads sysfs into ``Chip`` objects (attribute name -> text as read, or the
read error); ``HwmonReader.read`` turns them into TelemetryPoints and bad readings.

- hwmon chip (``/sys/class/hwmon/hwmonN``: ``amdgpu``, ``i915``, ``xe``, ``acpi_power_meter``, ...):
  ``powerN_input`` or else ``powerN_average`` (µW) -> ``<chip>_<label>_kw``; ``energyN_input`` (µJ)
  -> the average power since the last poll, ``<chip>_<label>_energy_kw``. The label is
  ``powerN_label``/``energyN_label`` (``PPT``, ``pkg``, ``card``), else ``powerN``/``energyN``.
- powercap zone (``/sys/class/powercap/intel-rapl:0``, also on AMD CPUs): ``energy_uj`` with
  ``max_energy_range_uj`` as its wrap -> ``rapl_<zone name>_kw`` (``rapl_package_0_kw``,
  ``rapl_core_kw``, ``rapl_dram_kw``; a subzone is part of its package, never add them).

An unmapped chip or an unreadable attribute (RAPL's root-only ``energy_uj``, a sleeping GPU) is
rejected once, and again only when its reason changes: not at every poll.

A chip is mapped to a site device by the first of its names the source's ``devices`` has:
hwmon ``<name>@<device>`` (the parent device, e.g. a GPU's PCI address), ``<name>``, ``*``;
powercap the zone id, its parents' ids (``intel-rapl:0:1``, ``intel-rapl:0``, ``intel-rapl``),
``*``.

>>> chips = [Chip("hwmon", "hwmon3", "amdgpu", "0000:03:00.0",
...               {"power1_average": "215000000", "power1_label": "PPT"})]
>>> out = HwmonReader({"amdgpu@0000:03:00.0": "gpu-1"}, {"gpu-1": "gpu"}, "lab").read(chips, 1_000)
>>> [(p["device"], p["metric"], p["value"], p["unit"]) for p in out.points]
[('gpu-1', 'amdgpu_ppt_kw', 0.215, 'kW')]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from opsloop.models.counters import CounterRates
from opsloop.models.records import telemetry_point

MICRO_PER_KILO = 1e9  # µW per kW, and µJ/s per kW
_ATTR = re.compile(r"(power|energy)(\d+)_(input|average)")


@dataclass(frozen=True)
class ReadError:
    """An attribute that exists but could not be read (EACCES, ENODATA, EIO from a sleeping GPU, ...)."""

    why: str


@dataclass(frozen=True)
class Chip:
    kind: str  # hwmon | powercap
    id: str  # hwmon3, intel-rapl:0:1
    name: str  # the chip's or zone's name file: amdgpu, package-0
    device: str | None  # hwmon: basename of the parent device (PCI address); powercap: None
    attrs: Mapping[str, str | ReadError]

    def keys(self) -> list[str]:
        """Names a ``devices`` map may use for it, most specific first."""
        if self.kind == "powercap":
            parts = self.id.split(":")
            return [":".join(parts[:n]) for n in range(len(parts), 0, -1)] + ["*"]
        return ([f"{self.name}@{self.device}"] if self.device else []) + [self.name, "*"]


@dataclass
class HwmonReadings:
    points: list[dict] = field(default_factory=list)
    rejects: list[tuple[str, str, str]] = field(default_factory=list)  # (raw, DeadLetterKind, why)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.strip().lower()).strip("_")


def _integer(text: str) -> int:
    return int(text.strip())


class HwmonReader:
    """Holds the energy counters between polls; ``read`` maps one snapshot of chips."""

    def __init__(self, devices: Mapping[str, str], types: Mapping[str, str], site: str, source: str = "hwmon"):
        self.devices = devices
        self.types = types
        self.site = site
        self.source = source
        self.counters = CounterRates()
        self.reported: dict[str, str] = {}  # standing problems (unmapped chip, unreadable attribute), told once
        self.repeats = 0  # standing problems seen again and not told again

    def _standing(self, out: "HwmonReadings", key: str, raw: str, kind: str, why: str) -> None:
        """Reject a problem that repeats at every poll once (again when it changes), not every poll."""
        if self.reported.get(key) == why:
            self.repeats += 1
            return
        self.reported[key] = why
        out.rejects.append((raw, kind, why))

    def read(self, chips: list[Chip], now_ms: int) -> HwmonReadings:
        out = HwmonReadings()
        seen: set[str] = set()
        for chip in chips:
            sensors = self._sensors(chip)
            if not sensors:
                continue  # a chip without power or energy (coretemp, nvme): not ours
            device = next((self.devices[k] for k in chip.keys() if k in self.devices), None)
            if device is None:
                self._standing(out, f"{chip.kind}:{chip.id}:{chip.name}", f"{chip.id} {chip.name}", "unknown",
                               f"{chip.kind} {chip.id} ({chip.name}) maps to no device: devices: has none of "
                               f"{', '.join(chip.keys())}")
                continue
            for metric, attr, wrap_at, counter in sensors:
                raw = chip.attrs[attr]
                where = f"{chip.id}/{attr}"
                if isinstance(raw, ReadError):
                    self._standing(out, where, where, "invalid", f"{where} ({chip.name}): cannot read: {raw.why}")
                    continue
                self.reported.pop(where, None)
                try:
                    value = _integer(raw)
                except ValueError:
                    out.rejects.append((f"{where}={raw.strip()[:64]}", "decode",
                                        f"{where} ({chip.name}): not an integer: {raw.strip()[:64]!r}"))
                    continue
                if value < 0:
                    out.rejects.append((f"{where}={value}", "invalid", f"{where} ({chip.name}): negative ({value})"))
                    continue
                if not counter:
                    kw = value / MICRO_PER_KILO
                else:
                    key = f"{chip.kind}:{chip.id}:{chip.device}:{attr}"
                    seen.add(key)
                    rate = self.counters.update(key, value, now_ms, wrap_at)
                    if rate.status == "reset":
                        out.rejects.append((f"{where}={value}", "invalid",
                                            f"{where} ({chip.name}): counter reset (read {value} µJ, lower than "
                                            f"before and no wrap range): no power for this interval"))
                    if rate.per_s is None:
                        continue
                    kw = rate.per_s / MICRO_PER_KILO
                out.points.append(telemetry_point(now_ms, self.site, device, self.types.get(device, "host"), metric,
                                                  kw, "kW", self.source))
        self.counters.forget(seen)
        return out

    def _sensors(self, chip: Chip) -> list[tuple[str, str, int | None, bool]]:
        """(metric, attribute, wrap range, is a counter) for each power or energy attribute."""
        if chip.kind == "powercap":
            if "energy_uj" not in chip.attrs:
                return []
            wrap = chip.attrs.get("max_energy_range_uj")
            wrap_at = _integer(wrap) if isinstance(wrap, str) and wrap.strip().isdecimal() else None
            return [(f"rapl_{_slug(chip.name) or _slug(chip.id)}_kw", "energy_uj", wrap_at, True)]
        found: dict[tuple[str, str], str] = {}
        for attr in chip.attrs:
            match = _ATTR.fullmatch(attr)
            if match and (match[1] == "power" or match[3] == "input"):
                kind, n = match[1], match[2]
                # powerN_input is the instantaneous reading; powerN_average only when there is no input
                if match[3] == "input" or (kind, n) not in found:
                    found[(kind, n)] = attr
        out = []
        for (kind, n), attr in sorted(found.items()):
            label = chip.attrs.get(f"{kind}{n}_label")
            label = _slug(label) if isinstance(label, str) and _slug(label) else f"{kind}{n}"
            metric = f"{_slug(chip.name)}_{label}_kw" if kind == "power" else f"{_slug(chip.name)}_{label}_energy_kw"
            out.append((metric, attr, None, kind == "energy"))
        return out
