"""A covariate of the load forecast known ahead step by step, from the latest snapshot of what is expected.

Pure. A snapshot (the Slurm queue's, a weather forecast) becomes a profile: one value per forecast step from
the step before the snapshot's on. ``StepCovariate`` gives ``models.peak_forecast.PeakForecaster`` what it
takes: the value for the step just closed (``step_x``: what was expected for it when it was the next step,
so the forecaster learns from what it was told, not from what came) and the values of the steps ahead
(``future_xs``). A snapshot older than ``max_age_s`` says nothing (both empty: the forecaster then counts the
covariate as unchanged), nor does a site that never sent one. Subclasses say how a snapshot becomes a
profile (``observe``) and call ``hold``.

>>> cov = StepCovariate(step_s=3600, name="x")
>>> cov.hold(snapshot_ms=3_600_000, start_ms=0, profile=[1.0, 2.0, 3.0])
>>> cov.future_xs(3_600_000, 3)  # the third step is past the profile: unknown
[{'x': 2.0}, {'x': 3.0}, {}]
>>> cov.step_x(3_600_000, now_ms=7_200_000)  # what it expected for that step when it was the next
{'x': 2.0}
>>> cov.future_xs(3_600_000 + 3 * 3_600_000, 1) is None  # two hours older than max_age_s: stale
True
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepCovariate:
    """One covariate's latest profile. Only values are kept, not the snapshot's records: the loop holding it is
    pickled into its agent's changelog at every commit."""

    step_s: int = 900
    max_age_s: float = 3600.0
    horizon_steps: int = 96
    name: str = "covariate"
    snapshot_ms: int | None = None
    _start_ms: int = 0  # the first step of the profile
    _profile: list[float | None] = field(default_factory=list)  # value per step from _start_ms
    _expected: dict[int, float] = field(default_factory=dict)  # step start -> the value expected for it

    def hold(self, snapshot_ms: int, start_ms: int, profile: list[float | None]) -> None:
        """Keep a snapshot taken at ``snapshot_ms`` as the values of the steps from ``start_ms`` on."""
        self.snapshot_ms, self._start_ms, self._profile = snapshot_ms, start_ms, profile

    def fresh(self, now_ms: int) -> bool:
        return self.snapshot_ms is not None and now_ms - self.snapshot_ms <= self.max_age_s * 1000

    def _at(self, start_ms: int) -> float | None:
        k = (start_ms - self._start_ms) // (self.step_s * 1000)
        return self._profile[k] if 0 <= k < len(self._profile) else None

    def step_x(self, start_ms: int, now_ms: int) -> dict:
        """The covariate of the step starting at ``start_ms``, closed by ``now_ms``: what was expected for it as
        the next step, else what the snapshot says of it; empty when it is unknown or stale."""
        expected = self._expected.pop(start_ms, None)
        self._expected = {t: v for t, v in self._expected.items() if t > start_ms}
        if expected is None and self.fresh(now_ms):
            expected = self._at(start_ms)
        return {} if expected is None else {self.name: expected}

    def future_xs(self, now_ms: int, steps: int) -> list[dict] | None:
        """The covariate of each of the ``steps`` steps from ``now_ms`` (a step's start); None when it is unknown
        or stale. The first is remembered as what was expected for that step."""
        if not self.fresh(now_ms):
            return None
        step_ms = self.step_s * 1000
        values = [self._at(now_ms + k * step_ms) for k in range(steps)]
        xs = [{} if v is None else {self.name: v} for v in values]
        if values and values[0] is not None:
            self._expected[now_ms] = values[0]
        return xs
