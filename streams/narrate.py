"""The narrate agent: ``incidents`` → ``narratives`` (Faust).

Every incident version gets the deterministic narration at once (a few ms),
published before the agent takes the next event, so a slow or dead LLM never
stalls the stream and a crash loses no narration. When an LLM endpoint is set
(``OPSLOOP_LLM_URL``), the agent also asks it in the background, at most
``llm_concurrency`` calls at a time (an incident arriving while every slot is
busy keeps the deterministic narration only) and each within ``llm_timeout_s``.
A draft that passes the grounding check is published as a second Narrative
for the same incident (the topic is compacted by incident id, so it replaces
the first); a rejected, failed or timed-out draft publishes nothing more. A
draft for an incident that has since been updated is dropped as stale.

``ts_ms`` is when the narration was produced (wall clock, here at the edge);
``latency_ms`` covers retrieval, narration and check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from opsloop.config.settings import Settings
from opsloop.schemas.codec import Codec
from opsloop.streams.app import catalog_topic, decode_or_dead_letter, send_record

log = logging.getLogger("opsloop.narrate")
AGENT = "narrate"
MAX_TRACKED = 100_000  # incidents whose newest version is remembered (to drop stale LLM drafts)


def register(app, settings: Settings) -> None:
    from opsloop.connectors.llm import chat_generator
    from opsloop.models.narrate import DETERMINISTIC, Narration
    from opsloop.models.sops import parse_corpus
    from opsloop.config.assets import sop_texts
    from opsloop.config.site import load_site

    glossary = load_site(settings.topology).glossary if settings.topology else None  # the site's own alarm words
    narration = Narration(parse_corpus(sop_texts()), chat_generator=chat_generator(settings) if settings.llm_url else None,
                          model_name=settings.llm_model, glossary=glossary)
    codec = Codec.default()
    clock = settings.clock()  # narrations are stamped on the run's one clock
    latest: OrderedDict[str, int] = OrderedDict()  # incident id → updated_ms of the newest version seen
    in_flight: set[asyncio.Task] = set()
    slots = {"free": max(0, settings.llm_concurrency)}

    async def publish(result, incident: dict, started: float) -> None:
        narrative = result.narrative(incident, ts_ms=int(clock() * 1000),
                                     latency_ms=(time.perf_counter() - started) * 1000)
        await send_record(app, "narratives", narrative, codec)

    async def ask_llm(incident: dict, retrieved, started: float) -> None:
        try:
            result = await asyncio.wait_for(narration.draft_async(incident, retrieved), settings.llm_timeout_s)
        except Exception as exc:  # timeout, connection refused, bad reply: the deterministic one stands
            log.warning("%s: LLM narration of %s failed: %s", AGENT, incident["incident_id"], exc or type(exc).__name__)
            return
        finally:
            slots["free"] += 1
        if result.model == DETERMINISTIC:
            log.info("%s: LLM draft for %s rejected: %s", AGENT, incident["incident_id"], "; ".join(result.rejected))
        elif latest.get(incident["incident_id"]) == incident["updated_ms"]:
            await publish(result, incident, started)

    @app.agent(catalog_topic(app, settings, "incidents"), name=AGENT)
    async def narrate(stream):
        async for event in stream.events():
            incident = await decode_or_dead_letter(app, event, "Incident", AGENT, codec)
            if incident is None:
                continue
            started = time.perf_counter()
            retrieved = narration.retrieve(incident)
            await publish(narration.deterministic(incident, retrieved), incident, started)
            latest[incident["incident_id"]] = incident["updated_ms"]
            latest.move_to_end(incident["incident_id"])
            if len(latest) > MAX_TRACKED:
                latest.popitem(last=False)
            if narration.llm is not None and slots["free"] > 0:
                slots["free"] -= 1
                task = asyncio.ensure_future(ask_llm(incident, retrieved, started))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
