"""What every live source kind hands to the source loop: ``Readings`` from one poll (or one received
request), and the two shapes a kind takes.

- A ``Poller`` is asked to read its system every ``interval_s`` (a scrape, a Modbus or SNMP poll,
  the Slurm queue, sysfs). It raises ``SourceUnavailable`` when the system could not be read at
  all (refused, timed out, a protocol error for the whole poll): the loop backs off, counts it
  and, after ``fail_after`` in a row, raises the monitoring-loss alarm.
- A ``Receiver`` is pushed to (remote-write, SNMP traps, a followed log): it serves until ``stop``
  and hands each request's readings to ``deliver``, which returns False when the buffer is full,
  so the receiver can push back (HTTP 503) instead of dropping.

Bad readings are ``Reject``s, never exceptions: each goes to ``deadletter`` with its raw bytes and
the reason, and the rest of the poll goes on.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol


class SourceUnavailable(Exception):
    """The source's system could not be read this time; the message says why in plain words."""


@dataclass(frozen=True)
class Reject:
    """One bad reading: ``kind`` is a DeadLetterKind (decode, invalid or unknown)."""

    raw: bytes
    kind: str
    reason: str


@dataclass
class Readings:
    points: list[dict] = field(default_factory=list)  # TelemetryPoint records
    alarms: list[dict] = field(default_factory=list)  # Alarm records
    rejects: list[Reject] = field(default_factory=list)
    records: list[tuple[str, dict]] = field(default_factory=list)  # (catalog topic, record): a kind's own topic

    def newest_ms(self) -> int | None:
        times = [p["ts_ms"] for p in self.points] + [a["ts_ms"] for a in self.alarms]
        return max(times) if times else None

    def extend(self, other: "Readings") -> None:
        self.points += other.points
        self.alarms += other.alarms
        self.rejects += other.rejects
        self.records += other.records


class Poller(Protocol):
    def poll(self, now_ms: int) -> Readings: ...

    def close(self) -> None: ...


Deliver = Callable[[Readings], bool]


class Receiver(Protocol):
    def serve(self, deliver: Deliver, stop: threading.Event) -> None: ...
