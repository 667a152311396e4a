"""The guarded cooling loop's decisions: where the supply-air setpoint should go, and whether a change held.

Pure: the caller passes what the plant reads (the setpoint's present value and the rack inlet
temperatures, as parsed from BACnet or telemetry), the policy's ``CoolingLimits`` and the time.

``propose`` aims the hottest rack inlet at ``inlet_max_c - inlet_margin_c``: it estimates the rise
from the supply air to the hottest inlet as it reads now (``hottest - setpoint``) and moves the setpoint
towards ``target - rise``, by at most ``max_step_c`` and what the hour's ramp budget leaves. It raises
only when no earlier change awaits verification (the inlets lag the supply air by minutes, so a rise
read before they settle would be underestimated); it lowers at once when the hottest inlet is above
its aim. The guard (models/guard.py ``cooling_problems``) checks the same limits again on the action.

``verify`` judges a change after it was written: the present value must read back what was written,
and every inlet must stay inside ``[inlet_min_c, inlet_max_c]``; a change is verified once it held for
``settle_s`` with every inlet in range, and reverted on the first failed check or when
``revert_timeout_s`` passes without a verdict.

>>> from opsloop.config.policy import CoolingLimits
>>> limits = CoolingLimits(18, 27, 16, 25, 1.0, 3.0, 1800, inlet_margin_c=1.5)
>>> state = CoolingState(setpoint_c=18.0, inlet_c={"zone-a1": 23.5, "zone-b1": 23.0}, ts_ms=0)
>>> p = propose(state, limits, now_ms=0)
>>> p.reason_code, p.setpoint_c
('raise_setpoint', 19.0)
>>> p.text
'Raise the supply-air setpoint from 18.0 to 19.0 degC: the hottest inlet (zone-a1) reads 23.5 degC, 2.0 degC below the 25.5 degC aim.'
>>> verify(19.0, 19.0, {"zone-a1": 24.4}, limits, applied_ms=0, now_ms=900_000).status
'verified'
>>> verify(19.0, 18.0, {"zone-a1": 24.4}, limits, applied_ms=0, now_ms=60_000).reason_code
'readback_mismatch'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping

from opsloop.config.policy import CoolingLimits

HOUR_MS = 3_600_000
KIND = "cooling_setpoint"
RAISE, LOWER = "raise_setpoint", "lower_setpoint"  # the loop's proposals
VERIFIED, PENDING, REVERT = "verified", "pending", "revert"  # verification statuses
READBACK_MISMATCH = "readback_mismatch"  # the present value does not read what was written
INLET_OUT_OF_RANGE = "inlet_out_of_range"  # a rack inlet left the policy's range after the change
ABOVE_AIM = "above_aim"  # after a raise, the hottest inlet passed the aim before it settled
NO_VERDICT = "revert_timeout"  # neither verified nor failed within revert_timeout_s (no inlet readings)
HELD = "setpoint_held"  # verified: read back and every inlet in range for settle_s
WAITING = "settling"
REASON_CODES = frozenset({RAISE, LOWER, READBACK_MISMATCH, INLET_OUT_OF_RANGE, ABOVE_AIM, NO_VERDICT, HELD, WAITING})
DEADBAND_C = 0.25  # smaller moves are not worth a write (the plant's own control band is wider)
READBACK_TOLERANCE_C = 0.05  # a REAL's rounding, not a different value


@dataclass(frozen=True)
class CoolingState:
    """What the loop knows of the plant: the setpoint's present value, the inlets, the recent changes."""

    setpoint_c: float
    inlet_c: Mapping[str, float]  # rack or zone -> degC, read at ts_ms
    ts_ms: int
    changes: tuple[tuple[int, float], ...] = ()  # (applied_ms, delta_c) of changes written, reverts included
    pending: bool = False  # a change awaits verification

    def changed_last_hour_c(self, now_ms: int) -> float:
        """Degrees moved in the last hour, either direction, summed."""
        return sum(abs(d) for t, d in self.changes if now_ms - t < HOUR_MS)


