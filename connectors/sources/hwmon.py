"""Kind ``hwmon``: Linux power sensors read from sysfs (models/hwmon.py maps them to kW).

Each poll reads ``<root>/class/hwmon/*`` (power and energy attributes, their labels, the chip's
name and parent device) and ``<root>/class/powercap/*`` (``energy_uj``, ``max_energy_range_uj``).
Option ``root`` (default ``/sys``) points at another tree (a container's bind mount, a captured
copy). A tree with neither class is a failed poll: nothing to read there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from opsloop.config.site import Site
from opsloop.config.sources import SourceConfig
from opsloop.connectors.sources.base import Readings, Reject, SourceUnavailable
from opsloop.models.hwmon import Chip, HwmonReader, ReadError
from opsloop.models.names import device_types

_HWMON_ATTR = re.compile(r"(power|energy)\d+_(input|average|label)")
_POWERCAP_ATTRS = ("energy_uj", "max_energy_range_uj")


def _read(path: Path) -> str | ReadError:
    try:
        return path.read_text()
    except OSError as exc:
        return ReadError(exc.strerror or str(exc))


def read_chips(root: Path) -> list[Chip] | None:
    """Every hwmon chip and powercap zone under ``root`` (None: the tree has neither class)."""
    hwmon, powercap = root / "class" / "hwmon", root / "class" / "powercap"
    if not hwmon.is_dir() and not powercap.is_dir():
        return None
    chips = []
    for path in sorted(hwmon.glob("hwmon*")) if hwmon.is_dir() else []:
        name = _read(path / "name")
        parent = path / "device"
        device = os.path.basename(os.path.realpath(parent)) if parent.exists() else None
        attrs = {f.name: _read(f) for f in sorted(path.iterdir()) if _HWMON_ATTR.fullmatch(f.name)}
        chips.append(Chip("hwmon", path.name, name.strip() if isinstance(name, str) else path.name, device, attrs))
    for path in sorted(powercap.iterdir()) if powercap.is_dir() else []:
        if not (path / "energy_uj").exists():
            continue  # the control type itself (intel-rapl), or a zone without an energy counter
        name = _read(path / "name")
        attrs = {a: _read(path / a) for a in _POWERCAP_ATTRS if (path / a).exists()}
        chips.append(Chip("powercap", path.name, name.strip() if isinstance(name, str) else path.name, None, attrs))
    return chips


class Hwmon:
    def __init__(self, config: SourceConfig, site: Site):
        self.root = Path(config.option("root", "/sys"))
        self.reader = HwmonReader(config.devices, device_types(site), config.site)

    def poll(self, now_ms: int) -> Readings:
        chips = read_chips(self.root)
        if chips is None:
            raise SourceUnavailable(f"{self.root}: no class/hwmon or class/powercap (is sysfs mounted there?)")
        out = self.reader.read(chips, now_ms)
        return Readings(points=out.points, rejects=[Reject(raw.encode(), kind, why) for raw, kind, why in out.rejects])

    def close(self) -> None:
        pass


def build(config: SourceConfig, site: Site, clock: Callable[[], float]) -> Hwmon:
    return Hwmon(config, site)
