"""Counter rates (wrap, reset, stale) and hwmon/powercap mapping to kW."""

import pytest

from opsloop.models.counters import CounterRates
from opsloop.models.hwmon import Chip, HwmonReader, ReadError

pytestmark = pytest.mark.unit

RAPL_RANGE = 262_143_328_850


def test_a_wrap_adds_the_range_and_a_reset_gives_no_rate():
    rates = CounterRates()
    assert rates.update("z", RAPL_RANGE - 50_000_000, 0, RAPL_RANGE).status == "first"
    wrapped = rates.update("z", 100_000_000, 1_000, RAPL_RANGE)  # 50 J before the wrap + 100 J after
    assert (wrapped.status, wrapped.per_s) == ("wrap", 150_000_000)
    assert rates.update("z", 100_000_000, 1_000, RAPL_RANGE).status == "stale"
    assert rates.update("z", 130_000_000, 2_000, RAPL_RANGE).per_s == 30_000_000  # measured from t=1000
    assert rates.update("z", 5, 3_000).status == "reset"
    assert rates.update("z", 1_000_005, 4_000).per_s == 1_000_000
    rates.forget(set())
    assert rates.update("z", 9, 5_000).status == "first"


def _rapl(energy_uj: str, name: str = "package-0", zone: str = "intel-rapl:0") -> Chip:
    return Chip("powercap", zone, name, None, {"energy_uj": energy_uj, "max_energy_range_uj": str(RAPL_RANGE)})


def test_rapl_energy_becomes_kw_across_a_wrap_and_subzones_map_through_their_parent():
    reader = HwmonReader({"intel-rapl:0": "node-1"}, {"node-1": "gpu_node"}, "lab")
    assert reader.read([_rapl(str(RAPL_RANGE - 100_000_000)), _rapl("5", "core", "intel-rapl:0:0")], 0).points == []
    out = reader.read([_rapl("125000000"), _rapl("80000005", "core", "intel-rapl:0:0")], 2_000)
    assert [(p["device"], p["metric"], p["value"], p["device_type"]) for p in out.points] == \
        [("node-1", "rapl_package_0_kw", pytest.approx(0.1125), "gpu_node"),
         ("node-1", "rapl_core_kw", pytest.approx(0.04), "gpu_node")]
    assert out.rejects == []


def test_power_input_wins_over_average_labels_name_metrics_and_bad_values_are_rejected():
    gpu = Chip("hwmon", "hwmon4", "amdgpu", "0000:43:00.0",
               {"power1_input": "298000000\n", "power1_average": "281000000", "power1_label": "PPT\n"})
    xe = Chip("hwmon", "hwmon6", "xe", "0000:4d:00.0",
              {"energy1_input": "1000000", "energy1_label": "card", "energy2_input": "oops", "energy2_label": "pkg"})
    sleeping = Chip("hwmon", "hwmon3", "amdgpu", "0000:03:00.0", {"power1_average": ReadError("No data available")})
    other = Chip("hwmon", "hwmon9", "nct6775", "nct6775.656", {"power1_input": "-5"})
    temp_only = Chip("hwmon", "hwmon0", "coretemp", "coretemp.0", {})
    reader = HwmonReader({"amdgpu": "gpu-a", "xe": "gpu-x", "*": "node-1"}, {}, "lab")
    first = reader.read([gpu, xe, sleeping, other, temp_only], 0)
    assert [(p["device"], p["metric"], p["value"], p["device_type"]) for p in first.points] == \
        [("gpu-a", "amdgpu_ppt_kw", 0.298, "host")]
    assert [(kind, why.split(": ")[-1]) for _, kind, why in first.rejects] == \
        [("decode", "'oops'"), ("invalid", "No data available"), ("invalid", "negative (-5)")]
    xe2 = Chip("hwmon", "hwmon6", "xe", "0000:4d:00.0", {"energy1_input": "301000000", "energy1_label": "card"})
    second = reader.read([xe2], 1_000)
    assert [(p["metric"], p["value"]) for p in second.points] == [("xe_card_energy_kw", pytest.approx(0.3))]
    reset = reader.read([Chip("hwmon", "hwmon6", "xe", "0000:4d:00.0", {"energy1_input": "7"})], 2_000)
    assert reset.points == [] and "counter reset" in reset.rejects[0][2]


def test_an_unmapped_chip_is_rejected_with_the_names_tried():
    out = HwmonReader({}, {}, "lab").read([Chip("hwmon", "hwmon3", "amdgpu", "0000:03:00.0",
                                                {"power1_input": "1"})], 0)
    assert out.rejects == [("hwmon3 amdgpu", "unknown",
                            "hwmon hwmon3 (amdgpu) maps to no device: devices: has none of amdgpu@0000:03:00.0, "
                            "amdgpu, *")]
