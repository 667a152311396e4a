"""Narration against a real OpenAI-compatible server (llama.cpp, packaged SmolLM2-135M): structure and grounding."""

from __future__ import annotations

import pytest

from opsloop.connectors.llm import chat_generator
from opsloop.models.grounding import citations
from opsloop.config.assets import sop_texts
from opsloop.models.sops import parse_corpus
from opsloop.models.narrate import DETERMINISTIC, Narration
from opsloop.ops.evals.narrate import load_labelled
from opsloop.ops.llm_server import MODEL_ALIAS
from opsloop.config.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llm_narration(llm_url):
    # Short drafts keep the test quick on 2 busy cores; the timeout is only a safety net.
    settings = Settings(llm_url=llm_url, llm_model=MODEL_ALIAS, llm_timeout_s=300.0, llm_max_tokens=96)
    return Narration(parse_corpus(sop_texts()), chat_generator=chat_generator(settings), model_name=MODEL_ALIAS)


def test_the_server_answers_and_what_is_published_is_grounded(llm_narration):
    incident = load_labelled()[3][0]  # a UPS on battery
    retrieved = llm_narration.retrieve(incident)
    result = llm_narration.with_llm(incident)
    assert result.grounded
    allowed = {(d.meta["sop_id"], d.meta["section"]) for d in retrieved.documents}
    assert {(c["sop_id"], c["section"]) for c in result.citations} <= allowed
    if result.model == DETERMINISTIC:  # the draft was rejected by the checker (the call itself worked)
        assert result.rejected and not result.rejected[0].startswith("LLM call failed"), result.rejected
    else:
        assert result.model == MODEL_ALIAS and not result.rejected
        assert set(citations(result.text)) <= allowed


def test_an_unreachable_endpoint_falls_back_to_the_deterministic_narration(free_port_pair):
    settings = Settings(llm_url=f"http://127.0.0.1:{free_port_pair}/v1", llm_model="none", llm_timeout_s=5.0)
    narration = Narration(parse_corpus(sop_texts()), chat_generator=chat_generator(settings), model_name="none")
    result = narration.with_llm(load_labelled()[0][0])
    assert result.grounded and result.model == DETERMINISTIC
    assert result.rejected and result.rejected[0].startswith("LLM call failed")
