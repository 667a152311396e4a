"""Members seen at the same moment as the root alarm: when they count as seen before it."""

from __future__ import annotations

import pytest

from opsloop.config.assets import sop_texts
from opsloop.models.incident_query import IncidentQueryBuilder
from opsloop.models.narrate import Narration
from opsloop.models.sop_relations import ANY, AlarmReading, Relations, upstream_cause, walk_upstream
from opsloop.models.sops import parse_corpus

pytestmark = pytest.mark.unit


def test_a_hand_over_to_any_fault_takes_a_member_at_the_same_moment_only_when_it_names_its_procedure():
    hands_over_to_any = Relations(brings={}, hands_over={"F": frozenset({ANY})})
    assert walk_upstream(hands_over_to_any, "F", [AlarmReading("X", 0.0, named=True)]) == "X"
    assert walk_upstream(hands_over_to_any, "F", [AlarmReading("X", 0.0)]) == "F"
    assert walk_upstream(hands_over_to_any, "F", [AlarmReading("X", -1.0, sure=True)]) == "X"  # before the root


def test_a_root_on_several_devices_takes_a_sure_member_at_the_same_moment():
    relations = Relations(brings={"R": frozenset({"B"})}, hands_over={})
    assert upstream_cause(relations, "R", [AlarmReading("M", 0.0, sure=True)], root_devices=3) == "M"
    assert upstream_cause(relations, "R", [AlarmReading("M", 0.0)], root_devices=3) == ""  # read from words only
    assert upstream_cause(relations, "R", [AlarmReading("M", 0.0, sure=True)], root_devices=1) == ""
    assert upstream_cause(relations, "R", [AlarmReading("B", 0.0, sure=True)], root_devices=3) == ""  # R brings B


def test_an_alarm_read_alone_says_whether_its_device_is_of_its_procedures_kind():
    narration = Narration(parse_corpus(sop_texts()))
    builder = IncidentQueryBuilder()
    on_its_kind = builder._alarm("PROC_EXIT", "subnet_manager", "ib-sm-1", "opensm exited on signal 11")
    words_only = builder._alarm("PROC_EXIT", "device", "d1", "opensm exited on signal 11")
    assert narration.retriever.reading_alone(on_its_kind) == ("SOP-NET-007", False, True)
    assert narration.retriever.reading_alone(words_only)[2] is False
