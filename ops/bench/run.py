"""`opsloop bench --suite all`: the rollup, peaks, anomaly and actuation suites one after another."""

from __future__ import annotations

from opsloop.config.settings import Settings
from opsloop.ops.bench import actuation, anomaly, peaks, rollup


def run_bench(settings: Settings, events: int = 200_000, rounds: int = 3, secure: bool = True) -> int:
    failed = rollup.run_rollup_bench(settings, events, rounds, secure=secure)
    print("\n".join(peaks.run(settings)))
    return failed or anomaly.run_anomaly_bench(settings, events, rounds) or actuation.run_actuation_bench(settings)
