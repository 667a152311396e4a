"""Telling sibling procedures apart from the evidence: how codes, device names and member alarms are read."""

from __future__ import annotations

import pytest

from opsloop.models.incident_query import code_key, reports_any_normal, reports_normal, terms

pytestmark = pytest.mark.unit


def test_a_unit_reported_running_or_online_is_a_normal_state():
    assert reports_normal("Running 58 %") and reports_normal("Online")
    assert reports_any_normal("Online, input 401 V 50.0 Hz, load 38 %")
    assert not reports_normal("UPS running on battery") and not reports_normal("fan running at 100% after alarm")


def test_a_vendor_prefix_glued_to_an_equipment_acronym_is_dropped():
    assert terms("xupsOnBattery") == terms("UPS on battery")
    assert code_key("xupsOnBattery") != code_key("UPS_ON_BATTERY")  # the code itself keeps its spelling
    assert terms("setups") == ["setup"] and terms("pdus") == ["pdus"]


def test_an_acronym_run_before_a_capitalised_word_is_split():
    assert terms("rPDUNearOverload") == ["r", "pdu", "near", "overload"]
    assert code_key("SNMPTimeout") == "SNMP_TIMEOUT"
    assert code_key("NVLinkError") == "NVLINK_ERROR" and code_key("SXid") == "SXID"  # two letters: one word
