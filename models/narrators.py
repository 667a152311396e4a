"""Narrators: the deterministic one (the default) and the LLM one (any OpenAI-compatible server).

Both see the same facts: the incident and the retrieved SOP sections. The
deterministic narrator states the probable root cause, the evidence (alarms,
counts, times, devices) and the best SOP's steps verbatim with their ids. The
LLM narrator asks a chat model for the same in prose; what it writes is only
published after ``GroundingChecker`` accepts it.
"""

from __future__ import annotations

from haystack import Document, component
from haystack.dataclasses import ChatMessage

from opsloop.models.event_time import format_ms
from opsloop.models.sops import Sop

MAX_EVIDENCE = 5
MAX_SAID = 240  # characters of the root alarm's text or log line quoted in a narration


def utc(ms: int, with_date: bool = False) -> str:
    return format_ms(ms, "%Y-%m-%d %H:%M:%S UTC" if with_date else "%H:%M:%S")


def evidence_line(incident: dict) -> str:
    """Counts, times and devices of the incident's alarms, the most repeated first."""
    members = sorted(incident.get("members") or [], key=lambda m: (-m["count"], m["first_seen_ms"], m["device"]))
    raises = sum(m["count"] for m in members)
    devices = len({m["device"] for m in members})
    line = f"{incident.get('member_count', len(members))} distinct alarm(s)"
    if members:
        first = min(m["first_seen_ms"] for m in members)
        last = max(m["first_seen_ms"] for m in members)
        line += (f", {raises} raise(s) on {devices} device(s), first seen {utc(first)} and last new"
                 f" alarm at {utc(last)}: ")
        shown = [f"{m['device']} ({m['device_type']}) {m['code']} x{m['count']} from {utc(m['first_seen_ms'])}"
                 for m in members[:MAX_EVIDENCE]]
        line += "; ".join(shown)
        if len(members) > MAX_EVIDENCE:
            line += f"; and {len(members) - MAX_EVIDENCE} more"
    line += f". Incident {incident.get('state', 'open')}, updated {utc(incident['updated_ms'])}"
    if incident.get("summary"):
        line += f"; summary: {incident['summary'].strip().rstrip('.')}"
    return line + "."


def root_said(incident: dict) -> str:
    """The root alarm's text and raw log line, quoted on one line; empty when it has neither."""
    roots = [m for m in incident.get("members") or []
             if m.get("device") == incident.get("root_device") and m.get("code") == incident.get("root_code")]
    parts = []
    for m in roots[:1]:
        for label, value in (("text", m.get("text")), ("log", m.get("log_line"))):
            if value:
                parts.append(f'{label} "{" ".join(value.split())[:MAX_SAID]}"')
    return "; ".join(parts) + ("." if parts else "")


def _flatten(section: str) -> str:
    """A section's bullet list as one sentence (bullets would read as steps to the checker)."""
    items = [line.strip().lstrip("-*• ").strip().rstrip(".") for line in section.splitlines() if line.strip()]
    return "; ".join(items) + "." if items else ""


@component
class DeterministicNarrator:
    """Writes the narration from the incident and the best retrieved SOP, with no model."""

    def __init__(self, corpus: dict[str, Sop]):
        self.corpus = corpus

    @component.output_types(text=str)
    def run(self, incident: dict, sop_ids: list[str], documents: list[Document]) -> dict:
        retrieved = list(dict.fromkeys(d.meta["sop_id"] for d in documents))
        best = self.corpus[retrieved[0] if retrieved else sop_ids[0]]
        sections = {d.meta["section"] for d in documents if d.meta["sop_id"] == best.id}
        root = (f"{incident['root_device_type']} {incident['root_device']} raised {incident['root_code']}"
                f" ({incident.get('severity', 'info')}) at {utc(incident['opened_ms'], with_date=True)}")
        lines = [f"Probable root cause: {root}; this matches {best.id} \"{best.title}\" [{best.id} §Scope]."]
        if "Probable causes" in sections:
            lines.append(f"Likely causes: {_flatten(best.sections['Probable causes'])}"
                         f" [{best.id} §Probable causes]")
        lines.append(f"Evidence: {evidence_line(incident)}")
        said = root_said(incident)
        if said:
            lines.append(f"The root alarm says: {said}")
        lines.append(f"Steps from {best.id} [{best.id} §Steps]:")
        lines += [f"{n}. {step}" for n, step in enumerate(best.steps, 1)]
        others = [f"{sid} \"{self.corpus[sid].title}\"" for sid in retrieved[1:]]
        if others:
            lines.append("Also retrieved: " + ", ".join(others) + ".")
        return {"text": "\n".join(lines)}


SYSTEM_PROMPT = (
    "You are a data centre operations assistant. You explain an incident to an operator using ONLY the "
    "procedures given. Never invent steps. Cite a procedure section as [SOP-ID §Section], for example "
    "[SOP-PWR-002 §Steps]."
)


def build_prompt(incident: dict, documents: list[Document], max_sops: int = 1) -> str:
    """The user message: facts first, then the retrieved procedures, then the answer's format."""
    by_sop: dict[str, list[Document]] = {}
    for doc in documents:
        by_sop.setdefault(doc.meta["sop_id"], []).append(doc)
    procedures = []
    for sop_id, docs in list(by_sop.items())[:max_sops]:
        body = "\n".join(f"§{d.meta['section']}:\n{d.content}" for d in docs
                         if d.meta["section"] in ("Scope", "Probable causes", "Steps"))
        procedures.append(f"{sop_id} ({docs[0].meta['title']})\n{body}")
    best = next(iter(by_sop), "SOP-ID")
    return (
        f"Incident: {incident['root_device_type']} {incident['root_device']} raised {incident['root_code']} "
        f"({incident.get('severity', 'info')}).\nEvidence: {evidence_line(incident)}\n\n"
        "Procedures:\n" + "\n\n".join(procedures) + "\n\n"
        "Answer in this format:\n"
        f"Probable root cause: <one sentence> [{best} §Scope]\n"
        "Evidence: <one sentence with the alarm counts and times>\n"
        f"Steps [{best} §Steps]:\n1. <copy step 1 exactly>\n2. <copy step 2 exactly>\n..."
    )


@component
class LlmNarrator:
    """Asks a Haystack chat generator (``OpenAIChatGenerator`` on vLLM in production) for the narration."""

    def __init__(self, chat_generator, max_sops: int = 1):
        self.chat_generator = chat_generator
        self.max_sops = max_sops

    def _messages(self, incident: dict, documents: list[Document]) -> list[ChatMessage]:
        return [ChatMessage.from_system(SYSTEM_PROMPT),
                ChatMessage.from_user(build_prompt(incident, documents, self.max_sops))]

    @component.output_types(text=str)
    def run(self, incident: dict, documents: list[Document]) -> dict:
        replies = self.chat_generator.run(messages=self._messages(incident, documents))["replies"]
        return {"text": (replies[0].text or "") if replies else ""}

    @component.output_types(text=str)
    async def run_async(self, incident: dict, documents: list[Document]) -> dict:
        replies = (await self.chat_generator.run_async(messages=self._messages(incident, documents)))["replies"]
        return {"text": (replies[0].text or "") if replies else ""}