@dataclass(frozen=True)
class Proposal:
    setpoint_c: float
    reason_code: str
    text: str


@dataclass(frozen=True)
class Verdict:
    status: str  # verified, pending or revert
    reason_code: str
    text: str


def aim_c(limits: CoolingLimits) -> float:
    return limits.inlet_max_c - limits.inlet_margin_c


def propose(state: CoolingState, limits: CoolingLimits, now_ms: int) -> Proposal | None:
    """The setpoint to write now, with why; None when the setpoint should stay."""
    if not state.inlet_c:
        return None
    hottest = max(state.inlet_c, key=lambda k: state.inlet_c[k])
    hot_c, cold_c = state.inlet_c[hottest], min(state.inlet_c.values())
    aim = aim_c(limits)
    wanted = state.setpoint_c + (aim - hot_c)
    # never push the coldest inlet under the range's floor
    wanted = max(wanted, state.setpoint_c + (limits.inlet_min_c + limits.inlet_margin_c - cold_c))
    wanted = min(max(wanted, limits.setpoint_min_c), limits.setpoint_max_c)
    delta = wanted - state.setpoint_c
    room = limits.max_change_c_per_h - state.changed_last_hour_c(now_ms)
    step = min(limits.max_step_c, room)
    if abs(delta) < DEADBAND_C or step < DEADBAND_C or (delta > 0 and state.pending):
        return None
    new = round(state.setpoint_c + max(-step, min(step, delta)), 1)
    if delta > 0:
        return Proposal(new, RAISE, f"Raise the supply-air setpoint from {state.setpoint_c:.1f} to {new:.1f} degC: the "
                                    f"hottest inlet ({hottest}) reads {hot_c:.1f} degC, {aim - hot_c:.1f} degC below "
                                    f"the {aim:.1f} degC aim.")
    why = (f"the hottest inlet ({hottest}) reads {hot_c:.1f} degC, {hot_c - aim:.1f} degC above the {aim:.1f} degC aim"
           if hot_c > aim else f"the setpoint is above the policy's {limits.setpoint_max_c:.1f} degC")
    return Proposal(new, LOWER, f"Lower the supply-air setpoint from {state.setpoint_c:.1f} to {new:.1f} degC: {why}.")


def verify(requested_c: float, read_back_c: float | None, inlet_c: Mapping[str, float], limits: CoolingLimits,
           applied_ms: int, now_ms: int, raised: bool = True) -> Verdict:
    """Whether a change to ``requested_c`` written at ``applied_ms`` held.

    A raise must hold for half the revert timeout (three of the zones' time constants on the demo twin)
    with the hottest inlet at or below the aim; a lowering (the safe direction) is verified as soon as
    it reads back with every inlet in range."""
    settle_s = limits.revert_timeout_s / 2 if raised else 0.0
    if read_back_c is None or abs(read_back_c - requested_c) > READBACK_TOLERANCE_C:
        return Verdict(REVERT, READBACK_MISMATCH, f"the setpoint reads {read_back_c!r} degC, not the {requested_c:.1f} "
                                                  f"degC written; revert")
    out = {k: v for k, v in inlet_c.items() if not limits.inlet_min_c <= v <= limits.inlet_max_c}
    if out:
        name = max(out, key=lambda k: abs(out[k] - (limits.inlet_min_c + limits.inlet_max_c) / 2))
        return Verdict(REVERT, INLET_OUT_OF_RANGE, f"{name} reads {out[name]:.1f} degC, outside {limits.inlet_min_c:g}-"
                                                   f"{limits.inlet_max_c:g} degC, after the change to "
                                                   f"{requested_c:.1f} degC; revert")
    held_s = (now_ms - applied_ms) / 1000
    if raised and inlet_c and max(inlet_c.values()) > aim_c(limits):
        name = max(inlet_c, key=lambda k: inlet_c[k])
        return Verdict(REVERT, ABOVE_AIM, f"{name} reads {inlet_c[name]:.1f} degC, above the {aim_c(limits):.1f} degC "
                                          f"aim, before the raise to {requested_c:.1f} degC settled; revert")
    if inlet_c and held_s >= settle_s:
        return Verdict(VERIFIED, HELD, f"{requested_c:.1f} degC reads back and every inlet stayed in range for "
                                       f"{held_s:.0f} s")
    if held_s >= limits.revert_timeout_s:
        return Verdict(REVERT, NO_VERDICT, f"no inlet readings confirmed {requested_c:.1f} degC within "
                                           f"{limits.revert_timeout_s:g} s; revert")
    return Verdict(PENDING, WAITING, f"{requested_c:.1f} degC reads back; inlets settling ({held_s:.0f} s of "
                                     f"{settle_s:g} s)")


