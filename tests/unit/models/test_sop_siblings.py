"""Telling sibling procedures apart from the evidence: how codes, device names and member alarms are read."""

from __future__ import annotations

import pytest

from opsloop.config.assets import sop_texts
from opsloop.models.alarm_states import reports_any_normal, reports_normal, says_no_fault
from opsloop.models.incident_query import IncidentQueryBuilder, code_key, terms
from opsloop.models.narrate import Narration
from opsloop.models.sop_relations import ANY, AlarmReading, Relations, upstream_cause, walk_upstream
from opsloop.models.sop_retrieval import device_kinds
from opsloop.models.sops import parse_corpus
from incidents import incident as _incident  # the unit tier's incident record

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def narration():
    return Narration(parse_corpus(sop_texts()))


def test_a_unit_reported_running_or_online_is_a_normal_state():
    assert reports_normal("Running 58 %") and reports_normal("Online")
    assert reports_any_normal("Online, input 401 V 50.0 Hz, load 38 %")
    assert not reports_normal("UPS running on battery") and not reports_normal("fan running at 100% after alarm")


def test_a_unit_polled_in_run_state_is_a_normal_state():
    # A status poll "Run, supply 18.1 C, fans 64 %" is a CRAH doing its job, not a CRAH fault.
    assert reports_normal("Run") and reports_any_normal("Run, supply 18.1 C, fans 64 %")
    assert not reports_normal("Pump run fault") and not reports_normal("Fail to run")


def test_a_vendor_prefix_glued_to_an_equipment_acronym_is_dropped():
    assert terms("xupsOnBattery") == terms("UPS on battery")
    assert code_key("xupsOnBattery") != code_key("UPS_ON_BATTERY")  # the code itself keeps its spelling
    assert terms("setups") == ["setup"] and terms("pdus") == ["pdus"]


def test_an_acronym_run_before_a_capitalised_word_is_split():
    assert terms("rPDUNearOverload") == ["r", "pdu", "near", "overload"]
    assert code_key("SNMPTimeout") == "SNMP_TIMEOUT"
    assert code_key("NVLinkError") == "NVLINK_ERROR" and code_key("SXid") == "SXID"  # two letters: one word


def test_at_the_same_moment_an_alarm_that_names_its_procedure_goes_first():
    hands_over_to_any = Relations(brings={}, hands_over={"F": frozenset({ANY})})
    by_kind, by_code = AlarmReading("A", -2.0, sure=True), AlarmReading("B", -2.0, named=True)
    assert walk_upstream(hands_over_to_any, "F", [by_kind, by_code]) == "B"
    assert walk_upstream(hands_over_to_any, "F", [AlarmReading("A", -3.0, sure=True), by_code]) == "A"  # earlier wins


def test_an_alarm_read_alone_says_whether_it_named_its_procedure(narration):
    builder = IncidentQueryBuilder()
    by_code = builder._alarm("INVERTER_FAULT", "ups", "ups-b1", "Inverter Fault; output CB opened")
    by_words = builder._alarm("OUTPUT_OFF", "ups", "ups-b1", "Output Off, 0 V")
    assert narration.retriever.reading_alone(by_code)[:2] == ("SOP-PWR-004", True)
    assert narration.retriever.reading_alone(by_words)[1] is False


BGP_DOWN = [("bdr-1", "router", "BGP_PEER", "BGP session down, peer changed state to Idle", -30),
            ("bdr-1", "router", "BGP_NEIGHBOR", "BGP neighbor down", 0)]


def _votes(narration, incident: dict) -> dict[str, float]:
    evidence = narration.retriever.evidence(**narration.query.run(incident=incident))
    return {sid: e.vote for sid, e in evidence.items() if e.vote}


def test_a_root_that_names_nothing_is_judged_by_what_its_members_point_to(narration):
    probe = ("mon-1", "unknown", "ProbeFailed", "probe_success 0 for 4m")
    assert _votes(narration, _incident(probe, BGP_DOWN)) == {"SOP-NET-005": 1.0}
    later = [(*m[:4], 60) for m in BGP_DOWN]  # seen only after the root: its consequences, not its cause
    assert _votes(narration, _incident(probe, later)) == {}
    assert _votes(narration, _incident(("ups-1", "ups", "ProbeFailed", "probe failed"), BGP_DOWN)) == {}  # a kind
    assert narration.retrieve(_incident(probe, BGP_DOWN)).sop_ids[0] == "SOP-NET-005"


