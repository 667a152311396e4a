"""Alarm fingerprints, deduplication and flap detection: pure decisions that say why.

Like Alertmanager, every decision is a pure function of the stored state, the alarm and
the configuration, and returns the new state with a ``Decision`` whose ``reason`` explains it
and whose ``reason_code`` (one of ``REASON_CODES``) lets decisions be counted by why.
Time is the alarm's event time; nothing here reads a clock.

* Fingerprint: the source plus the values of the fields configured for that source
  (default site, device, device_type, code), readable and stable.
* Dedup: a raise of an alarm that is already raised is a duplicate: it is counted and
  folded, and re-announced only once ``window_ms`` has passed since it was last announced.
* Flapping: ``flap_threshold`` raise/clear changes within ``flap_window_ms``. While flapping,
  changes are folded and downstream keeps seeing the alarm raised; once it has been stable
  for ``flap_window_ms`` the final state is announced (``settle``).

Nothing is dropped: folded events are counted in the next announcement, and the raw
alarms stay on ``alarms.raw``.

>>> cfg = DedupConfig(window_ms=60_000)
>>> a = {"ts_ms": 0, "site": "s", "device": "pdu-1", "device_type": "pdu", "source": "bms",
...      "code": "PWR_INPUT_LOSS", "severity": "major", "state": "raise", "text": "", "attributes": {}}
>>> fp = fingerprint(a, cfg)
>>> fp
'bms|s|pdu-1|pdu|PWR_INPUT_LOSS'
>>> state, d = decide(None, a, fp, cfg)
>>> d.emit, d.reason_code, d.reason
(True, 'first_raise', 'first raise')
>>> state, d = decide(state, {**a, "ts_ms": 10_000}, fp, cfg)
>>> d.emit, d.reason_code, d.reason, state["count"]
(False, 'duplicate', 'duplicate #2 within 60 s of the last announcement', 2)
>>> state, d = decide(state, {**a, "ts_ms": 20_000, "state": "clear"}, fp, cfg)
>>> d.emit, d.reason_code, d.reason
(True, 'cleared', 'cleared after 2 raises')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from opsloop.models.event_time import EventTimeBounds

DEFAULT_FIELDS = ("site", "device", "device_type", "code")

# Reason codes, one per kind of decision. Announced on alarms.clean:
FIRST_RAISE = "first_raise"  # the first raise of a fingerprint with no live state
RAISED_AGAIN = "raised_again"  # raised again after a clear
STILL_RAISED = "still_raised"  # a duplicate re-announced once the window has passed
CLEARED = "cleared"
FLAPPING_STARTED = "flapping_started"  # shown as raised until stable
FLAPPING_STOPPED = "flapping_stopped"  # the changes fell out of the flap window while raised
SETTLED_RAISED = "settled_raised"  # a flapping alarm stable for the flap window, raised
SETTLED_CLEARED = "settled_cleared"  # ... cleared
# Suppressed (folded, counted in the next announcement):
DUPLICATE = "duplicate"
FLAPPING = "flapping"  # a change while flapping
CLEAR_NOT_RAISED = "clear_not_raised"
ANNOUNCED_CODES = frozenset({FIRST_RAISE, RAISED_AGAIN, STILL_RAISED, CLEARED, FLAPPING_STARTED, FLAPPING_STOPPED,
                             SETTLED_RAISED, SETTLED_CLEARED})
SUPPRESSED_CODES = frozenset({DUPLICATE, FLAPPING, CLEAR_NOT_RAISED})
REASON_CODES = ANNOUNCED_CODES | SUPPRESSED_CODES


@dataclass(frozen=True)
class DedupConfig:
    window_ms: int = 300_000  # a raised alarm is re-announced at most this often
    flap_window_ms: int = 600_000
    flap_threshold: int = 4  # raise/clear changes within flap_window_ms that make an alarm flapping
    fields_by_source: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_fields: tuple[str, ...] = DEFAULT_FIELDS


@dataclass(frozen=True)
class Decision:
    emit: bool  # announce on alarms.clean
    reason: str
    reason_code: str  # from REASON_CODES: ANNOUNCED_CODES when emit, SUPPRESSED_CODES otherwise
    state: str = "raise"  # the state downstream should see
    flapping: bool = False


def fingerprint(alarm: Mapping, config: DedupConfig) -> str:
    """``source|value|value...`` of the source's configured fields (``attributes.x`` reads an attribute)."""
    fields = config.fields_by_source.get(alarm["source"], config.default_fields)
    parts = [alarm["source"]]
    for name in fields:
        if name.startswith("attributes."):
            parts.append(str((alarm.get("attributes") or {}).get(name[len("attributes."):], "")))
        else:
            parts.append(str(alarm.get(name, "")))
    return "|".join(p.replace("|", "/") for p in parts)


