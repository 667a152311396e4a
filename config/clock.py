"""The one clock every process injects: the wall clock, or a twin's clock running ``speed`` times faster.

A twin clock is three numbers every process of a run shares (``OPSLOOP_CLOCK_EPOCH_S``,
``OPSLOOP_CLOCK_ANCHOR_S``, ``OPSLOOP_CLOCK_SPEED``): at wall time ``anchor_s`` the twin's time
was ``epoch_s``, and it has run ``speed`` times faster since. Each process builds the same
``Clock`` from its settings (``Settings.clock()``) and hands it to whatever needs "now": agents,
sinks, the PCS simulator, live sources, the twin. Every time-based setting (PCS revert timeouts,
guard expiry, approval lapses, verification windows, Slurm hold times) is measured on it, so a
day of the site passes in ``86400 / speed`` wall seconds and every deadline keeps its meaning.
The default (``epoch_s`` 0) is the wall clock itself.

>>> twin = Clock(epoch_s=1_000.0, anchor_s=50.0, speed=60.0, wall=lambda: 52.0)
>>> twin(), twin.wall_s(120.0), twin.is_wall
(1120.0, 2.0, False)
>>> Clock().is_wall, Clock(wall=lambda: 7.5)()
(True, 7.5)
>>> Clock(speed=0)
Traceback (most recent call last):
...
ValueError: clock speed must be > 0, got 0
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Clock:
    epoch_s: float = 0.0  # the twin's time at wall time anchor_s; 0: the wall clock
    anchor_s: float = 0.0
    speed: float = 1.0
    wall: Callable[[], float] = field(default=time.time, compare=False, repr=False)

    def __post_init__(self):
        if not self.speed > 0:
            raise ValueError(f"clock speed must be > 0, got {self.speed:g}")

    @property
    def is_wall(self) -> bool:
        return not self.epoch_s and self.speed == 1.0

    def __call__(self) -> float:
        """Now, in seconds since the Unix epoch, on this clock."""
        wall = self.wall()
        if self.is_wall:
            return wall
        return self.epoch_s + (wall - self.anchor_s) * self.speed

    def wall_s(self, clock_s: float) -> float:
        """How many wall seconds ``clock_s`` of this clock's seconds take."""
        return clock_s / self.speed

    def wall_until_start(self) -> float:
        """Wall seconds until a twin clock's time begins (its ``epoch_s``, at ``anchor_s``); 0 once it runs.

        A run may start its processes before its time begins, so that they see it from its first second.

        >>> Clock(epoch_s=1_000.0, anchor_s=50.0, speed=60.0, wall=lambda: 48.5).wall_until_start()
        1.5
        >>> Clock(epoch_s=1_000.0, anchor_s=50.0, speed=60.0, wall=lambda: 52.0).wall_until_start(), Clock().wall_until_start()
        (0.0, 0.0)
        """
        return 0.0 if self.is_wall else max(0.0, self.anchor_s - self.wall())

    def env(self) -> dict[str, str]:
        """The ``OPSLOOP_CLOCK_*`` variables that give another process this clock."""
        if self.is_wall:
            return {}
        return {"OPSLOOP_CLOCK_EPOCH_S": repr(self.epoch_s), "OPSLOOP_CLOCK_ANCHOR_S": repr(self.anchor_s),
                "OPSLOOP_CLOCK_SPEED": repr(self.speed)}

    @classmethod
    def starting(cls, epoch_s: float, speed: float, wall: Callable[[], float] = time.time) -> "Clock":
        """A twin clock that reads ``epoch_s`` now."""
        return cls(epoch_s=epoch_s, anchor_s=wall(), speed=speed, wall=wall)
