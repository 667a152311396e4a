"""`opsloop worker`: runs all or some agents in one process.

Batch processors (confluent-kafka loops for the high-volume paths and the
DuckDB sink) each run in a thread; ``exit_when_idle`` makes a run end once
every input has been caught up (demo, tests, backfills). SIGINT/SIGTERM stop
them cleanly: in-flight batches finish, offsets are committed.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Callable, Protocol

from ops.settings import Settings

log = logging.getLogger("opsloop.worker")


class Processor(Protocol):
    name: str

    def run(self, stop: threading.Event, exit_when_idle: bool = False) -> dict: ...


def _rollup(settings: Settings) -> Processor:
    from streams.rollup import RollupProcessor

    return RollupProcessor(settings)


def _views(settings: Settings) -> Processor:
    from connectors.duckdb_sink import DuckDBSink

    return DuckDBSink(settings)


AGENTS: dict[str, Callable[[Settings], Processor]] = {"rollup": _rollup, "views": _views}


def parse_agents(spec: str | None) -> list[str]:
    """``"rollup,views"`` → names; None or "all" → every agent. Unknown names are an error."""
    if not spec or spec == "all":
        return list(AGENTS)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in AGENTS]
    if unknown:
        raise ValueError(f"unknown agent(s) {', '.join(unknown)}; known: {', '.join(AGENTS)}")
    return names


def run(settings: Settings, agents: list[str], exit_when_idle: bool = False,
        stop: threading.Event | None = None) -> dict[str, dict]:
    """Run the agents until stopped (or idle); returns each agent's stats."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    results: dict[str, dict] = {}
    failures: dict[str, BaseException] = {}

    def target(name: str) -> None:
        try:
            results[name] = AGENTS[name](settings).run(stop, exit_when_idle=exit_when_idle)
        except BaseException as exc:  # one agent failing stops the worker: a supervisor restarts it
            log.exception("agent %s failed", name)
            failures[name] = exc
            stop.set()

    threads = [threading.Thread(target=target, args=(n,), name=f"agent-{n}") for n in agents]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    if failures:
        name, exc = next(iter(failures.items()))
        raise RuntimeError(f"agent {name} failed: {exc}") from exc
    return results
