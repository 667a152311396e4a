"""The narrate agent on the real broker with a real LLM server: every incident narrated, grounded, never stalled."""

from __future__ import annotations

import threading
import time

import pytest

from opsloop.connectors.kafka import producer, wait_delivered
from opsloop.models.narrate import DETERMINISTIC
from opsloop.ops.evals.narrate import load_labelled
from opsloop.ops.llm_server import MODEL_ALIAS
from opsloop.schemas.codec import Codec
from opsloop.streams import worker

pytestmark = pytest.mark.integration

SAFETY_NET_S = 180.0  # only reached when narratives never arrive: the test then fails


def test_every_incident_gets_a_grounded_narrative_while_the_llm_is_busy(kafka_settings, llm_url, read_topic):
    # One LLM slot for six incidents: the others must still be narrated at once (deterministically).
    settings = kafka_settings.replace(llm_url=llm_url, llm_model=MODEL_ALIAS, llm_concurrency=1, llm_timeout_s=60.0,
                                      llm_max_tokens=96)
    codec = Codec.default()
    incidents = [incident for incident, _ in load_labelled()[:6]]
    prod = producer(settings)
    for incident in incidents:
        prod.produce(settings.topic("incidents"), key=incident["site"].encode(),
                     value=codec.encode("Incident", incident))
    prod.produce(settings.topic("incidents"), key=b"demo", value=b"\xc3\x01 not an incident")
    wait_delivered(prod)
    del prod  # no client left to reconnect once the session's broker stops

    stop = threading.Event()
    narratives: list[dict] = []

    def watch() -> None:
        deadline = time.monotonic() + SAFETY_NET_S
        while not stop.is_set() and time.monotonic() < deadline:
            narratives[:] = [codec.decode_as("Narrative", m.value()) for m in read_topic(settings, "narratives")]
            if len({n["incident_id"] for n in narratives if n["model"] == DETERMINISTIC}) >= len(incidents):
                break
            time.sleep(0.5)
        stop.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    worker.run(settings, ["narrate"], stop=stop)
    watcher.join()

    by_incident = {}
    for n in narratives:
        by_incident.setdefault(n["incident_id"], []).append(n)
    assert set(by_incident) == {i["incident_id"] for i in incidents}
    for incident in incidents:
        first = by_incident[incident["incident_id"]][0]
        assert first["model"] == DETERMINISTIC and first["site"] == incident["site"]
        assert incident["root_code"] in first["text"]
    assert all(n["grounded"] and n["citations"] for n in narratives)
    assert all(n["model"] in (DETERMINISTIC, MODEL_ALIAS) for n in narratives)
    dead = [codec.decode_as("DeadLetter", m.value()) for m in read_topic(settings, "deadletter")]
    assert [(d["agent"], d["error_kind"]) for d in dead] == [("narrate", "decode")]
