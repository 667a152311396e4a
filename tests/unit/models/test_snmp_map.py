"""The snmp kind's mapping: config checks, row index to metric, scaling, bad values, alarm edges."""

from __future__ import annotations

import pytest

from opsloop.models.snmp_map import BadValue, SnmpMap, SnmpMapError, number

pytestmark = pytest.mark.unit

COLUMN = "1.3.6.1.4.1.32473.14.2.1.2"
MAP = SnmpMap.parse({"metrics": [{"oid": COLUMN, "metric": "outlet{index}_kw", "scale": 0.001, "unit": "kW"}],
                     "alarms": [{"oid": "1.3.6.1.4.1.32473.14.3.1.2", "raise_on": [2, 3], "code": "PDU_BREAKER_OPEN",
                                 "severity": "critical", "text": "breaker {index} open"}]})


def test_a_row_index_names_the_metric_and_a_neighbouring_column_is_not_taken_for_it():
    assert MAP.point(f"{COLUMN}.7", 512) == ("outlet7_kw", 0.512, "kW")
    assert MAP.point(f"{COLUMN}0.7", 512) is None  # column ...2.10, not ...2.1.2
    assert MAP.columns() == [COLUMN, "1.3.6.1.4.1.32473.14.3.1.2"]


@pytest.mark.parametrize("value,kind", [("n/a", "decode"), ("", "decode"), ("nan", "invalid"), ("inf", "invalid"),
                                        (True, "decode")])
def test_values_that_are_no_reading_say_which_dead_letter_kind(value, kind):
    with pytest.raises(BadValue) as err:
        MAP.point(f"{COLUMN}.1", value)
    assert err.value.kind == kind and COLUMN in str(err.value)


def test_numeric_strings_are_read():
    assert number("x", " 12.5 ") == 12.5


def test_every_raising_value_raises_once_and_the_alarm_clears_on_a_good_value():
    active: dict = {}
    oid = "1.3.6.1.4.1.32473.14.3.1.2.4"
    assert MAP.alarm_changes(oid, 3, active) == [("PDU_BREAKER_OPEN", "critical", "raise", "breaker 4 open")]
    assert MAP.alarm_changes(oid, 2, active) == []
    assert MAP.alarm_changes(oid, 1, active) == [("PDU_BREAKER_OPEN", "critical", "clear", "breaker 4 open")]
    assert MAP.alarm_changes(oid, 1, active) == []


@pytest.mark.parametrize("options,message", [
    ({}, "nothing to read"),
    ({"metrics": [{"oid": "1.3.x", "metric": "m", "unit": "kW"}]}, "not a dotted numeric OID"),
    ({"metrics": [{"oid": "1.3.6", "metric": "m"}]}, "needs oid, metric and unit"),
    ({"metrics": [{"oid": "1.3.6", "metric": "m", "unit": "kW", "scale": "big"}]}, "scale must be a number"),
    ({"alarms": [{"oid": "1.3.6", "code": "X"}]}, "raise_on"),
    ({"alarms": [{"oid": "1.3.6", "code": "X", "raise_on": [1], "severity": "loud"}]}, "severity must be one of"),
])
def test_a_mapping_that_cannot_work_is_refused_with_the_entry_named(options, message):
    with pytest.raises(SnmpMapError, match=message):
        SnmpMap.parse(options)
