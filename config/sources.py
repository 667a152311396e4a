"""The live-source config file: which site systems opsloop reads, and how.

One YAML file per deployment lists every source; ``opsloop source KIND --config FILE`` runs
the blocks of one kind. Each block is parsed into a frozen ``SourceConfig``: the loop's
settings (poll interval, timeout, backoff, how many failed polls raise the monitoring-loss
alarm, batch and buffer bounds) are common to every kind, ``devices`` maps the source's own
names (a scrape target, an SNMP agent, a hwmon chip) to the site file's device ids, and
``options`` holds what only that kind reads (its parser checks them).

>>> cfg = parse_sources({"site": "demo", "sources": [
...     {"kind": "prometheus", "name": "node-1", "interval_s": 5,
...      "devices": {"127.0.0.1:9100": "gpu-pod-1"}, "options": {"url": "http://127.0.0.1:9100/metrics"}}]},
...     "sources.yaml")
>>> cfg[0].name, cfg[0].site, cfg[0].interval_s, cfg[0].fail_after, cfg[0].device("127.0.0.1:9100")
('node-1', 'demo', 5.0, 3, 'gpu-pod-1')
>>> parse_sources({"site": "demo", "sources": [{"kind": "prometheus", "interval_s": -1}]}, "s.yaml")
Traceback (most recent call last):
...
opsloop.config.sources.SourceConfigError: s.yaml: sources[0]: interval_s must be > 0 (got -1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from opsloop.config import strict_yaml


class SourceConfigError(ValueError):
    """A source config that cannot run, with the file and block named."""


@dataclass(frozen=True)
class SourceConfig:
    kind: str
    name: str  # unique in the file: the health record's source and the monitoring-loss alarm's device
    site: str
    interval_s: float = 10.0  # between polls (push sources: how often health is published)
    timeout_s: float = 5.0  # one poll's network timeout
    fail_after: int = 3  # failed polls in a row that raise the monitoring-loss alarm
    backoff_max_s: float = 60.0  # failed polls back off exponentially up to this
    batch_max: int = 10_000  # points handed to the producer at once
    buffer_max: int = 1_000_000  # points the producer may hold unsent (a broker outage); beyond: dropped, counted
    block_s: float = 5.0  # how long a full buffer holds the poll loop (back-pressure) before dropping
    devices: Mapping[str, str] = field(default_factory=dict)  # source-side name -> site device id
    options: Mapping[str, Any] = field(default_factory=dict)  # kind-specific
    source: str = ""  # the file, for messages

    def device(self, external: str) -> str | None:
        """The site device id of a source-side name (``None``: not mapped)."""
        return self.devices.get(external)

    def option(self, key: str, default: Any = None, required: bool = False) -> Any:
        if required and key not in self.options:
            raise self.error(f"options.{key} is required for kind {self.kind}")
        return self.options.get(key, default)

    def error(self, what: str) -> SourceConfigError:
        return SourceConfigError(f"{self.source}: source {self.name!r} ({self.kind}): {what}")


_POSITIVE = ("interval_s", "timeout_s", "backoff_max_s", "block_s")
_COUNTS = ("fail_after", "batch_max", "buffer_max")


def parse_sources(doc: Mapping, source: str = "<config>") -> tuple[SourceConfig, ...]:
    """Every block of a parsed config file; errors name the file and the block."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("sources"), list):
        raise SourceConfigError(f"{source}: expected a mapping with a 'sources' list")
    site = doc.get("site")
    out, names = [], set()
    for i, block in enumerate(doc["sources"]):
        where = f"{source}: sources[{i}]"
        if not isinstance(block, Mapping) or not block.get("kind"):
            raise SourceConfigError(f"{where}: each source needs a 'kind'")
        unknown = set(block) - {"kind", "name", "site", "devices", "options", *_POSITIVE, *_COUNTS}
        if unknown:
            raise SourceConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        kind = str(block["kind"])
        name = str(block.get("name") or kind)
        if name in names:
            raise SourceConfigError(f"{where}: name {name!r} used twice (names identify a source's health)")
        names.add(name)
        block_site = block.get("site", site)
        if not block_site:
            raise SourceConfigError(f"{where}: no site (set 'site' at the top or in the block)")
        numbers: dict[str, Any] = {}
        for key in _POSITIVE:
            if key in block:
                value = block[key]
                if not isinstance(value, (int, float)) or value <= 0:
                    raise SourceConfigError(f"{where}: {key} must be > 0 (got {value})")
                numbers[key] = float(value)
        for key in _COUNTS:
            if key in block:
                value = block[key]
                if not isinstance(value, int) or value < 1:
                    raise SourceConfigError(f"{where}: {key} must be an integer >= 1 (got {value})")
                numbers[key] = value
        devices = block.get("devices") or {}
        options = block.get("options") or {}
        if not isinstance(devices, Mapping) or not isinstance(options, Mapping):
            raise SourceConfigError(f"{where}: 'devices' and 'options' must be mappings")
        out.append(SourceConfig(kind=kind, name=name, site=str(block_site), source=source,
                                devices=MappingProxyType({str(k): str(v) for k, v in devices.items()}),
                                options=MappingProxyType(dict(options)), **numbers))
    return tuple(out)


def load_rules_doc(path: Path | str) -> Any:
    """A kind's rules file read as data (the logs source's rules; the kind parses it)."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SourceConfigError(f"{path}: {exc}") from exc


def load_sources(path: Path | str) -> tuple[SourceConfig, ...]:
    path = Path(path)
    try:
        doc = strict_yaml.load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SourceConfigError(f"{path}: {exc}") from exc
    return parse_sources(doc, str(path))
