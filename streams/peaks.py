"""The peaks agent as a confluent-kafka batch processor: ``telemetry.site`` → forecasts and actions.

Thin, like the Faust version (streams/peaks.py, kept for the bench): decode each snapshot,
fold it into its site's ``models.peak_loop.SitePeakLoop``, publish the forecast and the
proposed actions of every step it closes. State per site key (streams/keyed.py): the loop
and the offset of the last snapshot folded in, so snapshots repeated after a crash are
skipped, and re-sent decisions carry the same action ids. The state value is pickled: the
loop holds a River model, and the changelog is this processor's own topic, written and
read only by it (pickle trusts its input). Undecodable snapshots go to ``deadletter`` as
``decode``; snapshots of a site the topology does not describe, or with a non-finite
number, as ``invalid``. Why a processor: see the README (Power peaks) and ops/bench/peaks.py.

The Slurm queue (``slurm.queue``) is a hint, read whole by every instance (streams/hints.py), since a site's
queue need not sit in the partition number its snapshots do: each site's latest whole snapshot
(``models.slurm_queue.LatestQueue``) is handed to its loop before the loop folds the site's next snapshot in,
and the forecast learns and forecasts with the GPU kW it expects per step (``models.queue_covariate``). On start
the reader goes back ``hint_lookback_s`` (an hour: as far as the loop still uses a snapshot). An undecodable
queue entry is skipped and counted (``hints_refused``), not dead-lettered: every instance would dead-letter it
again, at each start. The outside-temperature forecast (``weather.forecast``, the weather source's) is a hint the
same way: each site's latest is handed to its loop (``models.weather_covariate``); the reader's hour back finds
the latest of a source that polls at least hourly.
"""

from __future__ import annotations

import math
import pickle
from typing import Callable

from opsloop.config.policy import LeverCosts
from opsloop.config.settings import Settings
from opsloop.config.site import Site
from opsloop.models.peak_loop import Decision, LoopConfig, SitePeakLoop
from opsloop.models.slurm_queue import LatestQueue
from opsloop.schemas.codec import Codec
from opsloop.streams.hints import HintSources
from opsloop.streams.keyed import KeyedProcessor

NUMBERS = ("grid_kw", "ess_kw", "ess_soc_pct", "ess_soh_pct")

#: ``observer(decisions, messages)`` (tests, bench) sees each batch once its outputs are handed to the producer.
Observer = Callable[[list[Decision], int], None]


class SiteState:
    """One site's keyed state: its loop and the last source offset folded into it."""

    def __init__(self, loop: SitePeakLoop, offset: int = -1):
        self.loop = loop
        self.offset = offset


