"""The topic catalog (config/topics.yaml), loaded and validated offline.

>>> specs = load_catalog()
>>> specs["telemetry.raw"].partitions, specs["telemetry.raw"].record
(8, 'TelemetryPoint')
>>> specs["alarms.clean"].key_of({"alarm": {"site": "demo"}})
b'demo'
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import yaml

from opsloop.config import strict_yaml

from opsloop.config.assets import TOPICS_FILE
from opsloop.schemas.codec import record_names

DEFAULT_CATALOG = TOPICS_FILE
CLEANUP = {"delete", "compact", "compact,delete"}


class CatalogError(ValueError):
    pass


class MissingKeyError(ValueError):
    """A record lacks the field its topic is keyed by."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    record: str  # Avro record name in schemas/
    key: str  # record field whose value is the message key
    partitions: int
    replication: int
    retention_hours: int  # 0 = forever
    cleanup: str

    def configs(self) -> dict[str, str]:
        retention_ms = -1 if self.retention_hours == 0 else self.retention_hours * 3_600_000
        return {"cleanup.policy": self.cleanup, "retention.ms": str(retention_ms)}

    @cached_property
    def _key_path(self) -> tuple[str, ...]:
        return tuple(self.key.split("."))

    def key_of(self, record: dict) -> bytes:
        """The message key of ``record`` on this topic: the value at ``key`` (a dotted path), UTF-8."""
        value = record
        for field in self._key_path:
            value = value.get(field) if isinstance(value, dict) else None
            if value is None:
                raise MissingKeyError(f"topic {self.name}: the {self.record} record has no {self.key!r} to key it by")
        return value.encode() if isinstance(value, str) else str(value).encode()


def load_catalog(path: Path = DEFAULT_CATALOG) -> dict[str, TopicSpec]:
    """Topic specs by catalog name; raises CatalogError naming the bad entry."""
    doc = strict_yaml.load(Path(path).read_text())
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("topics"), dict):
        raise CatalogError(f"{path}: expected `version: 1` and a `topics:` mapping")
    defaults = doc.get("defaults") or {}
    known_records = set(record_names())
    specs = {}
    for name, entry in doc["topics"].items():
        entry = {**defaults, **(entry or {})}
        try:
            spec = TopicSpec(name=name, record=entry["record"], key=entry["key"],
                             partitions=int(entry["partitions"]), replication=int(entry["replication"]),
                             retention_hours=int(entry["retention_hours"]), cleanup=entry["cleanup"])
        except KeyError as missing:
            raise CatalogError(f"{path}: topic {name} lacks {missing}") from None
        if spec.record not in known_records:
            raise CatalogError(f"{path}: topic {name}: no schema {spec.record}.avsc in schemas/")
        if spec.cleanup not in CLEANUP:
            raise CatalogError(f"{path}: topic {name}: cleanup must be one of {sorted(CLEANUP)}")
        if spec.partitions < 1 or spec.replication < 1 or spec.retention_hours < 0:
            raise CatalogError(f"{path}: topic {name}: partitions and replication >= 1, retention >= 0")
        specs[name] = spec
    return specs


@lru_cache(maxsize=None)
def cached_catalog(path: Path = DEFAULT_CATALOG) -> dict[str, TopicSpec]:
    """``load_catalog`` once per file: for senders that key a record by its topic name (do not mutate)."""
    return load_catalog(path)


def message_key(topic: str, record: dict, path: Path = DEFAULT_CATALOG) -> bytes:
    """The message key of ``record`` on catalog topic ``topic`` (see ``TopicSpec.key_of``)."""
    return cached_catalog(Path(path))[topic].key_of(record)