def test_a_compound_written_as_one_word_or_two_is_one_spelling():
    assert terms("Loss of Air Flow") == terms("loss airflow")
    assert set(terms("AIRFLOW_LOSS")) <= set(terms("Loss of Air Flow; unit shut down"))
    assert terms("Dewpoint high") == terms("dew point high")


def test_a_root_on_several_devices_is_confirmed_when_the_earliest_alarm_elsewhere_points_to_its_own_procedure():
    relations = Relations(brings={}, hands_over={})
    own, later_other = AlarmReading("T", -1200.0), AlarmReading("F", -900.0)
    assert upstream_cause(relations, "T", [own, later_other], root_devices=2) == ""
    assert upstream_cause(relations, "T", [later_other], root_devices=2) == "F"


def test_a_partner_reading_normal_under_the_root_code_does_not_make_the_root_several_devices():
    root = ("pdu-a", "pdu", "rcmSensorStateChange", "RCM residual current 31 mA aboveUpperCritical")
    normal = _incident(root, [("pdu-b", "pdu", "rcmSensorStateChange", "RCM 6 mA normal", 5)])
    raised = _incident(root, [("pdu-b", "pdu", "rcmSensorStateChange", "RCM 29 mA aboveUpperCritical", 5)])
    assert IncidentQueryBuilder().run(incident=normal)["root_alarm"]["devices"] == 1
    assert IncidentQueryBuilder().run(incident=raised)["root_alarm"]["devices"] == 2


def test_a_peer_that_does_not_answer_is_unreachable_as_the_sops_say():
    assert terms("Unable to contact slurm controller") == terms("unreachable slurm controller")
    assert set(terms("CONTROLLER_UNREACHABLE")) <= set(terms("sbatch: Unable to contact slurm controller"))
    assert set(terms("NODE_UNREACHABLE")) <= set(terms("error: Nodes n1 not responding"))
    assert "unreach" not in terms("responding slowly")
    lustre = "Lustre: scratch-OST0007-osc: Connection to scratch-OST0007 (at 10.44.8.17@o2ib) was lost"
    assert "unreach" in terms(lustre) and "unreach" in terms("Modbus connection lost")
    assert "unreach" not in terms("Connection restored after 3 s; no packets lost")


def test_jobs_stuck_completing_behind_a_storage_target_that_stopped_answering_open_the_storage_procedure(narration):
    root = ("slurm-ctl1", "slurm_ctl", "JOB_CG_LONG", "14 jobs in CG > 10 min across 38 nodes")
    members = [("gpu-n1", "gpu_node", "LUSTRE_CONN_LOST", "Lustre: north-OST001c-osc: Connection to north-OST001c "
                "(at 10.40.2.17@o2ib) was lost; in progress operations using this service will wait for recovery to "
                "complete", -260),
               ("gpu-n1", "gpu_node", "HUNG_TASK", "INFO: task python:2233441 blocked for more than 122 seconds.", -120)]
    assert narration.retrieve(_incident(root, members)).sop_ids[0] == "SOP-NET-008"


def test_an_overcurrent_protector_is_a_breaker(narration):
    assert terms("overCurrentProtectorSensorStateChange") == terms("breaker sensor state change")
    assert terms("Over-current protective device C2 open") == terms("breaker C2 open")
    assert terms("PDU overcurrent 26.8 A") == terms("PDU over current 26.8 A")
    protector = IncidentQueryBuilder()._alarm("overCurrentProtectorSensorStateChange", "pdu", "pdu-b",
                                              "Overcurrent protector C2 changed state to open (tripped)")
    assert narration.retriever.read_alone(protector) == "SOP-PWR-007"


