"""The dedup agent as a Faust agent: ``alarms.raw`` → ``alarms.clean`` (logic in models/dedup.py).

Per batch of up to ``BATCH`` events: decode (bad input → ``deadletter``), fold each alarm
into its device's fingerprint states (dedup, flap detection, noise score), then write each
touched device's states to the ``alarm-dedup`` table once and send the clean alarms together
(the Faust notes: per-event table writes and awaited sends cost most).

Restart safety: the table (changelog-backed, keyed like ``alarms.raw``, by device) also
stores the last offset folded in per key, so events replayed after a crash are recognised
and not counted twice. The noise model learns every operator label (connectors/feedback.py).
The worker runs the batch-processor twin (streams/dedup_processor.py) by default; see there why.
"""

from __future__ import annotations

import asyncio
import json

from opsloop.connectors.feedback import LabelFollower
from opsloop.models.dedup import DedupConfig, compact, fingerprint_fields, fold
from opsloop.models.noise import NoiseScorer
from opsloop.config.catalog import load_catalog
from opsloop.config.settings import Settings
from opsloop.schemas.codec import Codec
from opsloop.streams.app import catalog_topic, decode_or_dead_letter
from opsloop.ops.bench.faust_twins.tables import put

BATCH, WITHIN_S = 1000, 0.01


def register(app, settings: Settings, config: DedupConfig = DedupConfig(), scorer: NoiseScorer | None = None) -> None:
    codec = Codec.default()
    scorer = scorer or NoiseScorer()
    catalog = load_catalog(settings.topics_file)
    partitions, clean_spec = catalog["alarms.raw"].partitions, catalog["alarms.clean"]
    # values: a device's fingerprint states as JSON bytes (a consistent snapshot for the changelog)
    table = app.Table("alarm-dedup", default=None, partitions=partitions, key_type=bytes, value_type=bytes)
    clean_topic = catalog_topic(app, settings, "alarms.clean")
    stats = app.__dict__.setdefault("opsloop_stats", {})  # counters for the bench and tests
    stats.update(raw=0, clean=0, replayed=0, labels=0)

    @app.agent(catalog_topic(app, settings, "alarms.raw"), name="dedup")
    async def dedup(stream):
        follower = LabelFollower(settings)
        try:
            async for events in stream.take_events(BATCH, within=WITHIN_S):
                for fp, is_noise in follower.poll():
                    scorer.learn_one(fingerprint_fields(fp, config), is_noise)
                    stats["labels"] += 1
                touched: dict[bytes, tuple[dict, int]] = {}
                out = []
                for event in events:
                    alarm = await decode_or_dead_letter(app, event, "Alarm", "dedup", codec)
                    if alarm is None:
                        continue
                    key = event.key or alarm["device"].encode()
                    states = touched[key][0] if key in touched else json.loads(table.get(key) or b"{}")
                    announced = fold(states, alarm, event.message.offset, config, scorer)
                    if announced is None:
                        stats["replayed"] += 1  # folded in before a restart
                        continue
                    stats["raw"] += 1
                    out += announced
                    touched[key] = (states, event.message.partition)
                for key, (states, partition) in touched.items():
                    put(table, key, json.dumps(compact(states, config), separators=(",", ":")).encode(), partition)
                stats["clean"] += len(out)
                await asyncio.gather(*(clean_topic.send(key=clean_spec.key_of(c),
                                                        value=codec.encode(clean_spec.record, c)) for c in out))
        finally:
            follower.close()
