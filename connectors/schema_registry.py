"""Producing in Confluent's wire format: the current schema of each record is registered under its topic's
subject, with BACKWARD compatibility set there, and our own check (schemas/compat.py) must agree before a new
version is registered; the registry's id then frames every message (schemas/confluent.py)."""

from __future__ import annotations

import json

import httpx

from opsloop.schemas import confluent
from opsloop.schemas.codec import SCHEMA_DIR, Codec, load_schema
from opsloop.schemas.compat import incompatibilities

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class SchemaRegistryError(RuntimeError):
    """The registry refused a schema or could not be reached; the message says which and why."""


class ConfluentEncoder:
    """Encodes catalog records for a topic as the registry's consumers expect; ids are looked up once per topic."""

    def __init__(self, url: str, codec: Codec | None = None, compatibility: str = "BACKWARD", timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.codec = codec or Codec.default()
        self.compatibility = compatibility
        self.http = httpx.Client(timeout=timeout_s, headers={"Content-Type": CONTENT_TYPE})
        self._ids: dict[tuple[str, str], int] = {}

    def encode(self, topic: str, record: str, value: dict) -> bytes:
        key = (topic, record)
        if key not in self._ids:
            self._ids[key] = self.register(topic, record)
        return confluent.encode(self._ids[key], self.codec.schema(record).parsed, value)

    def register(self, topic: str, record: str) -> int:
        """Register ``record``'s current schema under ``topic``'s subject; returns its id."""
        subject = confluent.value_subject(topic)
        schema = load_schema(SCHEMA_DIR / f"{record}.avsc")
        latest = self._call("GET", f"/subjects/{subject}/versions/latest", allow_missing=True)
        if latest is not None:
            problems = incompatibilities(schema, json.loads(latest["schema"]))
            if problems:
                raise SchemaRegistryError(f"{record} cannot read {subject} version {latest['version']}: "
                                          + "; ".join(problems))
        rule = {"compatibility": self.compatibility}
        if latest is not None:  # the rule must hold before the new version is judged
            self._call("PUT", f"/config/{subject}", rule)
        found = self._call("POST", f"/subjects/{subject}/versions", {"schema": json.dumps(schema)})["id"]
        if latest is None:  # Apicurio keeps rules only on a subject that exists
            self._call("PUT", f"/config/{subject}", rule)
        return found

    def _call(self, method: str, path: str, body: dict | None = None, allow_missing: bool = False):
        try:
            response = self.http.request(method, self.url + path, json=body)
        except httpx.HTTPError as exc:
            raise SchemaRegistryError(f"schema registry {self.url} unreachable: {exc}") from None
        if allow_missing and response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise SchemaRegistryError(f"schema registry refused {method} {path}: {response.status_code} "
                                      f"{response.text[:300]}")
        return response.json()

    def close(self) -> None:
        self.http.close()