def test_not_available_reads_as_unavailable_in_codes_and_words_alike():
    assert terms("GEN_NOT_AVAILABLE") == terms("generator unavailable")
    assert terms("Generator not available") == terms("GEN_NOT_AVAILABLE")
    assert terms("NODE_NOT_RESPONDING") == terms("node not responding") == terms("node unreachable")
    assert set(terms("SOURCE_UNAVAILABLE")) <= set(terms("ATS waits on a source that never becomes available"))


def test_a_generator_that_fails_to_start_explains_the_transfer_switch_waiting_on_it(narration):
    assert "SOP-PWR-010" in narration.retriever.relations.brings["SOP-PWR-008"]


def test_routine_work_and_normal_readings_say_no_fault_unless_a_clause_raises_one():
    assert says_no_fault("sched: Allocate JobId=4411 NodeList=gpu[01-04]") and says_no_fault("Standby pump started")
    assert says_no_fault("Online, load 41 %")
    assert not says_no_fault("Pump A fault, pump B running") and not says_no_fault("Start request failed")


def test_a_current_read_above_its_limit_is_an_overcurrent_but_a_residual_current_is_not():
    assert "overcurr" in terms("Outlet group 2 rmsCurrent 17.9 A aboveUpperCritical")
    assert "overcurr" in terms("L3 current 24.1 A exceeds threshold")
    assert "overcurr" not in terms("RCM residual current 32 mA above warning")


def test_engine_and_ups_terms_of_art_read_as_the_sops_words():
    assert "fire" not in terms("Crank 2 aborted: firing speed not reached")
    assert "runtim" in terms("Autonomy 3 min")


def test_an_overcurrent_after_a_job_allocation_stays_an_overcurrent(narration):
    # Two PDUs of the racks a job was just given: the allocation is context, not a stuck job upstream of them.
    root = ("r9-k2-pdu-b", "pdu", "inletStateChange", "Inlet I1 L1 rmsCurrent 29.1 A aboveUpperCritical")
    found = narration.retrieve(_incident(root, [
        ("r9-k2-pdu-a", "pdu", "inletStateChange", "", 1),
        ("ctl-1", "slurm", "sched_allocate", "sched: Allocate JobId=5012 NodeList=r9-k[1-4]", -20)]))
    assert found.sop_ids[0] == "SOP-PWR-006"


def test_a_unit_fault_beside_its_running_standby_still_counts_as_a_cause(narration):
    found = narration.retrieve(_incident(
        ("h2-r3-n1", "gpu_node", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "clocks_throttle_reasons=0x40, gpu temp 88 C"),
        [("h2-r3-n2", "gpu_node", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "", 4),
         ("h2-r3-cdu-1", "cdu", "ALM-212", "Pump A fault, pump B running; secondary supply 42 C", -15)]))
    assert found.sop_ids[0] == "SOP-CLG-007"


def test_a_mount_reported_responsive_is_a_normal_reading_and_one_not_responsive_is_not():
    assert reports_normal("nfs1 mount responsive") and reports_any_normal("nfs1 mount responsive, latency 2 ms")
    assert not reports_normal("nfs1 mount not responsive") and not reports_normal("link not up")


def test_kill_task_failures_after_a_file_server_stopped_answering_open_the_storage_procedure(narration):
    root = ("ctl-1", "slurm", "KILL_TASK", "error: slurmd error running JobId=812 on node(s)=n02: Kill task failed")
    nfs_first = [("n02", "gpu_node", "KERN", "nfs: server nas-1 not responding, still trying", -30),
                 ("n05", "gpu_node", "KERN", "nfs: server nas-1 not responding, still trying", -28)]
    nfs_fine = [("nas-1", "nfs", "MOUNT_CHECK", "nas-1 mount responsive, latency 2 ms", 20)]
    assert narration.retrieve(_incident(root, nfs_first)).sop_ids[0] == "SOP-NET-008"
    assert narration.retrieve(_incident(root, nfs_fine)).sop_ids[0] == "SOP-SLM-002"


