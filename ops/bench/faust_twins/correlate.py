"""The correlate agent as a Faust agent: ``alarms.clean`` → ``incidents`` (logic in models/correlate.py).

The worker runs the batch-processor twin (streams/correlate_processor.py); this one is
measured beside it by ``make bench`` (see streams/dedup_processor.py for why).

``alarms.clean`` is keyed by site, so one site's alarms meet on one partition and in one
``SiteCorrelator``. Per batch, each touched site's state is read from the ``alarm-incidents``
table once (or its live correlator reused while the table holds what it wrote), every
alarm is folded in, timeouts are applied on the
site's event time, and one Incident record per changed incident is sent; the state
(with the last offset folded in, for restart safety) is written back once.

Topologies: every site file in the folder of ``Settings.topology`` that has a
``topology:`` block; a site without one still gets incidents (alarms of the same device
group, nothing upstream is known).
"""

from __future__ import annotations

import asyncio
import json

from opsloop.models.correlate import CorrelateConfig, SiteCorrelator
from opsloop.config.catalog import load_catalog
from opsloop.config.settings import Settings
from opsloop.config.site import load_site, load_sites
from opsloop.models.topology import site_topologies
from opsloop.schemas.codec import Codec
from opsloop.streams.app import catalog_topic, decode_or_dead_letter
from opsloop.ops.bench.faust_twins.tables import put

BATCH, WITHIN_S = 1000, 0.01


def register(app, settings: Settings, config: CorrelateConfig = CorrelateConfig()) -> None:
    codec = Codec.default()
    here = load_site(settings.topology)
    topologies = site_topologies(load_sites(settings.topology.parent, known=[here]).values())
    catalog = load_catalog(settings.topics_file)
    partitions, incident_spec = catalog["alarms.clean"].partitions, catalog["incidents"]
    # values: the site's state as JSON bytes, serialised here so the changelog gets a consistent snapshot
    table = app.Table("alarm-incidents", default=None, partitions=partitions, key_type=bytes, value_type=bytes)
    live: dict[bytes, tuple[bytes, SiteCorrelator]] = {}  # key → (the state last stored, its correlator)
    incidents_topic = catalog_topic(app, settings, "incidents")
    stats = app.__dict__.setdefault("opsloop_stats", {})  # counters for the bench and tests
    stats.update(clean_in=0, incident_updates=0, replayed_clean=0)

    def load(key: bytes, site: str) -> SiteCorrelator:
        """The live correlator while the table still holds what it stored last; else rebuilt from the table
        (after a restart or a rebalance the table's value is another object)."""
        stored = table.get(key)
        if key in live and live[key][0] is stored:
            return live[key][1]
        live.pop(key, None)
        return SiteCorrelator(site, topologies.get(site), config, json.loads(stored) if stored else None)

    @app.agent(catalog_topic(app, settings, "alarms.clean"), name="correlate")
    async def correlate(stream):
        async for events in stream.take_events(BATCH, within=WITHIN_S):
            sites: dict[bytes, tuple[SiteCorrelator, int]] = {}
            for event in events:
                clean = await decode_or_dead_letter(app, event, "CleanAlarm", "correlate", codec)
                if clean is None:
                    continue
                site = clean["alarm"]["site"]
                key = event.key or site.encode()
                if key not in sites:
                    sites[key] = (load(key, site), event.message.partition)
                corr = sites[key][0]
                if event.message.offset <= corr.offset:
                    stats["replayed_clean"] += 1  # folded in before a restart
                    continue
                corr.on_alarm(clean)
                corr.offset = event.message.offset
                stats["clean_in"] += 1
            out = []
            for key, (corr, partition) in sites.items():
                corr.expire()
                out += corr.flush()
                stored = json.dumps(corr.to_state(), separators=(",", ":")).encode()
                put(table, key, stored, partition)
                live[key] = (stored, corr)
            stats["incident_updates"] += len(out)
            await asyncio.gather(*(incidents_topic.send(key=incident_spec.key_of(r),
                                                        value=codec.encode(incident_spec.record, r)) for r in out))
