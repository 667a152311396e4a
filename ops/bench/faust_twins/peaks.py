"""Peaks agent: ``telemetry.site`` -> ``forecasts.peak`` and ``actions.proposed`` (Faust).

The worker runs the batch processor (streams/peaks_processor.py); this Faust version is
kept so that ``opsloop bench`` measures the two side by side (the difference is the reason).

Thin: decodes snapshots, hands them to the site's ``models.peak_loop.SitePeakLoop``
and publishes what it decides. Each site's loop (forecaster, billing month, open
step) is the value of a Faust table keyed by site, written once per batch per
site, so a restarted worker recovers it from the changelog; snapshots it has
already folded in are ignored, and re-sent decisions carry the same action ids.
Batches with ``take_events`` (see ../shared notes on Faust costs: per-event
delivery dominates). Undecodable snapshots, sites the topology does not
describe and snapshots the loop rejects go to ``deadletter``.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import weakref
from typing import Callable

import faust
from faust.streams import _current_event

from opsloop.config.catalog import load_catalog
from opsloop.config.settings import Settings
from opsloop.config.site import load_site
from opsloop.models.records import dead_letter
from opsloop.schemas.codec import Codec, DecodeError
from opsloop.streams.app import catalog_topic, decode_or_dead_letter, send_record
from opsloop.streams.peaks import invalid as _invalid

log = logging.getLogger("opsloop.peaks")
AGENT = "peaks"


def register(app: faust.App, settings: Settings, observer: Callable[[list, int], None] | None = None) -> None:
    """Define the peaks agent on ``app``; ``observer(decisions, events)`` (tests, bench) sees every batch."""
    from opsloop.models.peak_loop import LoopConfig, SitePeakLoop

    config = LoopConfig.from_site(load_site(settings.topology), step_s=settings.peaks_step_s)
    codec = Codec.default()
    catalog = load_catalog(settings.topics_file)
    partitions, forecast_spec, proposed_spec = (catalog["telemetry.site"].partitions, catalog["forecasts.peak"],
                                                catalog["actions.proposed"])
    forecasts = catalog_topic(app, settings, "forecasts.peak")
    proposed = catalog_topic(app, settings, "actions.proposed")
    state = app.Table(f"{AGENT}-state", default=None, key_type=bytes, value_type=bytes, partitions=partitions)
    loops: dict[str, SitePeakLoop] = {}  # unpickled table values of the partitions this worker owns

    @app.on_partitions_revoked.connect
    async def forget(app, revoked, **kwargs) -> None:  # another worker may change them now
        loops.clear()

    def loop_for(site: str) -> SitePeakLoop:
        if site not in loops:
            stored = state.get(site.encode())
            loops[site] = pickle.loads(stored) if stored else SitePeakLoop(config)
            log.info("%s: site %s %s", AGENT, site, "state recovered" if stored else "starts fresh")
        return loops[site]

    @app.agent(catalog_topic(app, settings, "telemetry.site"), name=AGENT)
    async def peaks(stream):
        async for events in stream.take_events(1000, within=0.05):
            touched, sends, decided = {}, [], []
            for event in events:
                try:
                    snap = codec.decode_as("SiteSnapshot", event.value)
                except DecodeError:  # decoded again there, and kept in deadletter with the reason
                    await decode_or_dead_letter(app, event, "SiteSnapshot", AGENT, codec)
                    continue
                problem = _invalid(snap, config.site)
                if problem:
                    await _dead_letter(app, settings, codec, event, "invalid", problem)
                    continue
                loop = loop_for(snap["site"])
                for decision in loop.on_snapshot(snap):
                    sends.append(forecasts.send(key=forecast_spec.key_of(decision.forecast),
                                                value=codec.encode(forecast_spec.record, decision.forecast)))
                    for action in decision.actions:
                        sends.append(proposed.send(key=proposed_spec.key_of(action),
                                                   value=codec.encode(proposed_spec.record, action)))
                    decided.append(decision)
                touched[snap["site"]] = event
            await asyncio.gather(*sends)
            for site, event in touched.items():
                _current_event.set(weakref.ref(event))  # the changelog partition is this event's partition
                state[site.encode()] = pickle.dumps(loops[site], protocol=pickle.HIGHEST_PROTOCOL)
            if touched:  # the state reaches its changelog before this batch's offsets can be committed
                await app.producer.flush()
            if observer is not None:
                observer(decided, len(events))


async def _dead_letter(app: faust.App, settings: Settings, codec: Codec, event, kind: str, error: str) -> None:
    msg = event.message
    dead = dead_letter(msg.topic, msg.partition, msg.offset, msg.key, msg.value, kind, error, AGENT,
                       int(msg.timestamp * 1000) if msg.timestamp else None)
    await send_record(app, "deadletter", dead, codec)
    log.warning("%s: dead-lettered %s[%s]@%s: %s", AGENT, msg.topic, msg.partition, msg.offset, error)
