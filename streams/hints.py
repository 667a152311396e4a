"""Hint sources of a batch processor: topics read whole by every instance, beside the ones its group shares out.

A stateless source is a hint (the Slurm queue, the guard's approvals): it is not read through the consumer
group but by a reader of its own (connectors/broadcast.py: all its partitions assigned directly, nothing
committed), so an instance sees every hint whichever partitions of its data it owns, and keeps them across
rebalances. ``start_hints`` (from the processor's ``setup``, before it joins the group) begins
``hint_lookback_s`` back in Kafka's time (its end when 0) and reads to the ends the hint partitions had then;
``poll_hints`` (from ``before_batch``) hands over what the reader has fetched since, without waiting. Hint
messages go to the processor's ``handle`` like the others, but count in no offset. The series agents
(streams/series.py) and the peaks agent (streams/peaks.py) read their hints this way.
"""

from __future__ import annotations

import time

from opsloop.connectors.broadcast import Broadcast, broadcast_group
from opsloop.schemas.codec import DecodeError


class HintSources:
    """Mixed into a ``BatchProcessor``: its ``stateless`` sources are read as broadcast hints."""

    stateless: tuple[str, ...] = ()  # sources read for hints only, whole by every instance: no changelog, no commit
    hint_lookback_s = 0.0  # on start the stateless sources are read from this long ago (wall s; 0: only new ones)
    hint_catch_up_s = 60.0  # the longest the start waits for the hints it found to be read
    hints: Broadcast | None = None  # while running: the reader of every partition of the stateless sources

    def joined_sources(self) -> tuple[str, ...]:
        return tuple(s for s in self.sources if s not in self.stateless)

    def start_hints(self) -> None:
        if not self.stateless:
            return
        since_ms = int((time.time() - self.hint_lookback_s) * 1000)  # Kafka's time: record timestamps
        self.hints = Broadcast(self.settings, [self.settings.topic(s) for s in self.stateless],
                               broadcast_group(self.settings, self.name), since_ms, error_cb=self._client_error)
        self.hints.catch_up(self.handle, self.hint_catch_up_s)
        self.log.info("%s read %d hints of %s from the last %.0f s", self.name, self.hints.read, self.stateless,
                      self.hint_lookback_s)

    def hint(self, msg, record: str) -> dict | None:
        """A hint decoded as ``record``; None, counted in ``hints_refused``, when it cannot be: a hint is skipped, not
        dead-lettered, as every instance reads it and would dead-letter it again at each start."""
        try:
            return self.codec.decode_as(record, msg.value())
        except DecodeError:
            self.stats["hints_refused"] += 1
            return None

    def poll_hints(self) -> None:
        """The hints fetched since the last batch, before it is handled."""
        if self.hints is not None:
            self.hints.poll(self.handle)

    def close_hints(self) -> None:
        if self.hints is not None:
            self.hints, hints = None, self.hints
            hints.close()