def test_a_feed_read_at_zero_with_generators_starting_is_a_utility_loss_not_power_quality(narration):
    root = ("inc-1", "relay", "27-3PH", "Incomer 11 kV: three-phase undervoltage operate, U12=0.02 kV U23=0.01 kV")
    members = [("ups-1", "ups", "upsOnBattery", "UPS on battery, input voltage out of range", 1),
               ("gen-1", "generator", "MainsFail", "Mains fail - remote start", 2)]
    sag = [("ups-1", "ups", "upsOnBattery", "UPS on battery, input voltage out of range", 1)]
    assert narration.retrieve(_incident(root, members)).sop_ids[0] == "SOP-PWR-001"
    assert narration.retrieve(_incident(("pq-1", "meter", "SAG", "L1 sag to 78 % for 5 cycles"), sag)).sop_ids[0] \
        == "SOP-PWR-013"


def test_a_fire_alarm_among_the_members_comes_before_the_equipment_fault(narration):
    root = ("ups-4a", "ups", "upsTrapAlarmTempBad", "UPS internal temperature high")
    fire = [("vesda-1", "vesda", "VLF-FIRE1", "Fire 1 level reached, sector EE4", 20),
            ("facp", "fire_panel", "ZONE-12", "Zone 12 electrical room EE4 in alarm", 40)]
    assert narration.retrieve(_incident(root, [])).sop_ids[0] == "SOP-PWR-004"
    assert narration.retrieve(_incident(root, fire)).sop_ids[0] == "SOP-FIR-001"
    query = narration.query.run(incident=_incident(root, fire))
    assert narration.retriever.life_safety_shown(query["root_alarm"], query["member_alarms"]) == {"SOP-FIR-001"}


def test_a_building_management_point_is_no_battery_emergency(narration):
    # "bms" names a building's management system as well as a battery's: a chilled-water point it raises is no
    # sure sign of a battery over-temperature, whose procedure follows the emergency plan.
    root = ("km-03", "chiller", "STARTER_FAULT", "Starter fault, compressor A, unit locked out")
    point = [("as-klt-01", "bms", "KW_VL_HOCH", "Chilled water supply 16.9 C above limit 16.5 C", 150)]
    query = narration.query.run(incident=_incident(root, point))
    assert narration.retriever.life_safety_shown(query["root_alarm"], query["member_alarms"]) == set()
    assert narration.retrieve(_incident(root, point)).sop_ids[0] == "SOP-CLG-003"


def test_a_life_safety_root_keeps_its_own_procedure_beside_a_fire_alarm(narration):
    root = ("bess-1-ct1", "battery_container", "OffGas", "Off-gas detected, sensor 3 (rack 6)")
    vesda = [("bess-1-vesda", "vesda", "VESDA.Alert", "Alert level, 0.08 %obs/m", 45)]
    assert narration.retrieve(_incident(root, vesda)).sop_ids[0] == "SOP-ESS-004"  # off-gas: its own emergency


def test_a_bypass_reported_unavailable_is_no_bypass_state():
    # "static bypass inhibited" says the UPS has no way round its inverter: it is not on bypass.
    assert "bypass" not in terms("inverter trip, static bypass inhibited, load off")
    assert terms("Bypass not available") == terms("bypass unavailable") == terms("upsAlarmBypassBad")[-1:]
    assert "bypass" in terms("UPS transferred to static bypass")


def test_an_inverter_trip_with_no_bypass_to_go_to_is_the_internal_fault(narration):
    root = ("ups-3b", "ups", "EV-5521", "Inverter tripped on DC link overvoltage, output off, bypass unavailable")
    feeds = [("pdu-r7-a", "pdu", "inletVoltageLow", "Inlet 1 voltage 0 V", 1),
             ("pdu-r8-a", "pdu", "inletVoltageLow", "Inlet 1 voltage 0 V", 1)]
    assert narration.retrieve(_incident(root, [])).sop_ids[0] == "SOP-PWR-004"
    assert narration.retrieve(_incident(root, feeds)).sop_ids[0] == "SOP-PWR-004"
    on_bypass = ("ups-3b", "ups", "EV-5502", "Load transferred to static bypass, inverter off")
    assert narration.retrieve(_incident(on_bypass, [])).sop_ids[0] == "SOP-PWR-003"


