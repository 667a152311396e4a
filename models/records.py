"""One builder per record that several agents emit: DeadLetter (bounded), Alarm, ActionResult, AgentHealth.

Pure: each returns the record as a dict, every field of its Avro schema filled, so all
emitters agree on the shape.

>>> alarm(1, "demo", "ups-1", "ups", "test", "U1", "on battery")["severity"]
'info'
>>> action_result({"action_id": "a-1", "target": "ess-1"}, "executed", "PCS holds 0 kW", "", "pcs-sink", 1)["status"]
'executed'
"""

from __future__ import annotations

import hashlib


#: The most bytes of key and value a dead letter keeps by default: well below the broker's
#: ``message.max.bytes`` (1 MB by default), so the dead letter of any message that reached
#: the broker fits there too. Agents take theirs from ``Settings.deadletter_max_bytes``.
DEAD_LETTER_MAX_BYTES = 256 * 1024
MAX_KEY_BYTES = 1024  # a key keeps at most this much of the cap; the value gets the rest
MAX_ERROR_CHARS = 2000  # the reason is text for people: long exception texts are cut


def dead_letter(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, error_kind: str,
                error: str, agent: str, message_ts_ms: int | None = None,
                max_bytes: int = DEAD_LETTER_MAX_BYTES) -> dict:
    """A rejected message with why (``error_kind``: decode, invalid, late, processing, unknown or
    undeliverable) and who.

    Key and value are kept whole when together they fit in ``max_bytes``; otherwise each keeps
    its first bytes (the key at most ``MAX_KEY_BYTES``) and ``truncated`` is set. Their original
    sizes and SHA-256 hashes are always recorded, so a cut message can still be identified.

    >>> d = dead_letter("telemetry.raw", 0, 7, b"k", b"x" * 100, "decode", "not avro", "rollup", max_bytes=10)
    >>> d["truncated"], len(d["value"]), d["value_size"], d["value_sha256"][:12], d["key"]
    (True, 9, 100, '09ecb6ebc8bc', b'k')
    """
    max_bytes = max(0, max_bytes)
    key_room = min(MAX_KEY_BYTES, max_bytes)
    kept_key = _head(key, key_room)
    kept_value = _head(value, max_bytes - (len(kept_key) if kept_key is not None else 0))
    if len(error) > MAX_ERROR_CHARS:
        error = error[:MAX_ERROR_CHARS - 1] + "…"
    return {"topic": topic, "partition": partition, "offset": offset, "key": kept_key, "value": kept_value,
            "error_kind": error_kind, "error": error, "agent": agent, "message_ts_ms": message_ts_ms,
            "truncated": kept_key is not key or kept_value is not value,
            "key_size": None if key is None else len(key), "value_size": None if value is None else len(value),
            "key_sha256": _sha256(key), "value_sha256": _sha256(value)}


def _head(data: bytes | None, room: int) -> bytes | None:
    """``data`` itself when it fits in ``room`` bytes, else its first ``room`` bytes (a new object)."""
    if data is None or len(data) <= room:
        return data
    return bytes(data[:room])


def _sha256(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def telemetry_point(ts_ms: int, site: str, device: str, device_type: str, metric: str, value: float, unit: str,
                    source: str) -> dict:
    """A TelemetryPoint (``metric`` carries its unit as suffix: grid_kw, inlet_temp_c, ...)."""
    return {"ts_ms": ts_ms, "site": site, "device": device, "device_type": device_type, "metric": metric,
            "value": float(value), "unit": unit, "source": source}


def alarm(ts_ms: int, site: str, device: str, device_type: str, source: str, code: str, text: str,
          severity: str = "info", state: str = "raise", attributes: dict[str, str] | None = None) -> dict:
    """An Alarm event (a raise unless ``state`` says clear)."""
    return {"ts_ms": ts_ms, "site": site, "device": device, "device_type": device_type, "source": source,
            "code": code, "severity": severity, "state": state, "text": text, "attributes": dict(attributes or {})}


def action_alarm(action: dict, device_type: str, source: str, code: str, text: str, ts_ms: int) -> dict:
    """A major alarm on an action's target (a failed verification)."""
    return alarm(ts_ms, action["site"], action["target"], device_type, source, code, text, severity="major",
                 attributes={"action_id": action["action_id"], "kind": action["kind"]})


def action_result(action: dict, status: str, observed: str, detail: str, executor: str, ts_ms: int,
                  delta_kw: float | None = None) -> dict:
    """What happened to an action (``status``: executed, rejected, failed, verified or reverted)."""
    return {"action_id": action["action_id"], "target": action["target"], "status": status, "ts_ms": ts_ms,
            "observed_effect": observed, "observed_delta_kw": delta_kw, "detail": detail, "executor": executor}


def consumer_lag(positions: list[tuple[int, int]]) -> int | None:
    """Messages behind over (position, end) pairs, one per partition; pairs either side does not know yet
    (negative: librdkafka's "invalid offset") are left out, and None when no pair is known.

    >>> consumer_lag([(10, 15), (7, 7), (-1001, 40)])
    5
    >>> consumer_lag([(-1001, -1001)]) is None
    True
    """
    known = [max(0, end - at) for at, end in positions if at >= 0 and end >= 0]
    return sum(known) if known else None


def agent_health(agent: str, group: str, instance: str, ts_ms: int, partitions: int, lag: int | None,
                 processed: int, dead_letters: int, last_input_ms: int | None, last_commit_ms: int | None,
                 last_output_ms: int | None) -> dict:
    """An AgentHealth record (topic agents.health)."""
    return {"ts_ms": ts_ms, "agent": agent, "group": group, "instance": instance, "partitions": partitions,
            "lag": lag, "processed": processed, "dead_letters": dead_letters, "last_input_ms": last_input_ms,
            "last_commit_ms": last_commit_ms, "last_output_ms": last_output_ms}
