"""The correlate agent as a confluent-kafka batch processor: ``alarms.clean`` → ``incidents``.

The same model as the Faust agent (streams/correlate.py): one ``SiteCorrelator`` per site
(``alarms.clean`` is keyed by site), kept live between batches and stored in a
changelog-backed state (streams/keyed.py); per batch each touched site applies timeouts and
sends one Incident record per changed incident. See streams/dedup_processor.py for why a processor.
"""

from __future__ import annotations

import json

from typing import Iterable

from opsloop.config.settings import Settings
from opsloop.config.site import Site
from opsloop.models.correlate import CorrelateConfig, SiteCorrelator
from opsloop.models.topology import site_topologies
from opsloop.streams.keyed import KeyedProcessor


class CorrelateProcessor(KeyedProcessor):
    name = "correlate"
    source = "alarms.clean"
    record = "CleanAlarm"

    def __init__(self, settings: Settings, sites: Iterable[Site], config: CorrelateConfig = CorrelateConfig(),
                 **kwargs):
        super().__init__(settings, **kwargs)
        self.config = config
        self.topologies = site_topologies(sites)  # a site without one still gets incidents, per device

    def load_state(self, key: bytes, stored: bytes | None) -> SiteCorrelator:
        site = key.decode()
        return SiteCorrelator(site, self.topologies.get(site), self.config, json.loads(stored) if stored else None)

    def dump_state(self, state: SiteCorrelator) -> bytes:
        return json.dumps(state.to_state(), separators=(",", ":")).encode()

    def refuse(self, state: SiteCorrelator, record: dict) -> str | None:
        return state.refuse(record, self.bounds, self.now_ms())

    def fold(self, state: SiteCorrelator, key: bytes, record: dict, offset: int):
        if offset <= state.offset:
            return None
        state.on_alarm(record)
        state.offset = offset
        return []

    def finish(self, state: SiteCorrelator, key: bytes):
        state.expire()
        return [("incidents", r) for r in state.flush()]
