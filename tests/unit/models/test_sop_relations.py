"""What the SOP texts say about each other (a fault brings alarms, a step hands over) and the walk upstream."""

from __future__ import annotations

import pytest

from opsloop.config.assets import sop_texts
from opsloop.models.incident_query import IncidentQueryBuilder, terms
from opsloop.models.sop_relations import (ANY, AlarmReading, Relations, read_relations, states, upstream_cause,
                                          walk_upstream, without_hand_overs)
from opsloop.models.sop_retrieval import SopRetriever, index_text
from opsloop.models.sops import parse_corpus, parse_sop

pytestmark = pytest.mark.unit


def _sop(sid: str, title: str, scope: str, steps: list[str], symptoms: str = "") -> tuple[str, str]:
    body = "\n".join(f"{n}. {s}" for n, s in enumerate(steps, 1))
    extra = f"## Symptoms\n{symptoms}\n" if symptoms else ""
    return f"{sid}.md", (f"---\nid: {sid}\ntitle: {title}\nequipment: [x]\ncodes: [{sid.replace('-', '_')}_CODE]\n"
                         f"---\n# {title}\n\n## Scope\n{scope}\n{extra}## Steps\n{body}\n")


TOY = dict([
    _sop("SOP-T-001", "Mains loss", "The mains feed is gone. Downstream widget units go on reserve.",
         ["Call the grid operator."]),
    _sop("SOP-T-002", "Widget on reserve", "A widget runs from its reserve.",
         ["If the mains is gone, follow the mains loss procedure.", "Watch the reserve."],
         symptoms="- Often follows a blower stop in the room."),
    _sop("SOP-T-003", "Blower stop", "A blower stopped. Widgets heat up.",
         ["If widgets heat up, follow the widget on reserve procedure.", "Restart the blower."]),
    _sop("SOP-T-004", "Panel alarm", "A panel raised an alarm.",
         ["Find the alarm on the devices it serves and follow their procedure first."]),
])


def test_brings_and_hand_overs_are_read_from_the_texts():
    relations = read_relations(parse_corpus(TOY))
    assert relations.brings["SOP-T-001"] == {"SOP-T-002"}  # "Downstream widget units go on reserve"
    assert "SOP-T-002" in relations.brings["SOP-T-003"]  # "Often follows a blower stop": read the other way round
    assert relations.hands_over["SOP-T-002"] == {"SOP-T-001"}  # "follow the mains loss procedure"
    assert relations.hands_over["SOP-T-003"] == set()  # a hand-over to what a blower stop itself brings: escalation
    assert relations.hands_over["SOP-T-004"] == {ANY}  # "follow their procedure first"


def test_the_corpus_relations_name_upstream_faults():
    relations = read_relations(parse_corpus(sop_texts()))
    assert "SOP-PWR-002" in relations.brings["SOP-PWR-001"]  # utility loss: downstream UPS units go on battery
    assert "SOP-PWR-002" in relations.brings["SOP-PWR-013"]  # power quality: UPS units briefly on battery
    assert "SOP-NET-004" in relations.brings["SOP-NET-003"]  # switch down: many link down alarms behind it
    assert "SOP-PWR-006" in relations.brings["SOP-PWR-011"]  # overcurrent often follows the loss of the partner feed
    assert "SOP-NET-003" not in relations.brings["SOP-NET-004"]  # "an interface on a switch ... is down" defines it
    assert "SOP-PWR-008" not in relations.brings["SOP-PWR-001"]  # "after a utility loss" is a circumstance
    assert "SOP-PWR-001" in relations.hands_over["SOP-PWR-002"] and "SOP-PWR-011" in relations.hands_over["SOP-PWR-006"]
    assert "SOP-PWR-004" in relations.hands_over["SOP-PWR-002"]  # on battery with the input normal: the rectifier
    assert "SOP-GPU-004" in relations.brings["SOP-GPU-007"]  # a failed system fan: the node's GPUs throttle
    assert relations.hands_over["SOP-CLG-001"] == set()  # its "follow the high inlet temperature procedure" escalates
    assert relations.hands_over["SOP-SLM-002"] == {"SOP-NET-008", "SOP-GPU-005"}  # hung mounts, NVLink errors
    assert relations.hands_over["SOP-PWR-013"] == {"SOP-PWR-001"}  # "if a phase or a whole feed reads zero"