def state_from_action(action: Mapping, approved: Iterable[Mapping]) -> CoolingState | None:
    """What the guard knows of the plant for a ``cooling_setpoint``: the readings its proposer took (params
    ``from_c``, ``hottest_c``, ``coldest_c``, ``read_ms``; the sink reads the device again before and after it
    writes) and the changes of the target the guard approved (their ``created_ms`` and step); None when the
    action carries no readings.

    >>> act = {"target": "av1", "params": {"from_c": "20", "hottest_c": "24.5", "coldest_c": "21", "read_ms": "5"}}
    >>> earlier = {"target": "av1", "created_ms": 0, "params": {"from_c": "19", "setpoint_c": "20"}}
    >>> state_from_action(act, [earlier])
    CoolingState(setpoint_c=20.0, inlet_c={'hottest': 24.5, 'coldest': 21.0}, ts_ms=5, changes=((0, 1.0),), pending=False)
    """
    params = action.get("params") or {}
    try:
        setpoint, hot, cold = float(params["from_c"]), float(params["hottest_c"]), float(params["coldest_c"])
        read_ms = int(params["read_ms"])
    except (KeyError, TypeError, ValueError):
        return None
    changes = []
    for other in approved:
        p = other.get("params") or {}
        try:
            changes.append((int(other["created_ms"]), float(p["setpoint_c"]) - float(p["from_c"])))
        except (KeyError, TypeError, ValueError):
            continue
    return CoolingState(setpoint, {"hottest": hot, "coldest": cold}, read_ms, tuple(changes))


def setpoint_action(site: str, target: str, from_c: float, proposal: Proposal, limits: CoolingLimits, now_ms: int,
                    proposer: str = "cooling", inlet_c: Mapping[str, float] | None = None) -> dict:
    """The ``cooling_setpoint`` Action for ``proposal`` on the plant's setpoint object ``target``; it expires
    (and, unverified, is reverted) after ``revert_timeout_s``."""
    action = {"kind": KIND, "target": target, "site": site, "setpoint_kw": None, "shed_kw": None, "job_ids": [],
              "params": {"setpoint_c": f"{proposal.setpoint_c:.1f}", "from_c": f"{from_c:.1f}",
                         **({"hottest_c": f"{max(inlet_c.values()):.2f}", "coldest_c": f"{min(inlet_c.values()):.2f}",
                             "read_ms": str(now_ms)} if inlet_c else {})},
              "reason": proposal.text, "reason_code": proposal.reason_code,
              "expected_effect": f"supply air at {proposal.setpoint_c:.1f} degC; the hottest inlet stays at or below "
                                 f"{aim_c(limits):.1f} degC",
              "expected_delta_kw": None, "created_ms": now_ms, "expires_ms": now_ms + int(limits.revert_timeout_s * 1000),
              "risk": "low" if proposal.reason_code == LOWER else "medium", "proposer": proposer}
    digest = hashlib.sha256(repr(sorted((k, str(v)) for k, v in action.items())).encode())
    action["action_id"] = f"cool-{digest.hexdigest()[:16]}"
    return action
