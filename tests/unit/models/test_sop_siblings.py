"""Telling sibling procedures apart from the evidence: how codes, device names and member alarms are read."""

from __future__ import annotations

import pytest

from opsloop.models.incident_query import reports_any_normal, reports_normal

pytestmark = pytest.mark.unit


def test_a_unit_reported_running_or_online_is_a_normal_state():
    assert reports_normal("Running 58 %") and reports_normal("Online")
    assert reports_any_normal("Online, input 401 V 50.0 Hz, load 38 %")
    assert not reports_normal("UPS running on battery") and not reports_normal("fan running at 100% after alarm")
