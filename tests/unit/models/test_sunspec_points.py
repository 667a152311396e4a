"""SunSpec model bodies to metrics: scale factors, signs, sentinels, energy counters, event bits."""

from __future__ import annotations

import pytest

from opsloop.models import sunspec_points as sp

pytestmark = pytest.mark.unit


def meter(**raw) -> list[int]:
    body = sp.unimplemented_body(203, sp.METER_LEN)
    sp.encode(203, raw, body)
    return body


@pytest.mark.parametrize("model", sp.METER_MODELS)
def test_every_meter_model_reads_power_in_kw_with_its_sign_and_scale_factor(model):
    body = sp.unimplemented_body(model, sp.METER_LEN)
    sp.encode(model, {"W": -1500, "W_SF": 2, "VAR": 300, "VAR_SF": 0}, body)  # exporting 150 kW
    values, problems, events = sp.decode(model, body, "grid")
    assert values == [("grid_kw", -150.0, "kW"), ("grid_kvar", 0.3, "kvar")] and problems == [] and events is None


def test_energy_counters_are_32_bit_and_zero_means_not_accumulated():
    values, _, _ = sp.decode(203, meter(TotWhImp=123_456_789, TotWh_SF=1, TotWhExp=0), "facility")
    assert values == [("facility_import_kwh", 1_234_567.89, "kWh")]


@pytest.mark.parametrize("sf", [0x8000, 11, 0xFFF5])  # not implemented, 11, -11
def test_a_value_without_a_usable_scale_factor_is_a_problem_not_a_point(sf):
    values, problems, _ = sp.decode(203, meter(Hz=5000, Hz_SF=sf), "grid")
    assert values == [] and len(problems) == 1 and problems[0].startswith("Hz = 5000 has no usable scale factor Hz_SF")


@pytest.mark.parametrize("point,sentinel", [("W", 0x8000), ("SoC", 0xFFFF), ("NCyc", 0xFFFFFFFF)])
def test_not_implemented_sentinels_are_no_point(point, sentinel):
    body = sp.unimplemented_body(802, 62)
    sp.encode(802, {"W": 100, "W_SF": 3, "SoC": 512, "SoC_SF": -1, "NCyc": 42, point: sentinel}, body)
    metrics = {m for m, _, _ in sp.decode(802, body, "ess")[0]}
    assert metrics == {"ess_dc_kw", "ess_soc_pct", "ess_cycles"} - {{"W": "ess_dc_kw", "SoC": "ess_soc_pct",
                                                                    "NCyc": "ess_cycles"}[point]}


def test_a_too_short_model_reads_nothing_rather_than_the_wrong_registers():
    assert sp.decode(203, [1, 2, 3], "grid") == ([], ["model 203 is 3 registers long, shorter than the 105 it must "
                                                      "have"], None)


def test_event_bits_raise_once_and_clear_when_they_fall():
    raised = sp.event_changes(802, 0, 1 << 1 | 1 << 2)
    assert raised == [("BMS_OVER_TEMP_ALARM", "major", "raise"), ("BMS_OVER_TEMP_WARNING", "minor", "raise")]
    assert sp.event_changes(802, 0b110, 0b110) == []
    assert sp.event_changes(802, 0b110, 0b010) == [("BMS_OVER_TEMP_WARNING", "minor", "clear")]
    assert sp.event_changes(203, 0, 1 << 2 | 1 << 8) == [("METER_POWER_FAILURE", "critical", "raise")]  # 8: reserved


def test_device_types_choose_the_metric_prefix():
    assert [sp.prefix_of(t) for t in ("grid_meter", "facility_meter", "ess", "pdu")] == ["grid", "facility", "ess",
                                                                                        "pdu"]
