"""A labelled alarm-storm corpus: root failures injected into any site topology, with ground truth.

Each failure (power, cooling, network or GPU) starts at one element and spreads down its
chain: an element fails when all its parents in that chain have failed, and an element
that keeps a healthy parent raises a redundancy-lost alarm instead and stops the spread.
Timing follows how monitoring reports: a few seconds per hop for power and network
(polling), tens of seconds to minutes for cooling (thermal inertia); the root's own
alarm is sometimes late (a lost trap, caught at the next poll). On top come what real
storms have: pollers repeating active alarms, duplicate deliveries, flapping alarms,
sources that never send a clear, elements that do not report, and unrelated background
alarms on random devices. Everything is drawn from one ``random.Random(seed)``.

>>> from opsloop.models.topology import Topology
>>> topo = Topology.from_dict("s", {"power": [{"id": "ups-1", "type": "ups"},
...     {"id": "pdu-1", "type": "pdu", "fed_by": "ups-1"}], "racks": [{"id": "r1", "pdu": "pdu-1", "nodes": 4}]})
>>> storm = generate_storm(topo, seed=1, failures=1, kinds=("power",), background=0)
>>> storm.failures[0].kind, storm.failures[0].root in ("ups-1", "pdu-1")
('power', True)
>>> all(cause == 0 for _, cause in storm.alarms) and storm.alarms == sorted(storm.alarms, key=lambda a: a[0]["ts_ms"])
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from opsloop.models import records
from opsloop.models.topology import Topology

KINDS = ("power", "cooling", "network", "gpu")
# Two failures touching the same equipment less than this apart cannot be told apart by any
# correlator (an alarm without a clear keeps an incident open until it times out, 30 min by
# default), so the ground truth keeps them this far apart.
SEPARATION_MS = 40 * 60_000
LEAF_TYPES = ("rack", "gpu")
ROOT_CODES = {
    "utility": "PWR_UTILITY_LOSS", "switchgear": "PWR_BREAKER_TRIP", "ups": "PWR_UPS_FAULT",
    "pdu": "PWR_PDU_BREAKER_TRIP", "chiller": "COOL_CHILLER_TRIP", "crah": "COOL_CRAH_FAN_FAIL",
    "zone": "TEMP_ZONE_CONTAINMENT_BREACH", "switch": "NET_SWITCH_DOWN", "gpu": "GPU_XID_79_FELL_OFF_BUS",
}
ROOT_FALLBACK = {"power": "PWR_FAULT", "cooling": "COOL_FAULT", "network": "NET_DEVICE_DOWN", "gpu": "GPU_FAULT"}
# (chain, type of the element hit) → code; "*" = any other type
CASCADE_CODES = {
    ("power", "rack"): "PWR_RACK_FEED_LOST", ("power", "gpu"): "PWR_GPU_POWER_LOST", ("power", "*"): "PWR_INPUT_LOSS",
    ("cooling", "crah"): "COOL_SUPPLY_TEMP_HIGH", ("cooling", "zone"): "TEMP_ZONE_HIGH",
    ("cooling", "rack"): "TEMP_INLET_HIGH", ("cooling", "gpu"): "TEMP_GPU_THROTTLE", ("cooling", "*"): "TEMP_NODE_HIGH",
    ("network", "switch"): "NET_UPLINK_DOWN", ("network", "*"): "NET_LINK_DOWN",
    ("gpu", "*"): "GPU_JOB_FAILED",
}
DEGRADED_CODES = {"power": "PWR_REDUNDANCY_LOST", "cooling": "TEMP_REDUNDANCY_LOST",
                  "network": "NET_PATH_REDUNDANCY_LOST", "gpu": "GPU_NODE_DEGRADED"}
SOURCES = {"power": "bms", "cooling": "bms", "network": "netmon", "gpu": "dcgm"}
BACKGROUND_CODES = {
    "rack": ("TEMP_INLET_WARN", "cooling"), "gpu": ("GPU_ECC_SBE_RATE", "gpu"), "pdu": ("PWR_PHASE_IMBALANCE", "power"),
    "crah": ("COOL_FILTER_DIRTY", "cooling"), "ups": ("PWR_BATTERY_TEST_DUE", "power"),
    "switch": ("NET_CRC_ERRORS", "network"), "*": ("NET_LINK_FLAP", "network"),
}
# chance that an element of this type reports an alarm when hit, per chain
REPORT_CHANCE = {("power", "gpu"): 0.1, ("network", "gpu"): 0.0, ("cooling", "gpu"): 0.5}


@dataclass(frozen=True)
class Failure:
    index: int
    kind: str
    root: str
    root_type: str
    root_code: str
    start_ms: int
    end_ms: int
    affected: frozenset[str]


@dataclass
class Storm:
    site: str
    failures: list[Failure] = field(default_factory=list)
    alarms: list[tuple[dict, int | None]] = field(default_factory=list)  # (raw alarm, failure index or None)


def generate_storm(topology: Topology, seed: int = 0, failures: int = 6, horizon_s: int = 3 * 3600,
                   background: int = 30, start_ms: int = 1_780_000_000_000,
                   kinds: tuple[str, ...] = KINDS) -> Storm:
    rng = random.Random(seed)
    storm = Storm(topology.site)
    candidates = {kind: _root_candidates(topology, kind) for kind in kinds}
    kinds = tuple(k for k in kinds if candidates[k]) or ()
    for index in range(failures if kinds else 0):
        kind = kinds[index % len(kinds)]
        for _ in range(50):  # failures on shared equipment closer in time than this are one incident to anyone
            root = rng.choice(candidates[kind])
            start = start_ms + int(rng.uniform(0, horizon_s) * 1000)
            end = start + int(rng.uniform(5, 30) * 60_000)
            hit, degraded = _cascade(topology, root, kind)
            if not any(f.affected & (hit | degraded) and start < f.end_ms + SEPARATION_MS
                       and f.start_ms < end + SEPARATION_MS for f in storm.failures):
                break
        else:
            continue  # no room left on this topology and horizon: fewer failures rather than ambiguous ones
        root_code = ROOT_CODES.get(topology.type_of(root), ROOT_FALLBACK[kind])
        failure = Failure(len(storm.failures), kind, root, topology.type_of(root), root_code, start, end,
                          frozenset(hit | degraded))
        storm.failures.append(failure)
        _emit_failure(rng, topology, storm, failure, hit, degraded)
    elements = topology.elements()
    for _ in range(background if elements else 0):
        device = rng.choice(elements)
        kind = topology.type_of(device)
        code, chain = BACKGROUND_CODES.get(kind, BACKGROUND_CODES["*"])
        t = start_ms + int(rng.uniform(0, horizon_s) * 1000)
        alarm = _alarm(topology, device, code, SOURCES[chain], rng.choice(("warning", "info", "minor")), t)
        _emit_episode(rng, storm, alarm, None, t, t + int(rng.uniform(60, 1200) * 1000),
                      flap_chance=0.3, repeat_chance=0.5)
    storm.alarms.sort(key=lambda pair: pair[0]["ts_ms"])
    return storm


def _root_candidates(topology: Topology, kind: str) -> list[str]:
    if kind == "gpu":
        return topology.elements("gpu")
    return [e for e in topology.elements() if topology.home_chain.get(e) == kind and topology.children_of(e, kind)]


def _cascade(topology: Topology, root: str, chain: str) -> tuple[set[str], set[str]]:
    """Elements that fail with ``root`` (all their parents in the chain failed) and those left degraded."""
    hit, degraded, frontier = {root}, set(), [root]
    while frontier:
        nxt = []
        for element in frontier:
            for child in topology.children_of(element, chain):
                if child in hit or child in degraded:
                    continue
                if all(p in hit for p in topology.parents_of(child, chain)):
                    hit.add(child)
                    nxt.append(child)
                else:
                    degraded.add(child)
        frontier = nxt
    return hit, degraded


def _emit_failure(rng, topology: Topology, storm: Storm, failure: Failure, hit: set[str], degraded: set[str]) -> None:
    chain = failure.kind
    hop_s = (20, 120) if chain == "cooling" else (1, 15)
    delay = {failure.root: rng.uniform(10, 60) if rng.random() < 0.25 else rng.uniform(0, 5)}
    first_seen = {failure.root: 0.0}
    order = [failure.root]
    for element in order:  # breadth first, so parents get their times before children
        for child in topology.children_of(element, chain):
            if (child in hit or child in degraded) and child not in first_seen:
                first_seen[child] = first_seen[element] + rng.uniform(*hop_s)
                delay[child] = first_seen[child]
                if child in hit:
                    order.append(child)
    source = SOURCES[chain]
    for element in order + sorted(degraded):
        kind = topology.type_of(element)
        if element == failure.root:
            code, severity = failure.root_code, "critical"
        elif element in degraded:
            code, severity = DEGRADED_CODES[chain], "warning"
        else:
            code = CASCADE_CODES.get((chain, kind), CASCADE_CODES[(chain, "*")])
            severity = "major" if topology.home_chain.get(element) or kind == "rack" else "minor"
            if rng.random() >= REPORT_CHANCE.get((chain, kind), 0.9):
                continue  # this element does not report
        t = failure.start_ms + int(delay[element] * 1000)
        end = failure.end_ms + int(rng.uniform(0, 60) * 1000)
        alarm = _alarm(topology, element, code, source, severity, t)
        _emit_episode(rng, storm, alarm, failure.index, t, max(end, t + 1000),
                      flap_chance=0.0 if element == failure.root else 0.08, repeat_chance=0.5)
        if chain == "gpu" and element != failure.root and rng.random() < 0.7:  # the scheduler's view too
            drained = t + int(rng.uniform(5, 60) * 1000)
            _emit_episode(rng, storm, _alarm(topology, element, "GPU_NODE_DRAINED", "slurm", "minor", drained),
                          failure.index, drained, max(end, drained + 1000), flap_chance=0.0, repeat_chance=0.2)


def _emit_episode(rng, storm: Storm, alarm: dict, cause: int | None, t: int, end: int, flap_chance: float,
                  repeat_chance: float) -> None:
    """One alarm's raise, its duplicates and repeats, maybe flapping, and (usually) its clear."""
    events = [(t, "raise")]
    for _ in range(rng.choice((0, 0, 1, 2))):  # the same event delivered again by a second poller
        events.append((t + int(rng.uniform(0, 2000)), "raise"))
    if rng.random() < repeat_chance:  # the source repeats an active alarm every poll
        interval = int(rng.uniform(30, 120) * 1000)
        events += [(r, "raise") for r in range(t + interval, end, interval)]
    if rng.random() < flap_chance:
        flap_t = t + int(rng.uniform(5, 60) * 1000)
        for _ in range(rng.randint(3, 6)):
            flap_t += int(rng.uniform(5, 40) * 1000)
            events.append((flap_t, "clear"))
            flap_t += int(rng.uniform(5, 40) * 1000)
            events.append((flap_t, "raise"))
        end = max(end, flap_t + 1000)
    if rng.random() >= 0.05:  # a few sources never send a clear
        events.append((end, "clear"))
    for ts, state in events:
        storm.alarms.append(({**alarm, "ts_ms": ts, "state": state}, cause))


def _alarm(topology: Topology, device: str, code: str, source: str, severity: str, ts_ms: int) -> dict:
    kind = topology.type_of(device) or "unknown"
    text = f"{code.replace('_', ' ').lower()} on {kind} {device}"
    return records.alarm(ts_ms, topology.site, device, kind, source, code, text, severity=severity)
