"""`opsloop eval alarms`: the alarm filter on a labelled storm corpus generated on a site topology.

Metrics (ground truth from models/storm.py):

* compression: 1 - incidents / raw alarms (and raw alarms per incident); every raw event
  counts (raises, repeats, duplicates, flaps, clears), every incident counts (background ones too)
* incident recall: share of injected failures with one incident that holds at least half of
  the failure's distinct alarms
* root-cause accuracy: share of injected failures whose incident (the one holding most of its
  alarms) names the injected root device
* p99 processing latency per alarm: dedup + noise score + correlation + the incident update
  it causes, measured in process around each raw alarm (``make bench`` measures it through Kafka)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from opsloop.models.alarm_filter import AlarmFilter
from opsloop.ops.evals.storm import Storm, generate_storm
from opsloop.config.site import load_site
from opsloop.models.topology import Topology
from opsloop.config.settings import Settings

TARGETS = {"compression": 0.95, "incident_recall": 1.0, "root_cause_accuracy": 0.90}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topology", type=Path, help="site file with a topology: block (default: OPSLOOP_TOPOLOGY)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--failures", type=int, default=8, help="root failures to inject")
    parser.add_argument("--background", type=int,
                        help="unrelated background alarms (default: 1 per 100 elements and hour, at least 5)")
    parser.add_argument("--hours", type=float, default=3.0, help="corpus time span")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def evaluate(storm: Storm, alarm_filter: AlarmFilter) -> dict:
    latencies, records, placed = [], {}, []
    for alarm, cause in storm.alarms:
        t0 = time.perf_counter()
        alarm_filter.process(alarm)
        updates = alarm_filter.flush()
        latencies.append(time.perf_counter() - t0)
        for record in updates:
            records[record["incident_id"]] = record
        if cause is not None:  # where this raw alarm sits now (an incident, or none for a stray clear)
            placed.append((cause, alarm_filter.incident_of(alarm)))
    merged = {i: r["merged_into"] for i, r in records.items() if r.get("merged_into")}
    incidents = {i: r for i, r in records.items() if i not in merged}

    def final(inc_id: str | None) -> str | None:
        while inc_id in merged:
            inc_id = merged[inc_id]
        return inc_id

    by_failure: dict[int, dict[str, int]] = {}
    for cause, inc_id in placed:
        counts = by_failure.setdefault(cause, {})
        if (inc_id := final(inc_id)) is not None:
            counts[inc_id] = counts.get(inc_id, 0) + 1
    recalled = correct = 0
    per_failure = []
    for failure in storm.failures:
        counts = by_failure.get(failure.index, {})
        best = max(counts, key=counts.get) if counts else None
        found = best is not None and counts[best] * 2 >= sum(counts.values())
        right = found and incidents[best]["root_device"] == failure.root
        recalled += found
        correct += right
        per_failure.append({"kind": failure.kind, "root": failure.root, "alarms": sum(counts.values()),
                            "incidents": len(counts), "recalled": found,
                            "found_root": incidents[best]["root_device"] if best else None, "root_correct": right})
    raw, n_inc = len(storm.alarms), len(incidents)
    latencies.sort()
    n_fail = max(1, len(storm.failures))
    return {
        "site": storm.site, "raw_alarms": raw, "incidents": n_inc,
        "failure_incidents": len({i for counts in by_failure.values() for i in counts}),
        "compression": 1 - n_inc / raw if raw else 0.0, "alarms_per_incident": raw / n_inc if n_inc else 0.0,
        "incident_recall": recalled / n_fail, "root_cause_accuracy": correct / n_fail,
        "p99_latency_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else 0.0,
        "failures": per_failure,
    }


def default_background(elements: int, hours: float) -> int:
    """Unrelated alarms scale with the equipment that can raise them: 1 per 100 elements and hour."""
    return max(5, round(elements * hours / 100))


def main(args, settings: Settings | None = None) -> int:
    settings = settings or getattr(args, "settings", None) or Settings.from_env()
    topology = Topology.from_site(load_site(args.topology or settings.topology))
    background = args.background if args.background is not None else default_background(len(topology), args.hours)
    storm = generate_storm(topology, seed=args.seed, failures=args.failures, background=background,
                           horizon_s=int(args.hours * 3600))
    result = evaluate(storm, AlarmFilter({topology.site: topology}))
    result.update(topology=str(args.topology or settings.topology), seed=args.seed, elements=len(topology),
                  background_alarms=background)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"alarm filter on a storm corpus: site {result['site']} ({len(topology):,} elements), seed {args.seed}, "
          f"{len(storm.failures)} injected failures, {background} background alarms over {args.hours:g} h")
    print(f"  raw alarms          {result['raw_alarms']:>8,}")
    print(f"  incidents           {result['incidents']:>8,}  ({result['failure_incidents']} hold failure alarms)")
    print(f"  compression         {result['compression']:>8.1%}  ({result['alarms_per_incident']:.1f} raw alarms "
          f"per incident; target >= {TARGETS['compression']:.0%})")
    print(f"  incident recall     {result['incident_recall']:>8.1%}  (target {TARGETS['incident_recall']:.0%})")
    print(f"  root-cause accuracy {result['root_cause_accuracy']:>8.1%}  (target >= {TARGETS['root_cause_accuracy']:.0%})")
    print(f"  p99 latency/alarm   {result['p99_latency_ms']:>8.3f} ms  (in process: dedup + score + correlate + update)")
    for f in result["failures"]:
        mark = "ok " if f["recalled"] and f["root_correct"] else "MISS"
        print(f"    {mark} {f['kind']:<8} root {f['root']:<18} {f['alarms']:>4} alarms in {f['incidents']} incident(s), "
              f"found root {f['found_root']}")
    return 0
