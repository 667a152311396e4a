"""A maintenance reservation as the Slurm sink asks for it and checks it: name, nodes, window. Pure.

The name comes from the action id, so a retried action finds the reservation it made before
instead of making a second one.

>>> act = {"action_id": "maint-0123456789abcdef", "params": {"nodes": "gpu-a1, gpu-a2", "start_ms": "7200000",
...                                                         "end_ms": "21600000"}}
>>> want = requested(act)
>>> want
Reservation(name='opsloop-maint-0123456789abcdef', nodes=('gpu-a1', 'gpu-a2'), start_s=7200, end_s=21600, flags=('MAINT',))
>>> judge_reservation(want, None, now_ms=0, deadline_ms=1).status
'pending'
>>> judge_reservation(want, want, now_ms=0, deadline_ms=1).status
'verified'
>>> judge_reservation(want, Reservation(want.name, ("gpu-a1",), 7200, 21600, ("MAINT",)), 2, 1).text
'reservation opsloop-maint-0123456789abcdef: nodes gpu-a1 (expected gpu-a1,gpu-a2)'
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

from opsloop.models.verify import FAILED, VERIFIED, Outcome, pending_or_failed

PREFIX = "opsloop-"
NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
MAX_ID_CHARS = 40


@dataclass(frozen=True)
class Reservation:
    name: str
    nodes: tuple[str, ...]  # sorted node names, expanded (no host ranges)
    start_s: int  # Slurm keeps whole seconds
    end_s: int
    flags: tuple[str, ...]


def reservation_name(action_id: str) -> str:
    """``opsloop-`` and the action id; an id Slurm could not take as it is gets a digest of the whole id too."""
    clean = NAME_CHARS.sub("-", action_id)[:MAX_ID_CHARS]
    if clean == action_id and clean:
        return PREFIX + clean
    return f"{PREFIX}{clean}-{hashlib.sha256(action_id.encode()).hexdigest()[:12]}"


def requested(action: Mapping) -> Reservation:
    """The reservation an approved ``slurm_reserve`` asks for (the guard checked its params)."""
    params = action["params"]
    nodes = tuple(sorted({n.strip() for n in params["nodes"].split(",") if n.strip()}))
    return Reservation(reservation_name(action["action_id"]), nodes, int(params["start_ms"]) // 1000,
                       int(params["end_ms"]) // 1000, ("MAINT",))


def utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def judge_reservation(want: Reservation, found: Reservation | None, now_ms: int, deadline_ms: int) -> Outcome:
    """Verified when the named reservation holds the nodes and window asked for, with every flag asked for."""
    if found is None:
        return pending_or_failed(now_ms, deadline_ms, f"reservation {want.name} not listed yet",
                                 f"reservation {want.name} not found")
    wrong = []
    if found.nodes != want.nodes:
        wrong.append(f"nodes {','.join(found.nodes)} (expected {','.join(want.nodes)})")
    if (found.start_s, found.end_s) != (want.start_s, want.end_s):
        wrong.append(f"window {utc(found.start_s)} to {utc(found.end_s)} "
                     f"(expected {utc(want.start_s)} to {utc(want.end_s)})")
    missing = sorted(set(want.flags) - set(found.flags))
    if missing:
        wrong.append(f"flags {','.join(found.flags)} lack {','.join(missing)}")
    if not wrong:
        return Outcome(VERIFIED, f"reservation {want.name} holds {','.join(want.nodes)} from {utc(want.start_s)} "
                                 f"to {utc(want.end_s)} ({','.join(found.flags)})")
    return Outcome(FAILED, f"reservation {want.name}: {'; '.join(wrong)}")