def test_a_cdu_alarm_before_throttling_on_several_nodes_is_their_shared_cause(narration):
    root = ("hgx-r4-n1", "gpu_node", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "reasons=0x48 HW_SLOWDOWN, GPU temp 90 C")
    nodes = [("hgx-r4-n2", "gpu_node", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "reasons=0x48 HW_SLOWDOWN", 6)]
    cdu = [("cdu-2", "cdu", "AL-311", "Secondary strainer dP 1.5 bar high, secondary flow 190 l/min (SP 300)", -25)]
    assert narration.retrieve(_incident(root, nodes)).sop_ids[0] == "SOP-GPU-004"
    assert narration.retrieve(_incident(root, nodes + cdu)).sop_ids[0] == "SOP-CLG-007"
    # One node alone: the cause is read all the same, but not as shared by many.
    query = narration.query.run(incident=_incident(root, cdu))
    assert not any(e.shared_cause for e in narration.retriever.evidence(**query).values())


def test_a_static_switch_reported_inhibited_is_no_bypass_state_either():
    assert terms("static switch transfer inhibited") == terms("static bypass unavailable")[1:] == ["bypassunavail"]
    assert "static" not in terms("Inverter fault, static switch transfer inhibited, output off")


def test_a_temperature_read_above_its_limit_is_an_over_temperature_and_a_dew_point_is_not():
    assert "overtemperatur" in terms("Module 4 max cell 52.8 C above 50.0 C protection")
    assert "overtemperatur" in terms("Secondary supply 41.2 °C > 40 C")
    assert "overtemperatur" not in terms("Dew point 18.2 C > 17.0 C") + terms("Inlet 23.1 C (limit 27 C)")


def test_a_unit_or_source_reported_available_is_context_unless_a_fault_is_raised_beside_it():
    assert says_no_fault("Generator available 400 V 50.0 Hz - waiting for load")
    assert not says_no_fault("S2 available 480 V; position S1; transfer inhibited")
    assert not says_no_fault("S1 lost, S2 available")
    assert not reports_normal("bypass not available")


def test_a_gpu_utilisation_is_no_utility_supply():
    assert "util" not in terms("GPU 0-7 util 0% for 40 min") + terms("DCGM_FI_DEV_GPU_UTIL") + terms("GPU utilisation 0 %")
    assert "util" in terms("utility power lost") and "util" in terms("util-meter-1 MainsFailure")


def test_engineering_abbreviations_in_a_device_name_give_its_kind():
    known = {"PUMP", "COOLING_TOWER", "SWITCHGEAR", "FIRE_PANEL", "METER", "SENSOR", "PDU", "CHILLER"}
    assert device_kinds(known, "device", "B2-CHWP-03") == ["PUMP"]
    assert device_kinds(known, "", "CT-2") == ["COOLING_TOWER"] and device_kinds(known, "", "MV-SWGR-1") == ["SWITCHGEAR"]
    assert device_kinds(known, "", "r07-pdua") == ["PDU"] and device_kinds(known, "", "facp-main") == ["FIRE_PANEL"]
    assert device_kinds(known, "", "hall2-th-14") == ["SENSOR"] and device_kinds(known, "", "node-17") == []


def test_a_reading_normal_beside_a_fault_is_no_recovery_unless_it_says_so():
    assert not says_no_fault("U_L2 = 0.3 kV, L2 missing; U_L1 and U_L3 nominal")
    assert not says_no_fault("ifAdminStatus up(1), ifOperStatus down(2)")
    assert says_no_fault("mains failure, voltages now normal") and says_no_fault("Inlet 22.4 C (normal)")


def test_a_drained_node_whose_gpu_port_logged_a_fatal_pcie_error_opens_the_fallen_off_the_bus_procedure(narration):
    root = ("slurmctld", "slurm", "node_drain", "node gpu-r4-02 reason set to: gres/gpu count reported lower than "
            "configured (7 < 8)")
    aer = [("gpu-r4-02", "gpu_node", "pcieport AER", "pcieport 0000:b0:01.0: AER: Uncorrected (Fatal) error received: "
            "0000:b1:00.0, type=Transaction Layer", -25)]
    assert narration.retrieve(_incident(root, [])).sop_ids[0] == "SOP-SLM-001"
    assert narration.retrieve(_incident(root, aer)).sop_ids[0] == "SOP-GPU-002"