def fingerprint_fields(fp: str, config: DedupConfig) -> dict[str, str]:
    """Back from a fingerprint to its named fields (operator feedback carries only the fingerprint).

    >>> fingerprint_fields("bms|s|pdu-1|pdu|PWR_INPUT_LOSS", DedupConfig())["code"]
    'PWR_INPUT_LOSS'
    """
    source, *values = fp.split("|")
    names = config.fields_by_source.get(source, config.default_fields)
    return {"source": source, **dict(zip(names, values))}


def new_state(ts_ms: int) -> dict:
    return {"active": False, "reported": "clear", "count": 0, "first": ts_ms, "last": ts_ms,
            "announced": ts_ms, "changes": [], "flapping": False, "episodes": 0}


def decide(state: dict | None, alarm: Mapping, fp: str, config: DedupConfig) -> tuple[dict, Decision]:
    """Fold one raw alarm into its fingerprint's state; returns (new state, decision)."""
    t = alarm["ts_ms"]
    st = dict(state) if state else new_state(t)
    st["alarm"] = dict(alarm)  # the latest raw event, announced again if a flap settles later
    changes = [c for c in st["changes"] if c > t - config.flap_window_ms]
    raising = alarm["state"] == "raise"
    if raising and st["active"]:
        st["count"] += 1
        st["last"] = max(st["last"], t)
        st["changes"] = changes
        if t - st["announced"] >= config.window_ms:
            st["announced"] = t
            return st, Decision(True, f"still raised: {st['count']} raises since "
                                      f"{(t - st['first']) // 1000} s ago, re-announced after the window",
                                STILL_RAISED, "raise", st["flapping"])
        return st, Decision(False, f"duplicate #{st['count']} within {config.window_ms // 1000} s "
                                   f"of the last announcement", DUPLICATE, "raise", st["flapping"])
    if not raising and not st["active"]:
        st["changes"] = changes
        return st, Decision(False, "clear of an alarm that is not raised", CLEAR_NOT_RAISED, st["reported"],
                            st["flapping"])
    changes.append(t)
    st["changes"] = changes
    st["active"] = raising
    st["last"] = max(st["last"], t)
    was_flapping = st["flapping"]
    st["flapping"] = len(changes) >= config.flap_threshold
    window_s = config.flap_window_ms // 1000
    if st["flapping"]:
        st["count"] += 1 if raising else 0
        if not was_flapping:
            st["announced"], st["reported"] = t, "raise"
            return st, Decision(True, f"started flapping: {len(changes)} raise/clear changes in {window_s} s; "
                                      f"shown as raised until stable", FLAPPING_STARTED, "raise", True)
        return st, Decision(False, f"flapping ({len(changes)} changes in {window_s} s): "
                                   f"{'raise' if raising else 'clear'} folded", FLAPPING, "raise", True)
    if raising:
        if st["reported"] == "raise":  # flapping ended while raised: downstream already sees it raised
            st["count"] += 1
            st["announced"] = t
            return st, Decision(True, "stopped flapping, raised", FLAPPING_STOPPED, "raise", False)
        st.update(count=1, first=t, announced=t, reported="raise", episodes=st["episodes"] + 1)
        if st["episodes"] == 1:
            return st, Decision(True, "first raise", FIRST_RAISE, "raise", False)
        return st, Decision(True, "raised again after a clear", RAISED_AGAIN, "raise", False)
    st["announced"], st["reported"] = t, "clear"
    return st, Decision(True, f"cleared after {st['count']} raise{'s' if st['count'] != 1 else ''}",
                        CLEARED, "clear", False)


