"""Alarms in a site's own language: words and device types read in the English words of the procedures."""

from __future__ import annotations

import re

import pytest

from opsloop.config.assets import sop_texts
from opsloop.models import alarm_glossary, incident_query, sop_retrieval
from opsloop.models.alarm_states import says_no_fault
from opsloop.models.incident_query import ABBREVIATIONS, ascii_folded, in_english, terms, words
from opsloop.models.narrate import Narration
from opsloop.models.sops import parse_corpus
from incidents import incident  # the unit tier's incident record

pytestmark = pytest.mark.unit

# Each written here for this test: one alarm as a site's facility systems word it, and the procedure to open.
IN_THEIR_LANGUAGE = [
    (("ASI-3", "asi", "E104", "Onduleur sur batterie, autonomie restante 6 min"), "SOP-PWR-002"),
    (("NEA-2", "nea", "ST_17", "Startversagen: Motor nicht angesprungen nach 3 Startversuchen"), "SOP-PWR-008"),
    (("DET-FUGA-04", "deteccion_fugas", "AL_12", "Fuga de agua detectada bajo el suelo técnico, zona 3"),
     "SOP-CLG-005"),
    (("SZR-1B", "szr", "A_031", "Brak przełączenia na źródło rezerwowe"), "SOP-PWR-010"),
    (("GE-01", "gruppo_elettrogeno", "AL_44", "Livello gasolio serbatoio basso 12 %"), "SOP-PWR-009"),
    (("KWS-2", "kaeltemaschine", "M_118", "Kältemaschine Störabschaltung Hochdruck"), "SOP-CLG-003"),
]


@pytest.fixture(scope="module")
def corpus():
    return parse_corpus(sop_texts())


def _firsts(corpus) -> list[str]:
    narration = Narration(corpus)
    return [narration.retrieve(incident(root, [])).sop_ids[0] for root, _ in IN_THEIR_LANGUAGE]


def test_an_alarm_in_the_sites_language_finds_its_procedure_and_would_not_without_the_glossary(corpus, monkeypatch):
    assert _firsts(corpus) == [expected for _, expected in IN_THEIR_LANGUAGE]
    monkeypatch.setattr(incident_query, "FOREIGN_WORDS", {})
    monkeypatch.setattr(sop_retrieval, "FOREIGN_KINDS", {})
    assert sum(a == b for a, (_, b) in zip(_firsts(corpus), IN_THEIR_LANGUAGE)) <= 2


def test_accented_letters_keep_a_word_whole():
    assert words("Défaut redresseur") == ["fault", "rectifier"]  # not "d", "faut"
    assert terms("Störung") == terms("Stoerung") == terms("fault")
    assert ascii_folded("Łódź, ærø, straße") == "Lodz, aero, strasse"


def test_no_glossary_word_is_a_word_of_the_procedures_or_an_abbreviation(corpus):
    english = {w for sop in corpus.values() for text in (sop.title, *sop.sections.values(), *sop.steps, *sop.codes)
               for w in re.findall(r"[a-z0-9]+", ascii_folded(text).lower())}
    foreign = {w for language in alarm_glossary.WORDS.values() for w in language}
    assert not foreign & english
    assert not foreign & set(ABBREVIATIONS)


def test_glossary_keys_are_folded_words_and_kinds_are_the_procedures_kinds(corpus):
    known = {e.upper() for sop in corpus.values() for e in sop.equipment}
    for language in alarm_glossary.WORDS.values():
        assert all(re.fullmatch(r"[a-z0-9]{3,}", word) and meaning == meaning.lower() for word, meaning in
                   language.items())
    for language in alarm_glossary.KINDS.values():
        assert all(re.fullmatch(r"[A-Z0-9]+(?:_[A-Z0-9]+)?", word) and kind in known for word, kind in language.items())


def test_a_member_reporting_a_normal_state_in_its_language_is_context_not_a_fault():
    restored = "USV 21A Normalbetrieb (Netz) wiederhergestellt"
    assert says_no_fault(in_english(restored)) and not says_no_fault(restored)
    assert not says_no_fault(in_english("USV 21A Batteriebetrieb"))


def test_a_grid_word_names_the_grid_not_an_outage():
    # A power-quality analyser on the grid ("analizzatore rete") is no utility loss; "Netzausfall" is.
    assert "loss" not in terms("analizzatore rete") and "loss" in terms("Netzausfall")