def test_a_monitoring_service_killed_by_the_kernel_is_a_collector_down_not_a_stuck_job(narration):
    assert terms("snmp-poller.service: Main process exited, code=killed, status=9/KILL")[-2:] == ["collector", "down"]
    assert "collector" not in terms("slurmd.service: Main process exited, code=killed, status=9/KILL")
    root = ("crah-04", "device", "BACNET-NO-RESP", "DCIM: BACnet device 3104 (CRAH-04) no response, last value 14:01")
    stale = [(f"crah-0{n}", "device", "BACNET-NO-RESP", "", 0) for n in (5, 6)]
    poller = [("mon-col2", "device", "SVC-EXIT", "bacnet-poller.service: main process exited, code=killed, "
               "status=9/KILL (oom-kill)", -3)]
    assert narration.retrieve(_incident(root, stale + poller)).sop_ids[0] == "SOP-MON-001"


def test_a_share_of_nominal_is_a_reading_not_a_normal_state(narration):
    root = ("ups-1a", "ups", "upsOnBattery", "UPS: On battery power in response to an input power problem.")
    ups = [("ups-1a", "ups", "powerRestored", "UPS: No longer on battery power.", 1)]
    sag = [("pqm-inc1", "pq_meter", "EVT_SAG", "Sag V1 71.8 % V2 74.0 % V3 70.3 % of nominal, duration 118 ms", 0)]
    assert narration.retrieve(_incident(root, ups + sag)).sop_ids[0] == "SOP-PWR-013"


def test_a_feeder_opened_by_hand_is_switching_not_a_trip(narration):
    assert says_no_fault("Feeder 52-F7 (UPS-A2 input) OPEN, manual operation, no trip flag")
    assert not says_no_fault("Feeder 52-F7 OPEN, tripped on overcurrent (51)")
    assert not says_no_fault("high pressure cutout 63H operated: compressor 1 stop")  # a protection that operated
    root = ("ups-a3", "ups", "upsTrapOnBattery", "UPS-A3 on battery: AC input fail, rectifier stopped, 17 min")
    feeder = [("lvsb-a1", "switchboard", "QF-07 OPEN", "Outgoing feeder QF-07 (UPS-A3 rectifier input) status OPEN - "
               "local manual operation, no protection flag", -6)]
    assert narration.retrieve(_incident(root, feeder)).sop_ids[0] == "SOP-PWR-002"


def test_an_undervoltage_on_all_three_phases_is_the_supply_lost(narration):
    assert terms("REF615 IN1 3U< operate: U12 0.00 kV")[-2:] == terms("loss of mains")
    assert terms("SEL-751 27P1 undervoltage pickup 3ph")[-2:] == terms("loss of mains")
    assert "main" not in terms("Undervoltage L2 88 % for 120 ms")  # one phase sagging: power quality
    root = ("ups-a1", "ups", "upsOnBattery", "UPS: On battery power in response to an input power problem.")
    relays = [(f"mvsg-in{n}", "switchgear", "PHPTUV1_OPERATE", f"REF615 IN{n} 3U< operate: U12 0.00 kV", -2)
              for n in (1, 2)]
    ups = [("ups-b1", "ups", "upsOnBattery", "UPS: On battery power in response to an input power problem.", 0)]
    assert narration.retrieve(_incident(root, relays + ups)).sop_ids[0] == "SOP-PWR-001"


def test_a_tower_fans_drive_fault_is_the_tower_not_a_pump(narration):
    root = ("ct-02", "cooling_tower", "VFD FLT", "CT-02 fan VFD tripped - FC102 alarm 9 inverter overload")
    cws = [("cws-hdr", "condenser_water", "AI_CWS_T HI", "Condenser water supply 33.8 C (SP 30.0 C)", 120)]
    assert narration.retrieve(_incident(root, cws)).sop_ids[0] == "SOP-CLG-009"


def test_several_servers_of_a_rack_losing_one_supply_at_once_is_a_lost_feed(narration):
    root = ("n1-bmc", "bmc", "PSU0003", "Power supply unit 1 has lost AC input.")
    nodes = [(f"n{i}-bmc", "bmc", "PSU0003", "", i - 2) for i in (2, 3)]
    pdu = [("r06-pdu-a", "pdu", "snmpNoResponse", "No SNMP response from PDU after 5 retries", 30),
           ("r06-rpp-a", "rpp", "BRANCH_LOW_I", "Branch 07 current 0.0 A, breaker status closed", 60)]
    assert narration.retrieve(_incident(root, nodes + pdu)).sop_ids[0] == "SOP-PWR-011"


