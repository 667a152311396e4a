"""The one loop every live source runs in: poll (or serve), publish, report health, back off.

``run_source`` checks the config against the site first (every mapped device and the source's
own name must be declared by the site file, so no reading is refused downstream for a typo),
then runs until ``stop``: a ``Poller`` is polled every ``interval_s``, and after a failed poll
the wait doubles up to ``backoff_max_s``; a ``Receiver`` serves in this thread while a helper
thread reports its health every ``interval_s``. The clock is injected (event times of polled
values, health times); ``stop.wait`` paces the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from opsloop.config.settings import Settings
from opsloop.config.site import Site
from opsloop.config.sources import SourceConfig
from opsloop.connectors.sources.base import Poller, Readings, Receiver, SourceUnavailable
from opsloop.connectors.sources.publisher import Publisher
from opsloop.models.names import SiteNames
from opsloop.models.source_health import SourceHealth, backoff_s

log = logging.getLogger("opsloop.source")


def mapping_errors(config: SourceConfig, site: Site) -> list[str]:
    """Why the config's names do not fit the site (empty: they do)."""
    if config.site != site.id:
        return [f"source {config.name!r} reads site {config.site!r}, but the site file is {site.id!r} ({site.source})"]
    names = SiteNames([site])
    errors = [f"devices[{external!r}]: {problem}" for external, device in config.devices.items()
              if (problem := names.check(site.id, device))]
    if names.check(site.id, config.name):
        errors.append(f"the source's own name {config.name!r} is not a device of site {site.id} ({site.source}): "
                      f"declare it under devices: as {{id: {config.name}, type: collector}}, so its "
                      f"monitoring-loss alarm is accepted")
    return errors


class SourceRun:
    """One source's loop; ``stats`` and ``health`` may be read from another thread."""

    def __init__(self, settings: Settings, config: SourceConfig, site: Site, kind: Poller | Receiver,
                 clock: Callable[[], float] = time.time, publisher: Publisher | None = None):
        errors = mapping_errors(config, site)
        if errors:
            raise config.error("; ".join(errors))
        self.config = config
        self.kind = kind
        self.clock = clock
        self.health = SourceHealth(config.name, config.kind, config.site, config.fail_after)
        self.publisher = publisher or Publisher(settings, config, self.health, clock)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def run(self, stop: threading.Event) -> SourceHealth:
        try:
            if hasattr(self.kind, "serve"):
                self._serve(stop)
            else:
                self._poll(stop)
        finally:
            close = getattr(self.kind, "close", None)
            if close:
                close()
            self.publisher.report(self.health.record(self.now_ms()))
            left = self.publisher.flush(30.0)
            if left:
                log.error("%s: %d message(s) not delivered at exit", self.config.name, left)
        return self.health

    def poll_once(self) -> float:
        """One poll, published; returns the wait before the next one."""
        cfg, now = self.config, self.now_ms()
        try:
            readings = self.kind.poll(now)
        except SourceUnavailable as exc:
            self.publisher.alarms(self.health.failed(now, str(exc)))
            wait = backoff_s(self.health.consecutive_failures, cfg.interval_s, cfg.backoff_max_s)
            log.warning("%s: poll failed (%d in a row): %s; next try in %.0f s", cfg.name,
                        self.health.consecutive_failures, exc, wait)
        else:
            self.deliver(readings, now)
            wait = cfg.interval_s
        self.publisher.report(self.health.record(now))
        return wait

    def deliver(self, readings: Readings, now_ms: int | None = None) -> bool:
        now = self.now_ms() if now_ms is None else now_ms
        complete = self.publisher.publish(readings)
        self.publisher.alarms(self.health.succeeded(now, len(readings.points), readings.newest_ms(),
                                                    len(readings.alarms), len(readings.rejects)))
        return complete

    def _poll(self, stop: threading.Event) -> None:
        while not stop.is_set():
            began = time.monotonic()
            wait = self.poll_once()
            stop.wait(max(0.0, wait - (time.monotonic() - began)))

    def _serve(self, stop: threading.Event) -> None:
        lock = threading.Lock()  # the receiver's threads and the reporter share the producer's counters

        def deliver(readings: Readings) -> bool:
            with lock:
                return self.deliver(readings)

        def reporter() -> None:
            while not stop.wait(self.config.interval_s):
                with lock:
                    self.publisher.report(self.health.record(self.now_ms()))

        thread = threading.Thread(target=reporter, name=f"health-{self.config.name}", daemon=True)
        thread.start()
        try:
            self.kind.serve(deliver, stop)
        finally:
            stop.set()
            thread.join(5)
