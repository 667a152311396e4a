"""One builder per record that several agents emit: DeadLetter, Alarm, ActionResult.

Pure: each returns the record as a dict, every field of its Avro schema filled, so all
emitters agree on the shape.

>>> alarm(1, "demo", "ups-1", "ups", "test", "U1", "on battery")["severity"]
'info'
>>> action_result({"action_id": "a-1", "target": "ess-1"}, "executed", "PCS holds 0 kW", "", "pcs-sink", 1)["status"]
'executed'
"""

from __future__ import annotations


def dead_letter(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, error_kind: str,
                error: str, agent: str, message_ts_ms: int | None = None) -> dict:
    """A rejected message, whole, with why (``error_kind``: decode, invalid, late or processing) and who."""
    return {"topic": topic, "partition": partition, "offset": offset, "key": key, "value": value,
            "error_kind": error_kind, "error": error, "agent": agent, "message_ts_ms": message_ts_ms}


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
