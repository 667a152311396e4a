"""Root-cause narration of an incident: query → BM25 + scope retrieval → narrator → grounding check.

``Narration.deterministic`` needs no model. ``Narration.with_llm`` (and its
async twin) asks the chat generator, checks the draft and falls back to the
deterministic narration when the draft is rejected or the call fails, so what
is returned is always grounded. Time is the caller's: the result has no
timestamp or latency; the agent adds them to the ``Narrative``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from haystack import Document

from opsloop.config.site import Glossary
from opsloop.models.grounding import GroundingChecker
from opsloop.models.incident_query import IncidentQueryBuilder
from opsloop.models.narrators import DeterministicNarrator, LlmNarrator
from opsloop.models.sop_retrieval import SopRetriever, device_kinds
from opsloop.models.sops import Sop

DETERMINISTIC = "deterministic"


@dataclass
class Retrieved:
    sop_ids: list[str]  # every SOP, best first
    documents: list[Document]  # the sections of the top_k best: the only citable ones


@dataclass
class NarrationResult:
    text: str
    citations: list[dict]
    grounded: bool
    model: str
    sop_ids: list[str]
    rejected: list[str] = field(default_factory=list)  # why an LLM draft was not used ("" when none was tried)

    def narrative(self, incident: dict, ts_ms: int, latency_ms: float) -> dict:
        """The ``Narrative`` record of this result."""
        return {"incident_id": incident["incident_id"], "site": incident["site"], "ts_ms": ts_ms,
                "text": self.text, "citations": self.citations, "grounded": self.grounded,
                "model": self.model, "latency_ms": latency_ms}


class Narration:
    """The narration pipeline, built once per process (the corpus is indexed at construction)."""

    def __init__(self, corpus: dict[str, Sop], top_k: int = 3,
                 chat_generator=None, model_name: str | None = None, glossary: Glossary | None = None):
        """``glossary``: the site file's own alarm and device-type words (``Site.glossary``); a kind no SOP's
        equipment names is a ``ValueError``, not a word silently read as nothing."""
        self.corpus = corpus
        self.retriever = SopRetriever(self.corpus, top_k=top_k)
        if glossary is None:
            self.query = IncidentQueryBuilder()
        else:
            known = self.retriever.known_kinds
            if unknown := sorted({v for v in glossary.kinds.values() if not device_kinds(known, v)}):
                raise ValueError(f"glossary.kinds: {', '.join(unknown)} name no equipment kind of the SOPs "
                                 f"(known: {', '.join(sorted(known)).lower()})")
            self.query = IncidentQueryBuilder(site_words=glossary.words, site_kinds=glossary.kinds)
        self.deterministic_narrator = DeterministicNarrator(self.corpus)
        self.checker = GroundingChecker(self.corpus)
        self.llm = LlmNarrator(chat_generator) if chat_generator is not None else None
        self.model_name = model_name or "llm"

    def retrieve(self, incident: dict) -> Retrieved:
        out = self.retriever.run(**self.query.run(incident=incident))
        return Retrieved(out["sop_ids"], out["documents"])

    def deterministic(self, incident: dict, retrieved: Retrieved | None = None,
                      rejected: list[str] | None = None) -> NarrationResult:
        retrieved = retrieved or self.retrieve(incident)
        text = self.deterministic_narrator.run(incident=incident, sop_ids=retrieved.sop_ids,
                                               documents=retrieved.documents)["text"]
        check = self.checker.run(text=text, documents=retrieved.documents)
        return NarrationResult(text, check["citations"], check["grounded"], DETERMINISTIC,
                               retrieved.sop_ids, rejected or [])

    def _checked(self, incident: dict, retrieved: Retrieved, draft: str) -> NarrationResult:
        check = self.checker.run(text=draft, documents=retrieved.documents)
        if check["grounded"]:
            return NarrationResult(draft.strip(), check["citations"], True, self.model_name, retrieved.sop_ids)
        return self.deterministic(incident, retrieved, rejected=check["reasons"])

    def with_llm(self, incident: dict) -> NarrationResult:
        """The LLM's narration when it passes the check, else the deterministic one (the reasons kept)."""
        retrieved = self.retrieve(incident)
        if self.llm is None:
            return self.deterministic(incident, retrieved)
        try:
            draft = self.llm.run(incident=incident, documents=retrieved.documents)["text"]
        except Exception as exc:  # a failing endpoint must not lose the narration
            return self.deterministic(incident, retrieved, rejected=[f"LLM call failed: {exc}"])
        return self._checked(incident, retrieved, draft)

    async def draft_async(self, incident: dict, retrieved: Retrieved) -> NarrationResult:
        """Async LLM narration, checked; raises what the call raises (the agent owns timeouts and fallback)."""
        if self.llm is None:
            raise RuntimeError("no LLM configured")
        draft = (await self.llm.run_async(incident=incident, documents=retrieved.documents))["text"]
        return self._checked(incident, retrieved, draft)
