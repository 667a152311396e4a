"""The whole alarm filter in one process: dedup, noise score, correlation (for evals and tests).

The agents run the same steps on Kafka (streams/dedup.py, streams/correlate.py); this
wires the pure models together without a broker, so a corpus can be scored quickly.

>>> from opsloop.models.topology import Topology
>>> topo = Topology.from_dict("s", {"power": [{"id": "ups-1", "type": "ups"}]})
>>> f = AlarmFilter({"s": topo})
>>> alarm = {"ts_ms": 0, "site": "s", "device": "ups-1", "device_type": "ups", "source": "bms",
...          "code": "PWR_UPS_FAULT", "severity": "critical", "state": "raise", "text": "", "attributes": {}}
>>> [c["decision_reason"] for c in f.process(alarm)], [i["root_device"] for i in f.flush()]
(['first raise'], ['ups-1'])
>>> f.process({**alarm, "ts_ms": 1_000}), f.flush()
([], [])
"""

from __future__ import annotations

from typing import Mapping

from opsloop.models.correlate import CorrelateConfig, SiteCorrelator
from opsloop.models.dedup import DedupConfig, fingerprint, fold
from opsloop.models.noise import NoiseScorer
from opsloop.models.topology import Topology


class AlarmFilter:
    def __init__(self, topologies: Mapping[str, Topology], dedup: DedupConfig = DedupConfig(),
                 correlate: CorrelateConfig = CorrelateConfig(), scorer: NoiseScorer | None = None):
        self.topologies = topologies
        self.dedup_config = dedup
        self.correlate_config = correlate
        self.scorer = scorer or NoiseScorer()
        self.states: dict[tuple[str, str], dict] = {}  # (site, device) → its fingerprint states
        self.seen = 0  # stands in for the source offset
        self.correlators: dict[str, SiteCorrelator] = {}

    def process(self, alarm: Mapping) -> list[dict]:
        """Fold one raw alarm in; returns the clean alarms it announces (none for a folded duplicate)."""
        self.seen += 1
        states = self.states.setdefault((alarm["site"], alarm["device"]), {})
        announced = fold(states, alarm, self.seen, self.dedup_config, self.scorer) or []
        site = alarm["site"]
        corr = self.correlators.get(site)
        if corr is None:
            corr = self.correlators[site] = SiteCorrelator(site, self.topologies.get(site), self.correlate_config)
        for clean in announced:
            corr.on_alarm(clean)
        corr.expire(alarm["ts_ms"])
        return announced

    def incident_of(self, alarm: Mapping) -> str | None:
        """The open incident that holds this alarm's fingerprint now, if any."""
        corr = self.correlators.get(alarm["site"])
        return corr.by_fp.get(fingerprint(alarm, self.dedup_config)) if corr else None

    def flush(self) -> list[dict]:
        """Incident records changed since the last flush, over all sites."""
        return [record for corr in self.correlators.values() for record in corr.flush()]