def test_a_voltage_dip_is_a_sag_as_the_power_quality_procedure_says(narration):
    assert terms("Voltage dip U12 72 % Un") == terms("Voltage sag U12 72 % Un") and "sag" in terms("VSAG event")
    root = ("ups-1a", "ups", "upsTrapOnBattery", "UPS-1A: on battery")
    members = [("pq-hv-1", "meter", "PQ-EVT", "PQ recorder HV incomer 1: dip L1-L2-L3 to 0.68 pu for 140 ms", 0),
               ("ups-1a", "ups", "upsTrapOffBattery", "UPS-1A: returned from battery, input normal", 2)]
    assert narration.retrieve(_incident(root, members)).sop_ids[0] == "SOP-PWR-013"


ON_BATTERY = [(f"ups-{i}", "ups", "upsTrapOnBattery", "UPS on battery, 11 min remaining", 1) for i in range(1, 5)]


def test_many_units_on_battery_after_a_breaker_trip_are_the_trips_fan_out(narration):
    trip = ("mv-swgr-b", "switchgear", "MAIN_BKR_TRIP", "Main breaker tripped on overcurrent 51")
    incident = _incident(trip, ON_BATTERY)
    evidence = narration.retriever.evidence(**narration.query.run(incident))
    assert not evidence["SOP-PWR-001"].fan_out  # the trip brings the UPS units' alarm: no loss upstream of them
    assert narration.retrieve(incident).sop_ids[0] == "SOP-PWR-012"


def test_a_fan_out_the_roots_own_fault_brings_still_speaks_for_the_root(narration):
    switch = ("leaf-3", "switch", "SWITCH_UNREACHABLE", "leaf-3 not responding to ICMP and SNMP")
    links = [(f"gpu-{i}", "gpu_node", "LINK_DOWN", "eth0 link down", 1) for i in range(1, 6)]
    query = narration.query.run(_incident(switch, links))
    assert query["member_alarms"][0]["devices"] == 5
    assert narration.retriever.evidence(**query)["SOP-NET-003"].fan_out
    assert narration.retrieve(_incident(switch, links)).sop_ids[0] == "SOP-NET-003"


def test_a_voltage_unbalance_of_a_third_or_more_is_a_phase_lost():
    from opsloop.models.incident_query import lost_phase
    assert lost_phase("Voltage unbalance 47.5 % (limit 2.0 %)") and lost_phase("Desequilibrio de tensao 41%")
    assert not lost_phase("Voltage unbalance 2.9 % (limit 2.0 %)")
    assert not lost_phase("Current unbalance 52 %") and not lost_phase("Desequilibrio de corrente 52 %")  # the load's
    assert "imbal" in terms("V unbalance 2.9 %") and terms("Unbalanced") == terms("imbalance")  # IEC's word, the SOPs'
    assert "imbal" not in terms("V unbalance 64 %") and terms("PHASE_LOSS") <= terms("V unbalance 64 %")


def test_a_voltage_unbalance_reads_as_power_quality_unless_a_phase_is_lost(narration):
    builder = IncidentQueryBuilder()
    small = builder._alarm("Unbalance", "pq_meter", "pqm-2", "V unbalance 2.4 % > 2.0 % (10-min value)")
    assert narration.retriever.reading_alone(small)[0] == "SOP-PWR-013"
    lost = _incident(("pqm-inc1", "pq_meter", "Unbalance", "Voltage unbalance 57.9 % (limit 2.0 %)"),
                     [("ups-1a", "ups", "OnBattery", "UPS on battery", 2),
                      ("gen-2", "genset", "RemoteStart", "Remote start requested", 4)])
    query = builder.run(lost)
    assert query["root_code"] == "PHASE_LOSS"  # the code read as its words say
    assert narration.retriever.reading_alone(query["root_alarm"])[0] == "SOP-PWR-001"
    assert narration.retrieve(lost).sop_ids[0] == "SOP-PWR-001"


