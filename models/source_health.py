"""A live source's health: when it last read its system, how far behind it is, what failed, and the
monitoring-loss alarm that follows from it. Pure: the loop tells it what happened and when.

After ``fail_after`` failed polls in a row the source raises ``COLLECTOR_DOWN`` (SOP-MON-001,
"Monitoring data loss"), once; the first good poll after it clears it. Points dropped because
the buffer was full raise ``TELEMETRY_GAP`` with the count: never silent.

>>> h = SourceHealth("node-1", "prometheus", "demo", fail_after=2)
>>> h.failed(1_000, "connection refused")
[]
>>> [(a["code"], a["state"], a["severity"]) for a in h.failed(2_000, "connection refused")]
[('COLLECTOR_DOWN', 'raise', 'major')]
>>> h.failed(3_000, "connection refused")  # raised once, not at every poll
[]
>>> [(a["code"], a["state"]) for a in h.succeeded(4_000, points=10, newest_ms=3_500)]
[('COLLECTOR_DOWN', 'clear')]
>>> r = h.record(4_000)
>>> r["status"], r["failures"], r["consecutive_failures"], r["lag_ms"]
('ok', 3, 0, 500)
>>> backoff_s(1, 5.0, 60.0), backoff_s(3, 5.0, 60.0), backoff_s(10, 5.0, 60.0)
(5.0, 20.0, 60.0)
"""

from __future__ import annotations

from opsloop.models.records import alarm

DOWN_CODE = "COLLECTOR_DOWN"  # SOP-MON-001
GAP_CODE = "TELEMETRY_GAP"  # SOP-MON-001: points dropped by a full buffer


def backoff_s(consecutive_failures: int, interval_s: float, max_s: float) -> float:
    """Wait before the next poll: the interval, doubled per failure in a row, capped."""
    if consecutive_failures <= 0:
        return interval_s
    return min(max_s, interval_s * 2 ** (consecutive_failures - 1))


class SourceHealth:
    def __init__(self, name: str, kind: str, site: str, fail_after: int = 3):
        self.name = name
        self.kind = kind
        self.site = site
        self.fail_after = fail_after
        self.polls = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.points = 0
        self.alarms = 0
        self.dead_letters = 0
        self.dropped = 0
        self.last_success_ms: int | None = None
        self.lag_ms: int | None = None  # poll time minus the newest event time it read
        self.last_error: str | None = None
        self.down = False  # the monitoring-loss alarm is raised

    def succeeded(self, now_ms: int, points: int = 0, newest_ms: int | None = None, alarms: int = 0,
                  dead_letters: int = 0) -> list[dict]:
        self.polls += 1
        self.consecutive_failures = 0
        self.points += points
        self.alarms += alarms
        self.dead_letters += dead_letters
        self.last_success_ms = now_ms
        if newest_ms is not None:
            self.lag_ms = max(0, now_ms - newest_ms)
        if not self.down:
            return []
        self.down = False
        return [self._alarm(now_ms, DOWN_CODE, "clear", "minor",
                            f"source {self.name} ({self.kind}) reads again after {self.failures} failed poll(s) "
                            f"in total")]

    def failed(self, now_ms: int, error: str) -> list[dict]:
        self.polls += 1
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = error
        if self.down or self.consecutive_failures < self.fail_after:
            return []
        self.down = True
        since = "never" if self.last_success_ms is None else f"last success at ts_ms {self.last_success_ms}"
        return [self._alarm(now_ms, DOWN_CODE, "raise", "major",
                            f"source {self.name} ({self.kind}) failed {self.consecutive_failures} polls in a row "
                            f"({since}): {error}")]

    def lost(self, now_ms: int, count: int, why: str) -> list[dict]:
        """``count`` points not sent (buffer full, or the producer gave up on them)."""
        self.dropped += count
        return [self._alarm(now_ms, GAP_CODE, "raise", "major",
                            f"source {self.name} ({self.kind}) dropped {count} point(s), {self.dropped} in total: "
                            f"{why}")]

    def record(self, now_ms: int) -> dict:
        """The SourceHealth record of now."""
        status = "down" if self.down else ("degraded" if self.consecutive_failures or self.dropped else "ok")
        return {"ts_ms": now_ms, "site": self.site, "source": self.name, "kind": self.kind, "status": status,
                "last_success_ms": self.last_success_ms, "lag_ms": self.lag_ms, "polls": self.polls,
                "failures": self.failures, "consecutive_failures": self.consecutive_failures,
                "points": self.points, "alarms": self.alarms, "dead_letters": self.dead_letters,
                "dropped": self.dropped, "last_error": self.last_error}

    def _alarm(self, now_ms: int, code: str, state: str, severity: str, text: str) -> dict:
        self.alarms += 1
        return alarm(now_ms, self.site, self.name, "collector", f"opsloop.source.{self.kind}", code, text,
                     severity, state, {"source_kind": self.kind})