class PeaksProcessor(HintSources, KeyedProcessor):
    name = "peaks"
    source = "telemetry.site"
    sources = ("telemetry.site", "slurm.queue", "weather.forecast")
    stateless = ("slurm.queue", "weather.forecast")
    record = "SiteSnapshot"

    def __init__(self, settings: Settings, site: Site, observer: Observer | None = None,
                 pcs_kw: float | None = None, reserve_soc_pct: float | None = None,
                 max_soc_pct: float | None = None, levers: LeverCosts | None = None, **kwargs):
        super().__init__(settings, **kwargs)
        # pcs_kw: the most the guard lets the PCS do (policy pcs.max_kw), so no plan asks for more;
        # reserve_soc_pct / max_soc_pct: the guard's state-of-charge window, planned in and kept by a grid limit's
        # caps over its whole life; levers: the policy's lever costs, for the site's flexible_load
        self.config = LoopConfig.from_site(site, step_s=settings.peaks_step_s, pcs_kw=pcs_kw,
                                           reserve_soc_pct=reserve_soc_pct, max_soc_pct=max_soc_pct,
                                           cap_reserve_soc_pct=reserve_soc_pct, control=settings.peaks_control,
                                           lever_costs=levers, lever_kinds=action_kinds())
        self.observer = observer
        self.decided: list[Decision] = []
        self.queue_topic = settings.topic("slurm.queue")
        self.queues = LatestQueue()  # each site's latest Slurm queue (a hint: not checkpointed, read again)
        self.weather_topic = settings.topic("weather.forecast")
        self.forecasts: dict[str, dict] = {}  # each site's latest weather forecast (a hint, like the queue)
        self.hint_lookback_s = self.config.queue_max_age_s if self.config.queue_covariate else 0.0
        self.stats["hints_refused"] = 0

    def setup(self, cons) -> None:
        super().setup(cons)
        self.start_hints()

    def before_batch(self) -> None:
        self.poll_hints()

    def close(self) -> None:
        self.close_hints()

    def handle(self, msg) -> None:
        if msg.topic() == self.weather_topic:
            if (forecast := self.hint(msg, "WeatherForecast")) is not None:
                held = self.forecasts.get(forecast["site"])
                if held is None or forecast["issued_ms"] >= held["issued_ms"]:
                    self.forecasts[forecast["site"]] = forecast
            return
        if msg.topic() != self.queue_topic:
            super().handle(msg)
            return
        if (entry := self.hint(msg, "SlurmQueue")) is not None:
            self.queues.add(entry)

    def load_state(self, key: bytes, stored: bytes | None) -> SiteState:
        if stored:
            state = pickle.loads(stored)
            state.loop.reconfigure(self.config)  # learned state from the changelog, limits from today's site file
            self.log.info("%s: site %s state recovered (offset %d)", self.name, key.decode(), state.offset)
            return state
        return SiteState(SitePeakLoop(self.config))

    def dump_state(self, state: SiteState) -> bytes:
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def reject(self, record: dict) -> str | None:
        return invalid(record, self.config.site)

    def refuse(self, state: SiteState, record: dict) -> str | None:
        """A snapshot dated far ahead would make the loop ignore every real one after it (older ones
        are ignored by the loop itself)."""
        return self.bounds.check(record["window_start_ms"], state.loop.last_window_ms, None, self.now_ms())

    def fold(self, state: SiteState, key: bytes, record: dict, offset: int):
        if offset <= state.offset:
            return None
        state.offset = offset
        queue = self.queues.of(record["site"])
        if queue and (state.loop.queue is None or state.loop.queue.snapshot_ms != queue[-1]["ts_ms"]):
            state.loop.on_queue(queue)
        forecast = self.forecasts.get(record["site"])
        if forecast and (state.loop.weather is None or state.loop.weather.snapshot_ms != forecast["issued_ms"]):
            state.loop.on_weather(forecast["issued_ms"], [(p["valid_ms"], p["temp_c"]) for p in forecast["points"]])
        outputs = []
        for decision in state.loop.on_snapshot(record):
            outputs.append(("forecasts.peak", decision.forecast))
            outputs += [("actions.proposed", a) for a in decision.actions]
            self.decided.append(decision)
        return outputs

    def after_batch(self, messages: int) -> None:
        decided, self.decided = self.decided, []
        if self.observer is not None:
            self.observer(decided, messages)


#: Levers the live loop can name completely. A shrink names a partition and the GPUs to release (the Slurm sink
#: picks the opsloop:dp jobs when it acts); a clock lock names a partition's SM clock, and the loop reads no GPU
#: clocks yet, so it plans without it rather than propose actions the guard would refuse as incomplete.
LIVE_LEVERS = ("llm_shift", "llm_cap", "slurm_shrink", "slurm_hold")


def action_kinds(codec: Codec | None = None) -> tuple[str, ...]:
    """The lever kinds the loop may propose: those the Action schema knows and the loop can fill in."""
    schema = (codec or Codec.default()).schema("Action").parsed
    known = next(f for f in schema["fields"] if f["name"] == "kind")["type"]["symbols"]
    return tuple(kind for kind in known if kind in LIVE_LEVERS)


def invalid(snap: dict, site: str) -> str | None:
    """Why a decoded snapshot cannot be planned on, or None."""
    if snap["site"] != site:
        return f"site {snap['site']!r} is not described by the topology (which describes {site!r})"
    for name in NUMBERS:
        value = snap.get(name)
        if value is not None and not math.isfinite(value):
            return f"{name} is {value}, not a finite number"
    return None