def test_phases_of_the_medium_voltage_supply_at_zero_are_the_mains_lost():
    assert set(terms("LOSS_OF_MAINS")) <= set(terms("33 kV incomer 2: Ua 0.0 kV, Ub 0.0 kV, Uc 0.0 kV"))
    assert set(terms("PHASE_LOSS")) <= set(terms("Line 1 VT: Va 19.2 kV, Vb 0.0 kV, Vc 19.1 kV"))
    # A low-voltage input at 0 V may be one UPS's own feeder opened: no reading of the supply from it.
    assert "main" not in terms("Input L1 0 V, L2 0 V, L3 0 V") and "loss" not in terms("PDU inlet L1 0 V")


def test_a_voltage_under_a_tenth_of_nominal_is_an_interruption_not_a_sag():
    assert set(terms("LOSS_OF_MAINS")) <= set(terms("Feeder 3: V1 0.4% V2 0.2% V3 0.3% of Un 11 kV"))
    assert set(terms("PHASE_LOSS")) <= set(terms("UL2 0 V (0.1 % Uc), UL1 6.35 kV, UL3 6.34 kV"))
    assert "loss" not in terms("Dip: U12 64.0 % U23 66.1 % U31 65.2 % of Uc, 90 ms")  # a sag stays a sag


def test_a_feeder_opened_with_no_trip_indicated_is_routine_work():
    assert says_no_fault("Outgoing feeder QF-3 (UPS-2 input) CLOSED -> OPEN, trip indication: none")
    assert says_no_fault("Feeder F4 open (shunt/manual)") and says_no_fault("F4 OPEN, no trip cause recorded")
    assert not says_no_fault("Outgoing feeder QF-3 CLOSED -> OPEN, trip indication: earth fault")


def test_a_status_reported_normal_by_its_code_with_its_readings_is_context():
    from opsloop.models.incident_query import reports_only_normal
    assert reports_only_normal({"code": "PQM:NORMAL", "text": "Bus B 402 V, 50.0 Hz, THD-V 1.9 %"})
    assert not reports_only_normal({"code": "STATUS_NORMAL", "text": "Breaker Q2 tripped on overcurrent"})
    assert not reports_only_normal({"code": "PQM_EVENT", "text": "Bus B 402 V, 50.0 Hz, THD-V 1.9 %"})


def test_an_error_counter_read_at_zero_states_nothing():
    assert "down" not in terms("mlx5_0 port 1: PortRcvErrors +3312, LinkErrorRecovery 0, LinkDowned 0")
    assert "down" in terms("LinkDownedCounter +5 on port 61") and "down" in terms("LinkDowned 3")


def test_a_unit_riding_through_a_disturbance_is_doing_its_job(narration):
    assert says_no_fault("Low voltage ride-through active 0.08 s, no trip")
    assert not says_no_fault("PCS tripped: grid voltage outside the ride-through curve")
    sag = _incident(("pqm-f1", "pq_meter", "SAG", "Sag: Va 70.2% of nominal, 5 cycles"),
                    [("pqm-f2", "pq_meter", "SAG", "Sag: Va 72.9% of nominal, 5 cycles", 0),
                     ("pcs-1", "pcs", "LVRT", "Low voltage ride-through active 0.08 s, no trip", 0)])
    assert narration.retrieve(sag).sop_ids[0] == "SOP-PWR-013"


def test_a_power_supply_whose_ac_input_is_lost_lost_its_feed():
    assert set(terms("INPUT_POWER_LOST")) <= set(terms("SEL 0x0b17 | Power Supply PS2 | Power Supply AC lost"))
    assert set(terms("INPUT_POWER_LOST")) <= set(terms("PSU1 AC input lost"))
    assert set(terms("PSU_REDUNDANCY_LOST")) <= set(terms("The power supplies are not redundant."))
    assert "input" not in terms("CRAC-2 AC lost communication")  # an air conditioner, not a power supply


def test_a_ride_through_entered_and_exited_is_context():
    assert says_no_fault("Low voltage ride-through entered, exited after 104 ms")
