"""`opsloop source`: run the live sources of one kind from a config file, each in its own thread.

The site file is found by the config's site id among the site files beside ``OPSLOOP_TOPOLOGY``.
SIGINT/SIGTERM stop every source; what is queued is flushed before the process ends. On a twin clock
whose time has not begun (a run starts its readers first), the first poll waits for it: a reading stamped
before the run's first second would describe nothing.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from opsloop.config.settings import Settings
from opsloop.config.site import Site, load_sites
from opsloop.config.sources import SourceConfig, load_sources
from opsloop.connectors.sources import KINDS
from opsloop.connectors.sources.loop import SourceRun


def list_kinds() -> str:
    width = max((len(k) for k in KINDS), default=0)
    return "\n".join(f"{kind:<{width}}  {spec.description}" for kind, spec in sorted(KINDS.items()))


def site_of(settings: Settings, config: SourceConfig, sites: dict[str, Site]) -> Site:
    if config.site not in sites:
        raise config.error(f"site {config.site!r} is not declared by any site file in {settings.topology.parent} "
                           f"(known: {', '.join(sorted(sites))})")
    return sites[config.site]


def runs(settings: Settings, kind: str | None, config_file: Path, name: str | None = None) -> list[SourceRun]:
    """The configured sources of ``kind`` (every kind when None; only ``name`` when given), checked against
    their sites."""
    configs = [c for c in load_sources(config_file) if kind in (None, c.kind) and name in (None, c.name)]
    unknown = sorted({c.kind for c in configs} - set(KINDS)) or ([kind] if kind and kind not in KINDS else [])
    if unknown:
        raise ValueError(f"unknown source kind(s) {', '.join(unknown)}; known: {', '.join(sorted(KINDS))}")
    if not configs:
        raise ValueError(f"{config_file}: no source" + (f" of kind {kind!r}" if kind else "")
                         + (f" named {name!r}" if name else ""))
    sites = load_sites(settings.topology.parent, known=[])
    clock = settings.clock()
    out = []
    for config in configs:
        site = site_of(settings, config, sites)
        out.append(SourceRun(settings.as_principal("source"), config, site,
                             KINDS[config.kind].build(config, site, clock), clock))
    return out


def run(settings: Settings, kind: str | None, config_file: Path, name: str | None = None,
        stop: threading.Event | None = None) -> dict[str, dict]:
    """Run until stopped; returns each source's last health record."""
    sources = runs(settings, kind, config_file, name)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    results: dict[str, dict] = {}
    if stop.wait(settings.clock().wall_until_start()):
        return results
    threads = [threading.Thread(target=lambda s=s: results.update({s.config.name: s.run(stop).record(s.now_ms())}),
                                name=f"source-{s.config.name}") for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    return results
