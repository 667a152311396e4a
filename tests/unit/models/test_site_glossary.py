"""A site file's own alarm words: a language the shipped glossary lacks, read in the SOPs' English."""

from __future__ import annotations

import pytest

from opsloop.config.assets import sop_texts
from opsloop.config.site import Glossary
from opsloop.models.narrate import Narration
from opsloop.models.sops import parse_corpus

pytestmark = pytest.mark.unit

# Slovenian words of a diesel genset's controller, none of them in the shipped glossary
WORDS = {"nizek": "low", "nivo": "level", "goriva": "fuel", "dnevni": "day", "rezervoar": "tank",
         "neuspesen": "failed", "zagon": "start", "poskusi": "attempts"}
KINDS = {"DEA": "generator"}


def _genset_alarm(code: str, text: str) -> dict:
    alarm = {"device": "DEA-2", "device_type": "dea", "code": code, "count": 1, "first_seen_ms": 1_000, "text": text}
    return {"incident_id": "lj-1", "site": "lj", "root_device": "DEA-2", "root_device_type": "dea",
            "root_code": code, "summary": "", "members": [alarm]}


LOW_FUEL = _genset_alarm("NIZEK_NIVO_GORIVA", "Dnevni rezervoar: nizek nivo goriva 15 %")
NO_START = _genset_alarm("NEUSPESEN_ZAGON", "Neuspešen zagon: 3 poskusi")


@pytest.fixture(scope="module")
def corpus():
    return parse_corpus(sop_texts())


def test_the_sites_words_and_kinds_open_the_generator_procedures(corpus):
    site = Narration(corpus, glossary=Glossary(words=WORDS, kinds=KINDS))
    assert site.retrieve(LOW_FUEL).sop_ids[0] == "SOP-PWR-009"
    assert site.retrieve(NO_START).sop_ids[0] == "SOP-PWR-008"  # the words tell the two generator faults apart
    shipped = Narration(corpus)  # without them the alarms say nothing the SOPs know
    assert not {"SOP-PWR-008", "SOP-PWR-009"} & {shipped.retrieve(i).sop_ids[0] for i in (LOW_FUEL, NO_START)}
    kinds_only = Narration(corpus, glossary=Glossary(words={}, kinds=KINDS))  # a generator, but which fault?
    assert kinds_only.retrieve(NO_START).sop_ids[0] == kinds_only.retrieve(LOW_FUEL).sop_ids[0]


def test_a_kind_no_procedure_names_is_refused(corpus):
    with pytest.raises(ValueError, match="glossary.kinds: dieselmotor name no equipment kind"):
        Narration(corpus, glossary=Glossary(words={}, kinds={"DEA": "dieselmotor"}))


def test_the_sites_words_are_read_before_the_shipped_glossary(corpus):
    # "awaria" is Polish for a failure in the shipped glossary; this site uses it for its fuel alarm's own word
    mine = _genset_alarm("AWARIA", "awaria")
    site = Narration(corpus, glossary=Glossary(words={"awaria": "low fuel"}, kinds=KINDS))
    assert site.retrieve(mine).sop_ids[0] == "SOP-PWR-009"
