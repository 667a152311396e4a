"""Which readings an action in force explains, so the anomaly agent raises no alarm on a change the loop made.

A battery action (``pcs_*``) the guard approved moves its ESS and, behind the site's grid meter, the import:
while it is in force, and for ``settle_s`` after it expires (the PCS ramps back; a held grid limit releases), a
point of that ESS, or of a grid meter of the same site, is explained by it. Other kinds move loads that are also
moved by the site itself (jobs, LLM traffic, cooling): they explain nothing, and an anomaly there is raised as
before. What is explained is still learnt; only the alarm is not raised.

>>> effects = ActionsInForce(settle_s=600)
>>> effects.learn_one({"verdict": "approved", "action": {"action_id": "a1", "kind": "pcs_discharge", "site": "s",
...                    "target": "ess-1", "created_ms": 0, "expires_ms": 900_000}})
>>> effects.explains("s", "ess-1", "ess", 60_000), effects.explains("s", "grid-1", "grid_meter", 1_400_000)
('a1', 'a1')
>>> effects.explains("s", "pdu-1", "pdu", 60_000), effects.explains("s", "ess-1", "ess", 1_600_000)
(None, None)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

EXPLAINED_TYPES = ("grid_meter",)  # besides the action's own target: what a battery action moves


@dataclass(frozen=True)
class InForce:
    action_id: str
    target: str
    from_ms: int
    until_ms: int  # its expiry plus the settle time


class ActionsInForce:
    """The battery actions approved per site, with the time each explains its devices' readings."""

    def __init__(self, settle_s: float = 900.0, kinds: tuple[str, ...] = ("pcs_",)):
        self.settle_s = settle_s
        self.kinds = kinds
        self._sites: dict[str, list[InForce]] = {}

    def learn_one(self, approved: Mapping) -> None:
        """Take one ApprovedAction (only an approved battery action counts; the caller checks its signature)."""
        action = approved.get("action") or {}
        if approved.get("verdict") != "approved" or not str(action.get("kind", "")).startswith(self.kinds):
            return
        held = InForce(action["action_id"], action["target"], int(action["created_ms"]),
                       int(action["expires_ms"]) + int(self.settle_s * 1000))
        in_force = [a for a in self._sites.get(action["site"], []) if a.until_ms > held.from_ms]
        self._sites[action["site"]] = in_force + [held]

    def explains(self, site: str, device: str, device_type: str, ts_ms: int) -> str | None:
        """The id of the action that explains this reading, or None."""
        for held in reversed(self._sites.get(site, ())):
            if held.from_ms <= ts_ms <= held.until_ms and (device == held.target or device_type in EXPLAINED_TYPES):
                return held.action_id
        return None