def test_a_hand_over_names_another_procedure_so_its_words_stay_out_of_the_index():
    slm = parse_corpus(sop_texts())["SOP-SLM-002"]
    assert "unreachable" in " ".join(slm.steps)
    indexed = index_text(slm).split()
    assert terms("unreachable")[0] not in indexed  # the storage procedure's title word, not a stuck job's
    assert terms("NVLink")[0] not in indexed and terms("mounts")[0] in indexed  # the condition goes, the step stays
    assert without_hand_overs("Check the zone: if so, follow the high inlet temperature procedure.") == "Check the zone:."


def _coded(sid: str, title: str, codes: str, symptoms: str = "") -> str:
    return (f"---\nid: {sid}\ntitle: {title}\nequipment: [x]\ncodes: [{codes}]\n---\n# {title}\n\n"
            f"## Scope\nIt happened.\n## Symptoms\n{symptoms}\n## Steps\n1. Look.\n")


def test_a_cause_named_in_one_word_is_read_only_where_the_word_stands_alone():
    relations = read_relations(parse_corpus({
        "SOP-T-010.md": _coded("SOP-T-010", "Pump fault", "PUMP_FAULT",
                       "- Low level may point to a leak.\n- Often follows a burst of pump starts."),
        "SOP-T-011.md": _coded("SOP-T-011", "Water leak detected", "LEAK_ALARM"),
        "SOP-T-012.md": _coded("SOP-T-012", "Burst alarm", "BURST_ALARM"),
        "SOP-T-013.md": _coded("SOP-T-013", "Drip tray wet", "DRIP_TRAY",
                       "- May point to a leak."),
        "SOP-T-014.md": _coded("SOP-T-014", "Tank low", "TANK_LOW", "- Pumps run dry and leak."),
    }))
    assert "SOP-T-010" in relations.brings["SOP-T-011"]  # "may point to a leak": a leak brings the pump's alarms
    assert "SOP-T-010" not in relations.brings["SOP-T-012"]  # "a burst of pump starts" is no burst alone
    assert "SOP-T-013" in relations.brings["SOP-T-011"]  # a sentence opening on the cause names it too
    assert "SOP-T-011" in relations.brings["SOP-T-014"]  # what a fault brings, named in one word too


def test_the_corpus_reads_a_leak_behind_a_cdu_and_a_cdu_behind_gpu_throttling():
    relations = read_relations(parse_corpus(sop_texts()))
    assert "SOP-CLG-007" in relations.brings["SOP-CLG-005"]  # "Low reservoir level may point to a leak"
    assert "SOP-GPU-004" in relations.brings["SOP-CLG-007"]  # "GPUs in the racks heat up fast and throttle"
    assert "SOP-PWR-006" not in relations.brings["SOP-SLM-004"]  # "a burst of GPU jobs starting together"
    assert "SOP-PWR-006" not in relations.brings["SOP-PWR-008"]


def test_a_phrase_is_stated_only_when_its_words_come_close_together():
    assert states(terms("Downstream UPS units go on battery"), terms("UPS on battery"))
    assert not states(terms("the UPS feeds racks whose PDUs have a battery"), terms("UPS on battery"))


RELATIONS = Relations(brings={"A": frozenset({"B"}), "B": frozenset({"C"})},
                      hands_over={"D": frozenset({"A"}), "F": frozenset({ANY})})


