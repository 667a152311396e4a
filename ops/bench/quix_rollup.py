"""The rollup written in Quix Streams, the scale bench's peer: run by ``ops/bench/peers.py`` in a venv of its own.

Quix Streams 3.28 needs confluent-kafka < 2.13 and opsloop pins a later one, so this file imports
nothing of opsloop: it runs as a script in an isolated venv (``peers.quix_python``) and reads what it
needs from its arguments. The rollup is the same as streams/rollup.py's, in Quix's own idiom:
``telemetry.raw`` is keyed by site, so its keys are the windows' keys (no ``group_by``); event time
comes from the point (``timestamp_extractor``); a 60 s tumbling window per site reduces the points to
a sum and count per (metric, device), the samples and the devices; closed windows (``final()``) go to
an output topic as JSON. The window grace is an argument: Quix closes a window on the highest event
time seen per key, and its consumer hands out the lowest partition first, so a replay needs a grace
as long as the replay (the bench gives 3600 s) or most points are dropped as late.

It prints one JSON line: points folded, late points, and the wall and CPU time (the whole process,
every thread) of its first and last fold, as the bench's rollup processes report theirs.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time

HEADER = 10  # single-object encoding: C3 01 and the writer schema's 8-byte fingerprint


def main(argv: list[str] | None = None) -> int:
    import fastavro
    from quixstreams import Application
    from quixstreams.models.serializers import Deserializer

    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--broker", required=True)
    a.add_argument("--topic", required=True)
    a.add_argument("--output", required=True)
    a.add_argument("--schema", required=True, help="TelemetryPoint.avsc")
    a.add_argument("--points", type=int, required=True, help="stop once this many are folded in")
    a.add_argument("--grace-s", type=float, default=3600.0)
    a.add_argument("--window-s", type=float, default=60.0)
    a.add_argument("--group", required=True)
    args = a.parse_args(argv)

    with open(args.schema, encoding="utf-8") as f:
        schema = fastavro.parse_schema(json.load(f))
    fingerprint = None

    class PointDeserializer(Deserializer):
        """Avro single-object records of the current TelemetryPoint (the one writer schema of the bench's data)."""

        def __call__(self, value: bytes, ctx):
            nonlocal fingerprint
            fingerprint = fingerprint or value[:HEADER]
            if value[:HEADER] != fingerprint:
                raise ValueError("another writer schema")
            return fastavro.schemaless_reader(io.BytesIO(value[HEADER:]), schema, None)

    marks = {"points": 0, "late": 0, "first": None, "last": None}

    def counted() -> None:
        marks["points"] += 1
        if marks["first"] is None:
            marks["first"] = (time.time(), time.process_time())
        done()

    def done() -> None:  # every point folded in or dropped as late
        if marks["points"] + marks["late"] >= args.points and marks["last"] is None:
            marks["last"] = (time.time(), time.process_time())
            app.stop()

    def initializer(point: dict) -> dict:
        counted()
        return {"samples": 1, "sums": {f"{point['metric']}|{point['device']}": [point["value"], 1]}}

    def reducer(window: dict, point: dict) -> dict:
        counted()
        window["samples"] += 1
        acc = window["sums"].setdefault(f"{point['metric']}|{point['device']}", [0.0, 0])
        acc[0] += point["value"]
        acc[1] += 1
        return window

    def late(*_args, **_kwargs) -> bool:
        marks["late"] += 1
        done()
        return False  # counted, not logged

    with tempfile.TemporaryDirectory(prefix="quix-rollup-") as state:
        app = Application(broker_address=args.broker, consumer_group=args.group, auto_offset_reset="earliest",
                          state_dir=state, loglevel="WARNING")
        source = app.topic(args.topic, key_deserializer="bytes", value_deserializer=PointDeserializer(),
                           timestamp_extractor=lambda value, headers, ts, ts_type: value["ts_ms"])
        output = app.topic(args.output, value_serializer="json")
        sdf = app.dataframe(source)
        sdf = (sdf.tumbling_window(duration_ms=int(args.window_s * 1000), grace_ms=int(args.grace_s * 1000),
                                   on_late=late)
               .reduce(reducer=reducer, initializer=initializer).final())
        sdf.to_topic(output)
        app.run()
    first, last = marks["first"] or (0.0, 0.0), marks["last"] or (time.time(), time.process_time())
    print(json.dumps({"points": marks["points"], "late": marks["late"], "wall_s": last[0] - first[0],
                      "cpu_s": last[1] - first[1], "first": first[0], "last": last[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
