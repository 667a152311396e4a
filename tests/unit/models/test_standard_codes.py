"""Public standard identifiers (J1939, IEEE C37.2, IPMI, InfiniBand traps, Xid numbers) read as words."""

from __future__ import annotations

import pytest

from opsloop.config.assets import sop_texts
from opsloop.models.incident_query import terms
from opsloop.models.narrate import Narration
from opsloop.models.sops import parse_corpus
from opsloop.models.standard_codes import OS_CRASHED, OS_HUNG, meanings
from incidents import incident as _incident  # the unit tier's incident record

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def narration():
    return Narration(parse_corpus(sop_texts()))


@pytest.mark.parametrize("text, meaning", [
    ("SPN 100 FMI 1", "genset engine oil pressure low"),
    ("J1939_SPN110_FMI16", "genset engine coolant temperature high"),
    ("DM1 spn=96 fmi=18", "genset fuel level low"),
    ("SPN 190 FMI 0", "genset overspeed"),
])
def test_a_j1939_pair_reads_as_the_parameter_and_its_failure_mode(text, meaning):
    assert meanings(text) == [meaning]


def test_an_unknown_j1939_parameter_or_mode_says_nothing():
    assert meanings("SPN 9999 FMI 1") == [] and meanings("SPN 110 FMI 25") == []


@pytest.mark.parametrize("text, meaning", [
    ("50/51 pickup", "switchgear protection relay overcurrent trip"),
    ("PROT_50_51_TRIP", "switchgear protection relay overcurrent trip"),
    ("51N trip", "switchgear protection relay earth fault trip"),
    ("ANSI 87T operated", "transformer fault differential protection trip"),
    ("Io> stage 2", "switchgear protection relay earth fault trip"),
    ("U< trip", "undervoltage"),
    ("52-Q1 open", "circuit breaker"),
])
def test_a_protection_relay_number_reads_as_its_function(text, meaning):
    assert meaning in meanings(text)


@pytest.mark.parametrize("text", ["Rack 27 inlet 24 C", "25G port up", "50G uplink", "Ethernet1/12 CRC",
                                  "10/25G optic", "row 51 door", "sel 0x01A3"])
def test_numbers_outside_a_standard_context_say_nothing(text):
    assert meanings(text) == []


def test_an_ipmi_sel_record_reads_as_its_sensor_and_event():
    assert meanings("SEL_0x08_0x6f_03") == ["power supply input lost"]
    assert meanings("SEL 0Ch 6Fh 04h") == ["memory device disabled"]
    assert meanings("Sensor Type 0x04") == ["fan"]


def test_an_infiniband_trap_and_an_unlisted_xid_read_as_their_fault():
    assert meanings("SM trap 129 lid 0x1c port 7") == ["infiniband local link integrity errors"]
    assert meanings("NVRM: Xid (PCI:0000:3b:00): 145, pid=1") == ["nvlink error"]
    assert meanings("Xid 79") == []  # listed by number in a procedure: its code says it


def test_the_meanings_join_the_words_an_alarm_is_read_by():
    assert {"coolant", "temperatur", "high"} <= set(terms("J1939_SPN110_FMI15"))


@pytest.mark.parametrize("root, expected", [
    (("gen-2", "controller", "DM1_ACTIVE", "SPN 100 FMI 1"), "SOP-PWR-009"),  # read as an ATS or bypass fault
    (("mv-relay-3", "device", "PROT_TRIP", "51N trip, 52-Q4 open"), "SOP-PWR-012"),  # read as a branch breaker
])
def test_an_alarm_worded_as_a_standard_number_finds_its_procedure(narration, root, expected):
    assert narration.retrieve(_incident(root, [])).sop_ids[0] == expected


def test_a_power_supply_input_lost_sel_record_ranks_the_feed_procedure(narration):
    ranked = narration.retrieve(_incident(("node-7-bmc", "device", "SEL_0x08_0x6f_03", ""), [])).sop_ids
    assert "SOP-PWR-011" in ranked[:2]


def test_pcie_and_gpu_driver_messages_that_say_a_gpu_is_gone_are_read_as_such():
    assert "pcie link down" in meanings("pcieport 0000:17:01.0: AER: Uncorrected (Fatal) error received: Surprise Down Error")
    assert "gpu not detected" in meanings("NVRM: GPU 0000:3a:00.0: RmInitAdapter failed! (0x22:0x38:852)")
    assert "gpu lost" in meanings("Unable to determine the device handle for GPU 0000:9b:00.0: Unknown Error")
    assert meanings("pcieport 0000:17:01.0: AER: Corrected error received: Receiver Error") == []


def test_a_drained_node_whose_gpu_link_went_down_first_opens_the_fallen_off_the_bus_procedure(narration):
    root = ("slurmctld", "slurm", "NODE_DRAIN", "node gpu-r2-07 set to DRAIN: gres/gpu count reported lower than "
            "configured (7 < 8)")
    link = [("gpu-r2-07", "gpu_node", "kernel", "pcieport 0000:5c:02.0: AER: Uncorrected (Fatal) error received: "
             "Surprise Down Error", -20),
            ("gpu-r2-07", "gpu_node", "kernel", "NVRM: GPU 0000:5e:00.0: RmInitAdapter failed!", -8)]
    assert narration.retrieve(_incident(root, [])).sop_ids[0] == "SOP-SLM-001"
    assert narration.retrieve(_incident(root, link)).sop_ids[0] == "SOP-GPU-002"


def test_ipmi_events_that_say_a_nodes_operating_system_stopped_are_read_as_such():
    assert meanings("SEL 0x20 0x6f 01") == [OS_CRASHED]  # OS Critical Stop, run-time critical stop
    assert meanings("iLO 6 IML: OS Critical Stop - Run-time Critical Stop detected") == [OS_CRASHED]
    assert meanings("SEL: Watchdog 2 #0x81 Timer expired, Hard reset - Asserted") == [OS_HUNG]
    assert meanings("Watchdog 2 pre-timeout interrupt configured") == []


def test_a_node_down_behind_an_os_crash_opens_the_node_down_procedure(narration):
    root = ("slurmctld", "slurm", "NODE_FAIL", "Killing JobId=2290031 on failed node h2r12n06")
    crash = [("h2r12n06-bmc", "bmc", "SEL_OS_STOP", "OS Critical Stop #0x46 | Run-time critical stop | Asserted", -95)]
    assert narration.retrieve(_incident(root, crash)).sop_ids[0] == "SOP-GPU-006"