def test_the_walk_goes_up_one_explaining_member_at_a_time():
    readings = [AlarmReading("B", -5.0), AlarmReading("A", -10.0), AlarmReading("E", -20.0)]
    assert walk_upstream(RELATIONS, "C", readings, steps=2) == "A"  # B brings C, A brings B
    assert walk_upstream(RELATIONS, "C", readings, steps=1) == "B"
    assert walk_upstream(RELATIONS, "D", [AlarmReading("A", 30.0)]) == "A"  # named hand-over: timing does not matter
    assert walk_upstream(RELATIONS, "B", [AlarmReading("C", -30.0)]) == "B"  # C explains nothing about B


def test_a_hand_over_to_any_fault_takes_the_earliest_member_seen_first():
    assert walk_upstream(RELATIONS, "F", [AlarmReading("E", 5.0)]) == "F"
    earlier, earliest = AlarmReading("B", -5.0, sure=True), AlarmReading("E", -50.0, sure=True)
    assert walk_upstream(RELATIONS, "F", [earlier, earliest], steps=1) == "E"


def test_a_hand_over_to_any_fault_follows_only_a_member_that_surely_points_to_one():
    by_kind_elsewhere = AlarmReading("E", -50.0, same_device=False, named=False, sure=True)
    by_kind_on_the_root = AlarmReading("E", -50.0, same_device=True, named=False, sure=True)
    named_on_the_root = AlarmReading("E", -50.0, same_device=True, named=True, sure=True)
    assert walk_upstream(RELATIONS, "F", [by_kind_elsewhere]) == "E"  # a BMC's SEL before a node drained
    assert walk_upstream(RELATIONS, "F", [by_kind_on_the_root]) == "F"  # the node's own prolog error, read as an Xid
    assert walk_upstream(RELATIONS, "F", [named_on_the_root]) == "E"  # the node's own Xid 79


def test_a_hand_over_to_any_fault_does_not_follow_an_effect_of_the_roots_own_fault():
    lost_feed = Relations(brings={"FEED": frozenset({"OVERCURRENT"})}, hands_over={"FEED": frozenset({ANY})})
    warning, trip = AlarmReading("OVERCURRENT", -40.0, sure=True), AlarmReading("TRIP", -1.0, named=True, sure=True)
    assert walk_upstream(lost_feed, "FEED", [warning, trip]) == "TRIP"  # the partner's overcurrent comes of a lost feed
    assert walk_upstream(lost_feed, "FEED", [warning]) == "FEED"


def test_where_each_fault_brings_the_other_the_one_seen_first_is_the_cause():
    mutual = Relations(brings={"P": frozenset({"Q"}), "Q": frozenset({"P"})}, hands_over={})
    assert walk_upstream(mutual, "Q", [AlarmReading("P", -8.0)]) == "P"  # the pump failed before the chiller tripped
    assert walk_upstream(mutual, "Q", [AlarmReading("P", 90.0)]) == "Q"  # the header warmed after the trip
    # a chiller alarm at -30 s reads as the root's own fault: a header reading at -20 s came after it
    assert walk_upstream(mutual, "Q", [AlarmReading("Q", -30.0), AlarmReading("P", -20.0)]) == "Q"
    assert walk_upstream(RELATIONS, "C", [AlarmReading("B", 90.0)]) == "B"  # one way only: timing does not matter


def test_the_corpus_reads_a_chiller_trip_and_a_pump_failure_each_bringing_the_other():
    relations = read_relations(parse_corpus(sop_texts()))
    assert "SOP-CLG-003" in relations.brings["SOP-CLG-006"]  # chillers on the loop trip on low evaporator flow
    assert "SOP-CLG-006" in relations.brings["SOP-CLG-003"]  # then a chilled water supply temperature high alarm


