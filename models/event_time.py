"""Bounded event time: which record times a stream may believe, and formatting that never fails.

Every agent whose state is driven by a record's own time (the rollup's windows and
watermarks, the correlator's incident timeouts, dedup's windows, the detectors) checks the
time first with ``EventTimeBounds.check``. A time is refused, with a reason, when it is

* before the epoch (1970-01-01; nothing opsloop measures is older),
* more than ``max_future_ms`` ahead of the processing clock (``now_ms``): no measured event
  lies in the future, whatever clock its stream follows,
* more than ``max_future_ms`` ahead of the stream's own latest time (``latest_ms``), when the
  stream is awake, unless it is the present (within ``max_future_ms`` of the processing
  clock: a live stream back after a long silence): one bad clock cannot pull a replay of
  the past forward,
* more than ``max_past_ms`` behind the stream's watermark (``watermark_ms``).

The references are the stream's own, never a global clock, so a replay of the year 2000
passes as well as live data does. Before a stream has any time (``latest_ms`` and
``watermark_ms`` None) only the epoch and the processing clock bound it.

>>> b = EventTimeBounds(max_future_ms=3_600_000, max_past_ms=86_400_000)
>>> now = 1_780_000_000_000  # the processing clock, in 2026
>>> b.check(960_163_200_000, None, None, now) is None  # a replay of June 2000 with no history
True
>>> b.check(4_102_444_800_000, None, None, now)  # 2100
'event time 2100-01-01T00:00:00Z is 645124 h ahead of the processing clock (limit 1 h)'
>>> b.check(-2**62, None, None, now)
'event time -4611686018427387904 ms since the epoch is before the epoch'
>>> b.check(960_163_200_000 + 7_200_000, 960_163_200_000, None, now)
'event time 2000-06-05T02:00:00Z is 2 h ahead of its stream (latest 2000-06-05T00:00:00Z, limit 1 h)'
>>> b.check(0, None, 2 * 86_400_000, now)
'event time 1970-01-01T00:00:00Z is 48 h behind its stream (watermark 1970-01-03T00:00:00Z, limit 24 h)'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class EventTimeBounds:
    max_future_ms: int = 86_400_000
    max_past_ms: int = 7 * 86_400_000

    @classmethod
    def from_settings(cls, settings) -> "EventTimeBounds":
        return cls(int(settings.max_future_s * 1000), int(settings.max_past_s * 1000))

    def check(self, ts_ms: int, latest_ms: int | None, watermark_ms: int | None, now_ms: int | None) -> str | None:
        """Why ``ts_ms`` cannot be believed, or None."""
        if ts_ms < 0:
            return f"event time {iso_ms(ts_ms)} is before the epoch"
        if now_ms is not None and ts_ms > now_ms + self.max_future_ms:
            return (f"event time {iso_ms(ts_ms)} is {_hours(ts_ms - now_ms)} h ahead of the processing clock "
                    f"(limit {_hours(self.max_future_ms)} h)")
        if (latest_ms is not None and ts_ms > latest_ms + self.max_future_ms
                and (now_ms is None or ts_ms < now_ms - self.max_future_ms)):  # the present is always believed
            return (f"event time {iso_ms(ts_ms)} is {_hours(ts_ms - latest_ms)} h ahead of its stream "
                    f"(latest {iso_ms(latest_ms)}, limit {_hours(self.max_future_ms)} h)")
        if watermark_ms is not None and ts_ms < watermark_ms - self.max_past_ms:
            return (f"event time {iso_ms(ts_ms)} is {_hours(watermark_ms - ts_ms)} h behind its stream "
                    f"(watermark {iso_ms(watermark_ms)}, limit {_hours(self.max_past_ms)} h)")
        return None


def iso_ms(ts_ms: int | None) -> str:
    """An epoch-millisecond time as ISO 8601 UTC; any integer is formatted, none raises.

    >>> iso_ms(0), iso_ms(-2**62), iso_ms(None)
    ('1970-01-01T00:00:00Z', '-4611686018427387904 ms since the epoch', 'none')
    """
    return "none" if ts_ms is None else format_ms(ts_ms, "%Y-%m-%dT%H:%M:%SZ")


def format_ms(ts_ms: int, fmt: str) -> str:
    """``strftime`` of an epoch-millisecond time in UTC, or the number itself where no date can hold it.

    >>> format_ms(960_163_200_000, "%H:%M UTC"), format_ms(2**62, "%H:%M UTC")
    ('00:00 UTC', '4611686018427387904 ms since the epoch')
    """
    try:
        return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime(fmt)
    except (OverflowError, OSError, ValueError):
        return f"{ts_ms} ms since the epoch"


def _hours(ms: int) -> str:
    return f"{ms / HOUR_MS:.0f}"
