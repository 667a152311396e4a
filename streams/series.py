"""A confluent-kafka batch processor with one model per series of ``telemetry.raw`` (the base of anomaly and rul).

The loop of streams/processor.py, with the models of source partition P kept in partition P of a compacted
changelog (connectors/changelog.py; pickled, private to the processor), as streams/keyed.py keeps the alarm
and peaks processors' states. Each series holds the offset after the last point it learnt (``upto``): a
replayed point is skipped (``learnt``). Changed series are written when the loop checkpoints (every
``anomaly_checkpoint_s``, on idle, on revoke and on stop), after the outputs of the points they learnt are
delivered and before the source offsets are committed. An assignment restores its partitions' series, keeping
only those ``current`` says this agent would build today (a model saved under another configuration, an
upgrade, starts afresh and relearns from the committed offset); a revocation commits, then drops them.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

from opsloop.config.settings import Settings
from opsloop.connectors.changelog import Changelog
from opsloop.streams.processor import BatchProcessor


class SeriesProcessor(BatchProcessor):
    source = "telemetry.raw"
    commit_stat = "checkpoints"

    def __init__(self, settings: Settings, **kwargs):
        super().__init__(settings, **kwargs)
        self.commit_every_s = settings.anomaly_checkpoint_s
        self.series: dict[int, dict[str, Any]] = {}  # partition → series key → series (with ``upto``)
        self.dirty: dict[int, set[str]] = {}  # partition → series changed since the last checkpoint

    # -- subclass hooks -------------------------------------------------------------------

    def current(self, key: str, series: Any) -> bool:
        """A restored series is kept only when it runs the configuration this agent would give it now."""
        return True

    # -- for subclasses -------------------------------------------------------------------

    def learnt(self, partition: int, key: str, offset: int, new: Callable[[], Any]) -> Any | None:
        """The series ``key`` of ``partition`` (made by ``new()`` if there is none), marked as learning the point at
        ``offset``; None when it learnt that point before a restart (the point is then skipped)."""
        owned = self.series.setdefault(partition, {})
        series = owned.get(key)
        if series is None:
            series = owned[key] = new()
        elif offset < series.upto:
            self.stats["replayed_skipped"] += 1
            return None
        series.upto = offset + 1
        self.dirty.setdefault(partition, set()).add(key)
        return series

    # -- the loop's hooks -----------------------------------------------------------------

    def setup(self, cons) -> None:
        partitions = len(cons.list_topics(self.topic, timeout=30).topics[self.topic].partitions)
        self.changelog = Changelog(self.settings, f"{self.name}-state", partitions)

    def on_assign(self, cons, partitions) -> None:
        restored = self.changelog.restore([p.partition for p in partitions])
        dropped = 0
        for p, states in restored.items():
            series = {key.decode(): pickle.loads(value) for key, value in states.items()}
            self.series[p] = {k: s for k, s in series.items() if self.current(k, s)}
            dropped += len(series) - len(self.series[p])
            self.dirty[p] = set()
        self.log.info("%s assigned partitions %s of %s, %d series restored, %d restarted (configuration changed)",
                      self.name, sorted(restored), self.topic, sum(len(self.series[p]) for p in restored), dropped)

    def on_revoke(self, cons, partitions) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self.commit(cons, gone)
        for _, p in gone:
            self.series.pop(p, None)
            self.dirty.pop(p, None)

    def checkpoint(self, partitions) -> None:
        """Write the changed series. The outputs of the points they learnt are delivered by now: a state that says
        "learnt" must never reach the broker before them (a crash would lose them)."""
        for _, p in partitions:
            for key in self.dirty.get(p, ()):
                self.changelog.write(self.prod, p, key.encode(),
                                     pickle.dumps(self.series[p][key], protocol=pickle.HIGHEST_PROTOCOL), self.errors)
            self.dirty[p] = set()
