"""The Slurm queue as a load-forecast covariate: the GPU kW the queue expects to be running in each step.

Pure. From one whole queue snapshot (the ``SlurmQueue`` records the slurm-queue source publishes, or the
twin's ``queue_records``), ``expected_kw`` is the mean kW the queue's jobs are expected to draw over an
interval: a running job from its start until its end, a pending job from the scheduler's expected start until
its expected end (a job with no end counts on; a pending job with no expected start is not placed in time and
counts nowhere). Each job draws its ``est_kw`` (its GPUs x the partition's kW per GPU). Reservations are not load.

``QueueCovariate`` (a ``models.step_covariate.StepCovariate``) turns the latest snapshot into what ``models.peak_forecast.PeakForecaster`` takes: the value
for the step just closed (``step_x``: what the queue expected for it when it was the next step, so jobs that
ended within it and have left the queue still count) and the values of the steps ahead (``future_xs``). A
snapshot older than ``max_age_s`` says nothing (both empty: the forecaster then counts the covariate as
unchanged), nor does a site that never sent one.

>>> jobs = [{"entry": "job", "state": "RUNNING", "est_kw": 100.0, "start_ms": 0, "expected_start_ms": None,
...          "end_ms": 7_200_000},
...         {"entry": "job", "state": "PENDING", "est_kw": 50.0, "start_ms": None, "expected_start_ms": 3_600_000,
...          "end_ms": None},
...         {"entry": "snapshot", "ts_ms": 1_800_000, "state": "COMPLETE", "est_kw": 150.0}]
>>> expected_kw(jobs, 0, 3_600_000), expected_kw(jobs, 0, 7_200_000)  # the pending job half of the second
(100.0, 125.0)
>>> cov = QueueCovariate(step_s=3600)
>>> cov.observe(jobs)
>>> cov.future_xs(3_600_000, 2)
[{'queue_kw': 150.0}, {'queue_kw': 50.0}]
>>> cov.step_x(3_600_000, now_ms=7_200_000)  # what it expected for that step an hour ago
{'queue_kw': 150.0}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from opsloop.models.slurm_queue import PENDING, RUNNING
from opsloop.models.step_covariate import StepCovariate

NAME = "queue_kw"  # the covariate's name in the forecaster's x


def expected_kw(entries: Iterable[dict], from_ms: int, to_ms: int) -> float:
    """The mean kW the snapshot's jobs are expected to draw over [from_ms, to_ms)."""
    return expected_kw_steps(entries, from_ms, to_ms - from_ms, 1)[0]


def expected_kw_steps(entries: Iterable[dict], start_ms: int, step_ms: int, steps: int) -> list[float]:
    """``expected_kw`` of each of ``steps`` consecutive steps of ``step_ms`` from ``start_ms``, in one pass."""
    out = [0.0] * steps
    end_all = start_ms + steps * step_ms
    for e in entries:
        if e.get("entry") != "job" or not e.get("est_kw"):
            continue
        if e["state"] in RUNNING:
            begin = e.get("start_ms")
            begin = start_ms if begin is None else begin
        elif e["state"] in PENDING and e.get("expected_start_ms") is not None:
            begin = e["expected_start_ms"]
        else:
            continue
        end = e.get("end_ms")
        begin, end = max(begin, start_ms), end_all if end is None else min(end, end_all)
        if end <= begin:
            continue
        kw = e["est_kw"]
        for k in range((begin - start_ms) // step_ms, min(steps, -(-(end - start_ms) // step_ms))):
            lo, hi = start_ms + k * step_ms, start_ms + (k + 1) * step_ms
            out[k] += kw * (min(hi, end) - max(lo, begin)) / step_ms
    return out


@dataclass
class QueueCovariate(StepCovariate):
    """The latest queue snapshot of a site, as covariates of its load forecast (see the module note). Only its
    expected kW per step is kept (from the step before the snapshot's to ``horizon_steps`` + 2 after), not its
    records: the loop that holds it is pickled into its agent's changelog at every commit."""

    name: str = NAME

    def observe(self, records: list[dict]) -> None:
        """Take one whole snapshot (its records, closed by the ``snapshot`` entry); one older than held is
        ignored."""
        ts = records[-1].get("ts_ms") if records else None
        if ts is None or (self.snapshot_ms is not None and ts < self.snapshot_ms):
            return
        step_ms = self.step_s * 1000
        start_ms = (ts // step_ms - 1) * step_ms
        self.hold(ts, start_ms, expected_kw_steps(records, start_ms, step_ms, self.horizon_steps + 3))
