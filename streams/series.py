"""A confluent-kafka batch processor with one model per series of ``telemetry.raw`` (the base of anomaly and rul).

The loop of streams/processor.py, with the models of source partition P kept in partition P of a compacted
changelog (connectors/changelog.py; pickled, private to the processor), as streams/keyed.py keeps the alarm
and peaks processors' states. Each series holds the offset after the last point it learnt (``upto``): a
replayed point is skipped (``learnt``). Changed series are written when the loop checkpoints (every
``anomaly_checkpoint_s``, on idle, on revoke and on stop), after the outputs of the points they learnt are
delivered and before the source offsets are committed. An assignment restores its partitions' series, keeping
only those ``current`` says this agent would build today (a model saved under another configuration, an
upgrade, starts afresh and relearns from the committed offset); a revocation commits, then drops them.

A processor with several ``sources`` keeps the series of each in a changelog of its own (the first source's is
``<name>-state``, another's ``<name>-<topic>-state``; none for the ``stateless`` ones): series live per
(physical topic, partition). A stateless source is a hint, and hints are broadcast (streams/hints.py): read whole
by every instance, from ``hint_lookback_s`` before it started, handed to ``handle`` before each batch.

Ordering, honestly: every hint the broker held when the processor started is applied before its first batch.
After that a hint is applied before every batch consumed after the hint reader fetched it; both consumers
fetch with long polls that return within milliseconds of a write, so a hint written a moment before the data it
explains is applied first, but nothing orders two topics: a hint written at the same time as (or after) that
data, or delayed by a broker fault, may come one batch late.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

from opsloop.config.settings import Settings
from opsloop.connectors.changelog import Changelog
from opsloop.models.rollup import value_problem
from opsloop.streams.hints import HintSources
from opsloop.streams.processor import BatchProcessor, Partition


class SeriesProcessor(HintSources, BatchProcessor):
    source = "telemetry.raw"
    commit_stat = "checkpoints"

    def __init__(self, settings: Settings, **kwargs):
        super().__init__(settings, **kwargs)
        self.commit_every_s = settings.anomaly_checkpoint_s
        self.series: dict[Partition, dict[str, Any]] = {}  # (topic, partition) → series key → series (with ``upto``)
        self.dirty: dict[Partition, set[str]] = {}  # (topic, partition) → series changed since the last checkpoint

    # -- subclass hooks -------------------------------------------------------------------

    def current(self, key: str, series: Any) -> bool:
        """A restored series is kept only when it runs the configuration this agent would give it now."""
        return True

    # -- for subclasses -------------------------------------------------------------------

    def learnt(self, partition: int | Partition, key: str, offset: int, new: Callable[[], Any]) -> Any | None:
        """The series ``key`` of ``partition`` (made by ``new()`` if there is none), marked as learning the point at
        ``offset``; None when it learnt that point before a restart (the point is then skipped). ``partition``: a
        (physical topic, partition) pair, or the number of a partition of the first source."""
        partition = partition if isinstance(partition, tuple) else (self.topic, partition)
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

    def refused(self, msg, record: dict, names, bounds, now_ms: int) -> bool:
        """Dead-letter a TelemetryPoint or Alarm a model may not learn: a value not finite or beyond any real
        reading (a point's), an unknown site or device, an event time out of bounds (it would date what the model
        emits); True then."""
        if "value" in record and (problem := value_problem(record)) is not None:  # the rollup's check
            self.dead_letter(msg, "invalid", problem)
            return True
        unknown = names.check(record["site"], record["device"]) if names is not None else None
        if unknown is not None:
            self.dead_letter(msg, "unknown", unknown)
            return True
        refused = bounds.check(record["ts_ms"], None, None, now_ms)
        if refused is not None:
            what = record["metric"] if "metric" in record else record["code"]
            self.dead_letter(msg, "invalid", f"{what} of {record['device']}: {refused}")
            return True
        return False

    # -- the loop's hooks -----------------------------------------------------------------

    def setup(self, cons) -> None:
        self.changelogs: dict[str, Changelog] = {}
        for i, source in enumerate(self.joined_sources()):
            topic = self.settings.topic(source)
            partitions = len(cons.list_topics(topic, timeout=30).topics[topic].partitions)
            name = f"{self.name}-state" if i == 0 else f"{self.name}-{source}-state"
            self.changelogs[topic] = Changelog(self.settings, name, partitions)
        self.start_hints()

    def before_batch(self) -> None:
        """The hints fetched since the last batch, before it is handled (subclasses call this first)."""
        self.poll_hints()

    def close(self) -> None:
        self.close_hints()

    def on_assign(self, cons, partitions) -> None:
        restored, dropped = {}, 0
        for topic, changelog in self.changelogs.items():
            for p, states in changelog.restore([tp.partition for tp in partitions if tp.topic == topic]).items():
                series = {key.decode(): pickle.loads(value) for key, value in states.items()}
                kept = restored[(topic, p)] = {k: s for k, s in series.items() if self.current(k, s)}
                dropped += len(series) - len(kept)
        for partition, kept in restored.items():
            self.series[partition] = kept
            self.dirty[partition] = set()
        self.log.info("%s assigned partitions %s, %d series restored, %d restarted (configuration changed)",
                      self.name, sorted(restored), sum(len(s) for s in restored.values()), dropped)

    def on_revoke(self, cons, partitions) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self.commit(cons, gone)
        for partition in gone:
            self.series.pop(partition, None)
            self.dirty.pop(partition, None)

    def checkpoint(self, partitions) -> None:
        """Write the changed series. The outputs of the points they learnt are delivered by now: a state that says
        "learnt" must never reach the broker before them (a crash would lose them)."""
        for partition in partitions:
            topic, p = partition
            for key in self.dirty.get(partition, ()):
                self.changelogs[topic].write(self.prod, p, key.encode(), pickle.dumps(
                    self.series[partition][key], protocol=pickle.HIGHEST_PROTOCOL), self.errors)
            self.dirty[partition] = set()
