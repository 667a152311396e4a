"""An Incident record without a correlator: test data for the narration's retrieval."""

from __future__ import annotations


def incident(root: tuple[str, str, str, str], members: list[tuple[str, str, str, str, int]],
             summary: str = "") -> dict:
    """An incident from (device, type, code, text) of the root and (device, type, code, text, seconds after it)."""
    def member(device, device_type, code, text, after_s):
        return {"fingerprint": f"{device}-{code}", "device": device, "device_type": device_type, "code": code,
                "count": 1, "first_seen_ms": 1_000_000 + after_s * 1000, "text": text, "log_line": ""}
    device, device_type, code, _ = root
    every = [member(*root, 0)] + [member(*m) for m in members]
    return {"incident_id": "x", "site": "s", "state": "open", "opened_ms": 1_000_000, "updated_ms": 1_000_000,
            "resolved_ms": None, "root_device": device, "root_device_type": device_type, "root_code": code,
            "severity": "major", "member_count": len(every), "members": every, "summary": summary}
