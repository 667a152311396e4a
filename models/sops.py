"""The SOP corpus: verified standard operating procedures, parsed from Markdown.

Each file in ``config/sops/`` has YAML front matter (``id``, ``title``,
``equipment``, ``codes``), a ``# Title`` and ``## Section`` headings; the
``Steps`` section is a numbered list. A malformed file is an error that names
the file and the problem: a procedure we cannot parse is one we cannot cite.

>>> sop = parse_sop('''---
... id: SOP-X-001
... title: Test
... equipment: [ups]
... codes: [UPS_ON_BATTERY]
... ---
... # Test
...
... ## Scope
... A UPS on battery.
...
... ## Steps
... 1. Read the panel.
... 2. Check the breaker.
... ''')
>>> sop.id, sop.steps, list(sop.sections)
('SOP-X-001', ('Read the panel.', 'Check the breaker.'), ['Scope', 'Steps'])
>>> sop.has_step("check the  breaker")
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import yaml

REQUIRED_SECTIONS = ("Scope", "Steps")
_STEP = re.compile(r"^(\d+)\.\s+(.+)$")
_SECTION = re.compile(r"^##\s+(.+?)\s*$")


class SopError(ValueError):
    """A SOP file that does not follow the corpus format."""


@dataclass(frozen=True)
class Sop:
    id: str
    title: str
    equipment: tuple[str, ...]
    codes: tuple[str, ...]
    sections: dict[str, str]  # heading → body text, in file order
    steps: tuple[str, ...]  # the numbered steps, without their numbers

    def has_step(self, text: str) -> bool:
        """True when ``text`` is one of this SOP's steps (case and spacing ignored)."""
        wanted = normalize_step(text)
        return any(normalize_step(step) == wanted for step in self.steps)


def normalize_step(text: str) -> str:
    """Comparison form of a step: lower case, single spaces, no trailing full stop."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def parse_sop(text: str, source: str = "<string>") -> Sop:
    if not text.startswith("---\n"):
        raise SopError(f"{source}: must start with '---' front matter")
    try:
        head, body = text[4:].split("\n---\n", 1)
        meta = yaml.safe_load(head) or {}
    except (ValueError, yaml.YAMLError) as exc:
        raise SopError(f"{source}: unreadable front matter: {exc}") from exc
    missing = [k for k in ("id", "title", "equipment", "codes") if not meta.get(k)]
    if missing:
        raise SopError(f"{source}: front matter lacks {', '.join(missing)}")
    sections: dict[str, list[str]] = {}
    current = None
    for line in body.splitlines():
        heading = _SECTION.match(line)
        if heading:
            current = heading.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    absent = [s for s in REQUIRED_SECTIONS if s not in sections]
    if absent:
        raise SopError(f"{source}: missing section(s) {', '.join(absent)}")
    steps = []
    for line in sections["Steps"]:
        match = _STEP.match(line.strip())
        if match:
            if int(match.group(1)) != len(steps) + 1:
                raise SopError(f"{source}: step {match.group(1)} out of order (expected {len(steps) + 1})")
            steps.append(match.group(2).strip())
    if not steps:
        raise SopError(f"{source}: the Steps section has no numbered steps")
    return Sop(id=str(meta["id"]), title=str(meta["title"]),
               equipment=tuple(str(e) for e in meta["equipment"]), codes=tuple(str(c) for c in meta["codes"]),
               sections={name: "\n".join(lines).strip() for name, lines in sections.items()},
               steps=tuple(steps))


def parse_corpus(texts: Mapping[str, str]) -> dict[str, Sop]:
    """Every SOP of ``texts`` (Markdown by file name) by id; ids must be unique and match the file name."""
    corpus: dict[str, Sop] = {}
    for name, text in texts.items():
        if name.upper() == "README.MD":
            continue
        sop = parse_sop(text, source=name)
        if sop.id != name.removesuffix(".md"):
            raise SopError(f"{name}: id {sop.id} does not match the file name")
        if sop.id in corpus:
            raise SopError(f"{name}: duplicate id {sop.id}")
        corpus[sop.id] = sop
    if not corpus:
        raise SopError("no SOP files")
    return corpus
