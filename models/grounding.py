"""The grounding check: a narration may cite only retrieved SOP sections and state only steps of the SOPs it cites.

A citation is written ``[SOP-PWR-002 §Steps]``. Any numbered or bulleted
line is read as a step the operator will follow, so it must be, word for word
(case, spacing and the trailing full stop aside), a step of a SOP the
narration cites. A narration with no citation, a citation of a section that
was not retrieved, or a SOP id that was not retrieved is rejected.

>>> from haystack import Document
>>> from opsloop.models.sops import parse_sop
>>> sop = parse_sop("---\\nid: SOP-T-001\\ntitle: T\\nequipment: [ups]\\ncodes: [X]\\n---\\n"
...                 "## Scope\\nx\\n## Steps\\n1. Read the panel.\\n")
>>> retrieved = [Document(content="1. Read the panel.", meta={"sop_id": "SOP-T-001", "section": "Steps"})]
>>> check = GroundingChecker({sop.id: sop})
>>> check.run("Do this [SOP-T-001 §Steps]:\\n1. Read the panel.", retrieved)["grounded"]
True
>>> check.run("Do this [SOP-T-001 §Steps]:\\n1. Pull the plug.", retrieved)["reasons"]
['step not in the cited SOPs: Pull the plug.']
"""

from __future__ import annotations

import re

from haystack import Document, component

from opsloop.models.sops import Sop

CITATION = re.compile(r"\[\s*(SOP-[A-Z]+-\d+)\s*§\s*([^\]]+?)\s*\]")
SOP_ID = re.compile(r"\bSOP-[A-Z]+-\d+\b")
_STEP_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.+?)\s*$")


def citations(text: str) -> list[tuple[str, str]]:
    """The ``(sop_id, section)`` pairs cited in ``text``, first mention first, without repeats."""
    return list(dict.fromkeys(CITATION.findall(text)))


def step_claims(text: str) -> list[str]:
    """Numbered or bulleted lines of ``text``, with any citation removed."""
    claims = []
    for line in text.splitlines():
        match = _STEP_LINE.match(line)
        if match:
            claim = CITATION.sub("", match.group(1)).strip()
            if claim:
                claims.append(claim)
    return claims


@component
class GroundingChecker:
    """Checks a narration against the retrieved sections; returns ``grounded`` and the reasons when not."""

    def __init__(self, corpus: dict[str, Sop]):
        self.corpus = corpus

    @component.output_types(grounded=bool, reasons=list[str], citations=list[dict])
    def run(self, text: str, documents: list[Document]) -> dict:
        retrieved = {(d.meta["sop_id"], d.meta["section"]) for d in documents}
        retrieved_ids = {sop_id for sop_id, _ in retrieved}
        cited = citations(text)
        reasons = []
        if not text.strip():
            reasons.append("empty narration")
        if not cited:
            reasons.append("no SOP section cited")
        for sop_id, section in cited:
            if (sop_id, section) not in retrieved:
                reasons.append(f"cited section not retrieved: {sop_id} §{section}")
        for sop_id in dict.fromkeys(SOP_ID.findall(text)):
            if sop_id not in retrieved_ids:
                reasons.append(f"SOP not retrieved: {sop_id}")
        cited_sops = [self.corpus[s] for s in dict.fromkeys(s for s, _ in cited) if s in self.corpus]
        for claim in step_claims(text):
            if not any(sop.has_step(claim) for sop in cited_sops):
                reasons.append(f"step not in the cited SOPs: {claim}")
        return {"grounded": not reasons, "reasons": reasons,
                "citations": [{"sop_id": s, "section": sec} for s, sec in cited]}
