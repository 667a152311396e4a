"""`opsloop worker`: runs all or some agents in one process.

Batch processors (every agent on the confluent-kafka loop of streams/processor.py:
the high-volume paths, the guard, the actuator sinks and the views) each run in a
thread; ``exit_when_idle`` makes them end once every input has been caught up and
nothing time-driven is left (demo, tests, backfills). Faust agents (one
module each, registered in ``FAUST_AGENTS``) share one Faust app whose worker
runs in the calling thread; they run until stopped, ``exit_when_idle`` does not
apply to them. SIGINT/SIGTERM or the shared ``stop`` event stop everything
cleanly: in-flight batches finish, offsets are committed. One agent failing
stops the others (a supervisor restarts the process).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from contextlib import suppress
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

from opsloop.config.settings import Settings
from opsloop.config.site import Site, load_site

if TYPE_CHECKING:
    import faust

log = logging.getLogger("opsloop.worker")


class Processor(Protocol):
    name: str

    def run(self, stop: threading.Event, exit_when_idle: bool = False) -> dict: ...


UNKNOWN_NAMES = ("deadletter", "accept")


def site_names(settings: Settings, site: Site):
    """The sites and devices points and alarms may name: this site and every site file beside it;
    None when ``settings.unknown_names`` is ``accept`` (every name is taken)."""
    from opsloop.config.site import load_sites
    from opsloop.models.names import SiteNames

    if settings.unknown_names not in UNKNOWN_NAMES:
        raise ValueError(f"OPSLOOP_UNKNOWN_NAMES: expected one of {', '.join(UNKNOWN_NAMES)}, "
                         f"got {settings.unknown_names!r}")
    if settings.unknown_names == "accept":
        return None
    return SiteNames(load_sites(settings.topology.parent, known=[site]).values())


def _rollup(settings: Settings, site: Site) -> Processor:
    from opsloop.streams.rollup import RollupProcessor

    return RollupProcessor(settings, names=site_names(settings, site), wall_clock=settings.clock())


def _anomaly(settings: Settings, site: Site) -> Processor:
    from opsloop.streams.anomaly import AnomalyProcessor

    return AnomalyProcessor(settings, names=site_names(settings, site), wall_clock=settings.clock())


def _views(settings: Settings, site: Site) -> Processor:
    from opsloop.streams.views import ViewsSink

    return ViewsSink(settings)


def _guard(settings: Settings, site: Site) -> Processor:
    from opsloop.config.policy import load_policy
    from opsloop.streams.guard import GuardProcessor

    return GuardProcessor(settings, load_policy(settings.policy), site, clock=settings.clock())


def _pcs_sink(settings: Settings, site: Site) -> Processor:
    from opsloop.streams.pcs_sink import PcsSink
    from opsloop.config.policy import load_policy

    return PcsSink(settings, load_policy(settings.policy), site, clock=settings.clock())


def _slurm_sink(settings: Settings, site: Site) -> Processor:
    from opsloop.streams.slurm_sink import SlurmSink
    from opsloop.config.policy import load_policy

    return SlurmSink(settings, load_policy(settings.policy), clock=settings.clock(), site=site)


def _gpu_sink(settings: Settings, site: Site) -> Processor:
    import socket

    from opsloop.config.policy import load_policy
    from opsloop.connectors.slurm import ScontrolBackend, SlurmError
    from opsloop.streams.gpu_sink import GpuSink

    node = socket.gethostname().split(".")[0]
    try:  # the partitions this node's GPUs serve: the actions it acts on
        partitions = ScontrolBackend().node_partitions(node)
    except (OSError, SlurmError) as exc:
        log.warning("gpu-sink: cannot read the partitions of node %s from Slurm (%s): it acts on none", node, exc)
        partitions = []
    return GpuSink(settings, load_policy(settings.policy), node, partitions, clock=settings.clock())


def _llm_sink(settings: Settings, site: Site) -> Processor:
    from opsloop.streams.llm_sink import LlmSink
    from opsloop.config.policy import load_policy

    return LlmSink(settings, load_policy(settings.policy), clock=settings.clock())


#: A Faust agent module's ``register(app, settings)``: defines its ``@app.agent``(s) on the app.
FaustRegister = Callable[["faust.App", Settings], None]

def _dedup(settings: Settings, site: Site) -> Processor:
    from opsloop.streams.dedup import DedupProcessor

    return DedupProcessor(settings, names=site_names(settings, site), wall_clock=settings.clock())


def _correlate(settings: Settings, site: Site) -> Processor:
    from opsloop.config.site import load_sites
    from opsloop.streams.correlate import CorrelateProcessor

    # alarms of every site described beside this one correlate on their own topology
    return CorrelateProcessor(settings, load_sites(settings.topology.parent, known=[site]).values(),
                              wall_clock=settings.clock())


def _narrate(app: "faust.App", settings: Settings) -> None:
    from opsloop.streams.narrate import register

    register(app, settings)


#: Batch processors by name: each is built from the settings and the site, read once per worker.
AGENTS: dict[str, Callable[[Settings, Site], Processor]] = {"rollup": _rollup, "views": _views, "anomaly": _anomaly}
AGENTS.update({"guard": _guard, "pcs-sink": _pcs_sink, "slurm-sink": _slurm_sink})  # actuation (issue 4)
AGENTS["llm-sink"] = _llm_sink  # the LLM-serving lever (issue 17)
AGENTS["gpu-sink"] = _gpu_sink  # NVML clock locks and power limits on this node's GPUs
AGENTS.update({"dedup": _dedup, "correlate": _correlate})  # alarm filter (issue 5)


def _peaks(settings: Settings, site: Site) -> Processor:
    from opsloop.config.policy import load_policy
    from opsloop.streams.peaks import PeaksProcessor

    # plan within the guard's PCS limit: a setpoint above it is refused, and the battery is left unused
    policy = load_policy(settings.policy)
    limits = policy.pcs
    pcs_kw = min(limits.max_kw, *(max(e.pcs_charge_kw, e.pcs_discharge_kw)
                                  for e in site.ess[:1])) if site.ess else None
    return PeaksProcessor(settings, site, wall_clock=settings.clock(), pcs_kw=pcs_kw,
                          reserve_soc_pct=limits.reserve_soc_pct, max_soc_pct=limits.max_soc_pct,
                          levers=policy.levers)


AGENTS["peaks"] = _peaks  # peak shaving (issue 3)


def _rul(settings: Settings, site: Site) -> Processor:
    from opsloop.config.policy import load_policy
    from opsloop.models.rul import rules
    from opsloop.streams.rul import RulProcessor

    # a battery is due when its health reaches the policy's floor for using it
    return RulProcessor(settings, rules(load_policy(settings.policy).pcs.min_soh_pct),
                        names=site_names(settings, site), wall_clock=settings.clock())


AGENTS["rul"] = _rul  # remaining useful life (issue 19)


def _efficiency(settings: Settings, site: Site) -> Processor:
    from opsloop.config.policy import load_policy
    from opsloop.streams.efficiency import EfficiencyProcessor

    from opsloop.config.policy import ASHRAE_COOLING

    # advice only: a policy without a cooling section (before version 4) is advised against ASHRAE's range
    return EfficiencyProcessor(settings, site, load_policy(settings.policy).cooling or ASHRAE_COOLING)


AGENTS["efficiency"] = _efficiency  # cooling efficiency advice (issue 19)


def _cooling_sink(settings: Settings, site: Site) -> Processor:
    from opsloop.config.policy import load_policy
    from opsloop.streams.cooling_sink import CoolingSink

    return CoolingSink(settings, load_policy(settings.policy), site, clock=settings.clock())


AGENTS["cooling-sink"] = _cooling_sink  # the supply-air setpoint over BACnet (issue 19)
FAUST_AGENTS: dict[str, FaustRegister] = {"narrate": _narrate}


def _faust_registry(extra: Mapping[str, FaustRegister] | None = None) -> dict[str, FaustRegister]:
    """``FAUST_AGENTS`` plus ``extra``; a name may mean only one agent across both registries."""
    merged = dict(FAUST_AGENTS)
    for name, register in (extra or {}).items():
        if name in merged and merged[name] is not register:
            raise ValueError(f"Faust agent {name!r} is already registered")
        merged[name] = register
    clash = sorted(set(AGENTS) & set(merged))
    if clash:
        raise ValueError(f"agent name(s) {', '.join(clash)} name both a batch processor and a Faust agent")
    return merged


def parse_agents(spec: str | None, faust_agents: Mapping[str, FaustRegister] | None = None) -> list[str]:
    """``"rollup,views"`` → names; None or "all" → every agent. Unknown names are an error.

    Names come from ``AGENTS`` (batch processors), ``FAUST_AGENTS`` and ``faust_agents``.
    """
    known = [*AGENTS, *_faust_registry(faust_agents)]
    if not spec or spec == "all":
        return known
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown agent(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def run(settings: Settings, agents: list[str], exit_when_idle: bool = False,
        stop: threading.Event | None = None, *,
        faust_agents: Mapping[str, FaustRegister] | None = None, site: Site | None = None) -> dict[str, dict]:
    """Run the agents until stopped (or, for batch processors only, idle); returns each agent's stats.

    The processors share one ``site``: the caller's, else ``settings.topology`` read once here.

    ``faust_agents`` (name → register function) are run besides ``agents`` (tests, embedding).
    Faust agents run until SIGINT/SIGTERM, ``stop`` or a failure; they report no stats yet ({}).
    """
    registry = _faust_registry(faust_agents)
    names = list(dict.fromkeys([*agents, *(faust_agents or {})]))
    unknown = [n for n in names if n not in AGENTS and n not in registry]
    if unknown:
        raise ValueError(f"unknown agent(s) {', '.join(unknown)}; known: {', '.join([*AGENTS, *registry])}")
    processors = [n for n in names if n in AGENTS]
    faust_names = [n for n in names if n in registry]

    if site is None and processors:
        site = load_site(settings.topology)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    results: dict[str, dict] = {}
    failures: dict[str, BaseException] = {}

    from opsloop.streams.processor import Handoff

    built = {name: AGENTS[name](settings.as_principal(name), site) for name in processors}  # own Kafka identities
    handoff = Handoff({settings.topic(topic) for agent in built.values()
                       for topic in getattr(agent, "sources", ())}, set(built))
    for agent in built.values():
        agent.handoff = handoff

    def target(name: str) -> None:
        try:
            results[name] = built[name].run(stop, exit_when_idle=exit_when_idle)
        except BaseException as exc:  # one agent failing stops the worker: a supervisor restarts it
            log.exception("agent %s failed", name)
            failures[name] = exc
            stop.set()

    threads = [threading.Thread(target=target, args=(n,), name=f"agent-{n}") for n in processors]
    for t in threads:
        t.start()
    if faust_names:
        try:
            faust_settings = settings.as_principal(faust_names[0]) if len(faust_names) == 1 else settings
            run_faust(faust_settings, {n: registry[n] for n in faust_names}, stop)
            results.update({n: {} for n in faust_names})
        except BaseException as exc:
            log.exception("Faust agent(s) %s failed", ", ".join(faust_names))
            failures[", ".join(faust_names)] = exc
        finally:
            stop.set()  # the Faust worker only ends when asked or on failure: the processors end with it
    for t in threads:
        while t.is_alive():
            t.join(0.5)
    if failures:
        name, exc = next(iter(failures.items()))
        raise RuntimeError(f"agent {name} failed: {exc}") from exc
    return results


def run_faust(settings: Settings, registers: Mapping[str, FaustRegister], stop: threading.Event,
              poll_s: float = 0.2) -> None:
    """Build the app, register the agents and run a Faust worker in this thread until ``stop`` is set.

    Raises what crashed the worker. Signals are left to the caller (``run`` maps them to ``stop``),
    so this also works outside the main thread.
    """
    import faust

    from opsloop.streams.app import create_app

    class _Worker(faust.Worker):
        def install_signal_handlers(self) -> None:
            pass  # the caller owns SIGINT/SIGTERM; loop signal handlers only work in the main thread

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # Faust resolves its loop lazily: it must find this one
    try:
        app = create_app(settings)
        for register in registers.values():
            register(app, settings)
        # override_logging=False: logging is the entry point's (info by default); Faust would replace
        # the root handlers and its spinner would set the root logger to DEBUG (a measured slowdown).
        worker = _Worker(app, loop=loop, debug=False, override_logging=False, redirect_stdouts=False)
        worker.spinner = None
        exit_code = None
        try:
            loop.run_until_complete(_until_stopped(worker, stop, poll_s))
        except SystemExit as exc:  # mode raises it when an agent exceeds its restarts; don't exit the caller
            exit_code = exc.code
        finally:
            worker.stop_and_shutdown()  # stops, cancels leftover tasks, closes the loop, re-raises a crash
        if exit_code not in (None, 0):
            raise RuntimeError(f"Faust worker exited with status {exit_code}")
    finally:
        if not loop.is_closed():
            loop.close()
        asyncio.set_event_loop(None)


async def _until_stopped(worker: "faust.Worker", stop: threading.Event, poll_s: float) -> None:
    # Polling: a threading.Event can't wake the loop, and signal handlers (which set it) run between polls.
    starting = asyncio.ensure_future(worker.start())  # a daemon worker's start() returns once stopped or crashed
    while not starting.done() and not stop.is_set():
        await asyncio.wait({starting}, timeout=poll_s)
    if not starting.done():
        await worker.stop()
        starting.cancel()  # start() may still wait on a service that never came up
    with suppress(asyncio.CancelledError):
        await starting