def settle(state: dict, now_ms: int, config: DedupConfig) -> tuple[dict, Decision | None]:
    """A flapping alarm that has been stable for the flap window is announced in its final state.

    Call with the event time of later traffic; returns (state, None) while nothing changes.

    >>> cfg = DedupConfig(flap_window_ms=60_000, flap_threshold=2)
    >>> st = {**new_state(0), "active": False, "reported": "raise", "flapping": True, "changes": [0, 5_000]}
    >>> settle(st, 30_000, cfg)[1] is None, settle(st, 65_000, cfg)[1].state, settle(st, 65_000, cfg)[1].reason_code
    (True, 'clear', 'settled_cleared')
    """
    if not state["flapping"] or (state["changes"] and now_ms - max(state["changes"]) < config.flap_window_ms):
        return state, None
    st = {**state, "flapping": False, "changes": [], "announced": now_ms}
    if st["active"]:
        return st, Decision(True, f"stable for {config.flap_window_ms // 1000} s: no longer flapping, raised",
                            SETTLED_RAISED, "raise", False)
    st["reported"] = "clear"
    return st, Decision(True, f"stable for {config.flap_window_ms // 1000} s: no longer flapping, cleared",
                        SETTLED_CLEARED, "clear", False)


def clean_alarm(alarm: Mapping, fp: str, state: Mapping, decision: Decision, scorer) -> dict:
    """The CleanAlarm record announcing ``decision`` (the alarm's state is what downstream should see), with
    the noise scorer's score, flag and reason code for ``alarm``."""
    score = scorer.score_one(alarm)
    return {"alarm": {**alarm, "state": decision.state}, "fingerprint": fp, "duplicate_count": max(1, state["count"]),
            "first_seen_ms": state["first"], "last_seen_ms": state["last"], "flapping": decision.flapping,
            "noise_score": score, "noise": scorer.is_noise(score), "decision_reason": decision.reason,
            "reason_code": decision.reason_code, "noise_reason_code": scorer.reason_code(score)}


def prune(states: Mapping[str, dict], now_ms: int, config: DedupConfig) -> dict[str, dict]:
    """Drop states of alarms cleared and quiet for longer than both windows (they start afresh).

    >>> prune({"a": {**new_state(0), "last": 0}}, 10_000_000, DedupConfig())
    {}
    """
    keep_ms = max(config.window_ms, config.flap_window_ms)
    return {fp: st for fp, st in states.items()
            if st["active"] or st["flapping"] or now_ms - st["last"] < keep_ms}


OFFSET = "_offset"  # reserved key in a device's states: the last source offset folded in (restart safety)


def fold(states: dict, alarm: Mapping, offset: int, config: DedupConfig, scorer) -> list[dict] | None:
    """Fold one raw alarm into its device's fingerprint states (updated in place).

    Returns the clean alarms to announce, or None when ``offset`` was folded in already
    (a replay after a restart). Flapping alarms of the device that have gone quiet are
    announced in their final state on the way (``settle``).
    """
    if offset <= states.get(OFFSET, -1):
        return None
    out = []
    fp = fingerprint(alarm, config)
    for other, st in list(states.items()):
        if other != OFFSET and other != fp and st["flapping"]:
            states[other], settled = settle(st, alarm["ts_ms"], config)
            if settled:  # dated when it became stable, not now: it says nothing about the present
                stable_at = max(st["changes"], default=alarm["ts_ms"]) + config.flap_window_ms
                held = {**st["alarm"], "ts_ms": min(alarm["ts_ms"], stable_at)}
                out.append(clean_alarm(held, other, states[other], settled, scorer))
    state, decision = decide(states.get(fp), alarm, fp, config)
    states[fp] = state
    if decision.emit:
        out.append(clean_alarm(alarm, fp, state, decision, scorer))
    states[OFFSET] = offset
    return out


def refuse(states: Mapping[str, dict], alarm: Mapping, bounds: EventTimeBounds, now_ms: int | None) -> str | None:
    """Why an alarm's time must not drive its device's states (windows, flap history, settling), or None.

    The device's latest alarm time is its reference; before any, the clock and the epoch.

    >>> b = EventTimeBounds(3_600_000, 86_400_000)
    >>> refuse({"fp": {**new_state(0), "last": 10 * 86_400_000}}, {"ts_ms": 0}, b, None)
    'event time 1970-01-01T00:00:00Z is 240 h behind its stream (watermark 1970-01-11T00:00:00Z, limit 24 h)'
    """
    latest = max((st["last"] for fp, st in states.items() if fp != OFFSET), default=None)
    return bounds.check(alarm["ts_ms"], latest, latest, now_ms)


def compact(states: Mapping[str, dict], config: DedupConfig) -> dict:
    """What to store for a device: its live fingerprint states (``prune``d on its latest time) and offset."""
    fps = {fp: st for fp, st in states.items() if fp != OFFSET}
    now = max((st["last"] for st in fps.values()), default=0)
    return {**prune(fps, now, config), OFFSET: states.get(OFFSET, -1)}