def test_a_root_on_several_devices_takes_the_fault_seen_before_it_elsewhere():
    lead = AlarmReading("E", -60.0)
    assert upstream_cause(RELATIONS, "B", [lead], root_devices=3) == "E"
    assert upstream_cause(RELATIONS, "B", [lead], root_devices=1) == ""
    assert upstream_cause(RELATIONS, "B", [AlarmReading("E", -60.0, same_device=True)], root_devices=3) == ""
    assert upstream_cause(RELATIONS, "A", [AlarmReading("B", -60.0)], root_devices=3) == ""  # A's own fault brings B


def test_an_alarm_raised_long_before_a_root_on_several_devices_is_its_circumstance():
    hours_ago = AlarmReading("E", -4 * 3600.0, sure=True)
    assert upstream_cause(RELATIONS, "B", [hours_ago], root_devices=3) == "E"  # no horizon given: any time before
    assert upstream_cause(RELATIONS, "B", [hours_ago], root_devices=3, within_s=3600.0) == ""
    assert upstream_cause(RELATIONS, "B", [AlarmReading("E", -600.0)], root_devices=3, within_s=3600.0) == "E"
    # the walk reads every member: a fault that brings the root's alarm explains it however long ago it came
    assert upstream_cause(RELATIONS, "C", [AlarmReading("B", -4 * 3600.0)], within_s=3600.0) == "B"


def _incident(members: list[dict]) -> dict:
    root = {"device": "ups-1a", "device_type": "ups", "code": "upsTrapOnBattery", "count": 1, "first_seen_ms": 10_000,
            "text": "UPS switched to battery, runtime remaining 14 min"}
    return {"root_device": "ups-1a", "root_device_type": "ups", "root_code": "upsTrapOnBattery", "summary": "",
            "members": [root, *members]}


METER = {"device": "mv-incomer-1", "device_type": "meter", "code": "PQM-U-LOSS", "count": 1, "first_seen_ms": 9_000,
         "text": "Utility incomer: mains failure, grid outage"}


@pytest.fixture(scope="module")
def retriever():
    return SopRetriever(parse_corpus(sop_texts()))


def test_a_member_upstream_of_the_root_leads_the_ranking(retriever):
    query = IncidentQueryBuilder()
    alone = retriever.run(**query.run(_incident([])))["sop_ids"]
    with_cause = retriever.run(**query.run(_incident([METER])))["sop_ids"]
    assert alone[0] == "SOP-PWR-002" and with_cause[0] == "SOP-PWR-001"
    normal = {**METER, "text": "Utility incomer: mains failure, voltages now normal"}
    out = query.run(_incident([normal]))
    assert out["member_alarms"][0]["says_normal"] and retriever.upstream_cause(out["root_alarm"],
                                                                              out["member_alarms"]) == ""


def test_a_fault_brought_although_a_state_is_read_with_its_circumstance():
    toy = dict([
        *TOY.items(),
        _sop("SOP-T-005", "Switch stuck", "A switch did not move.", ["Move it by hand."],
             symptoms="- Downstream widget units go on reserve although a spare blower is running."),
    ])
    relations = read_relations(parse_corpus(toy))
    assert "SOP-T-002" in relations.brings["SOP-T-005"]
    assert relations.brings_although[("SOP-T-005", "SOP-T-002")] == (frozenset(terms("a spare blower is running")),)
    assert ("SOP-T-001", "SOP-T-002") not in relations.brings_although


def test_the_walk_prefers_the_fault_the_shown_state_excuses():
    relations = Relations(brings={"U": frozenset({"R"}), "S": frozenset({"R"})}, hands_over={},
                          brings_although={("S", "R"): (frozenset({"generat", "run"}),)})
    loss, stuck = AlarmReading("U", -2.0, sure=True, raised=True), AlarmReading("S", 14.0, sure=True, raised=True)
    running = frozenset({"generat", "run", "400", "v"})
    assert walk_upstream(relations, "R", [loss, stuck]) == "U"  # the earliest, with no state shown
    assert walk_upstream(relations, "R", [loss, stuck], shown=(running,)) == "S"
    assert walk_upstream(relations, "R", [loss, stuck], shown=(frozenset({"generat"}),)) == "U"  # not running
    state_only = AlarmReading("S", 14.0, sure=True)  # "Transferred to Emergency": a state, no fault stated
    assert walk_upstream(relations, "R", [loss, state_only], shown=(running,)) == "U"


GENSET = {"device": "gen-2", "device_type": "genset", "code": "GEN_READY", "count": 1, "first_seen_ms": 22_000,
          "text": "Genset running 400 V 50.0 Hz, ready to load"}


def test_a_transfer_switch_that_failed_with_a_generator_running_is_the_fault_to_open(retriever):
    query = IncidentQueryBuilder()
    failed = {"device": "ats-a", "device_type": "ats", "code": "XFER_FAIL", "count": 1, "first_seen_ms": 24_000,
              "text": "Transfer to source 2 failed: position II not reached within 6 s"}
    assert retriever.run(**query.run(_incident([METER, failed])))["sop_ids"][0] == "SOP-PWR-001"  # no generator seen
    assert retriever.run(**query.run(_incident([METER, GENSET, failed])))["sop_ids"][0] == "SOP-PWR-010"
    transferred = {**failed, "code": "XFER_EMERG", "text": "Transferred to Emergency"}  # the switch did its job
    assert retriever.run(**query.run(_incident([METER, GENSET, transferred])))["sop_ids"][0] == "SOP-PWR-001"
    low_fuel = {**GENSET, "text": "Genset running 400 V 50.0 Hz, fuel level low"}
    states_said = [m["said"] for m in query.run(_incident([METER, low_fuel, failed]))["member_states"]]
    assert states_said[1] == "Genset running 400 V 50.0 Hz"  # a member's normal states only, its fault left out
    requested = {**GENSET, "text": "Remote start - emergency run requested by ATS-A"}  # not running yet
    assert retriever.run(**query.run(_incident([METER, requested, failed])))["sop_ids"][0] == "SOP-PWR-001"


def _gensets_low_on_fuel(outage_before_s: float) -> dict:
    """Two gensets' day tanks low, ``outage_before_s`` after the grid meter saw the outage."""
    root = {"device": "dg-3", "device_type": "genset", "code": "DT_LVL_LO", "count": 1, "first_seen_ms": 50_000_000,
            "text": "Day tank level 18 %, refill pump running, engine on load 76 %"}
    other = {**root, "device": "dg-4", "first_seen_ms": 50_240_000, "text": "Day tank level 22 %"}
    grid = {"device": "hv-meter-1", "device_type": "meter", "code": "U_INTERRUPT", "count": 1,
            "first_seen_ms": 50_000_000 - int(outage_before_s * 1000), "text": "Mains failure: 0 V on L1 L2 L3"}
    return {"root_device": "dg-3", "root_device_type": "genset", "root_code": "DT_LVL_LO", "summary": "",
            "members": [root, other, grid]}


def test_gensets_low_on_fuel_hours_into_an_outage_open_the_generator_procedure(retriever):
    query = IncidentQueryBuilder()
    hours_in = query.run(_gensets_low_on_fuel(5 * 3600.0))
    assert hours_in["lead_words"] == []  # the outage is the circumstance, not a lead
    assert retriever.run(**hours_in)["sop_ids"][0] == "SOP-PWR-009"
    assert IncidentQueryBuilder(lead_within_s=6 * 3600.0).run(_gensets_low_on_fuel(5 * 3600.0))["lead_words"]
    everything_before = SopRetriever(retriever.corpus, lead_within_s=float("inf"))
    assert everything_before.run(**IncidentQueryBuilder(lead_within_s=float("inf")).run(
        _gensets_low_on_fuel(5 * 3600.0)))["sop_ids"][0] == "SOP-PWR-001"  # as before: the outage read as the cause
