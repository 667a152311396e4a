"""The hwmon source on a sysfs tree: the fixture tree under tests/data, and this machine's own /sys."""

import shutil
from pathlib import Path

import pytest

from opsloop.config.site import parse_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources import KINDS
from opsloop.connectors.sources.base import SourceUnavailable
from opsloop.connectors.sources.hwmon import read_chips

pytestmark = pytest.mark.unit

TREE = Path(__file__).parents[2] / "data" / "sysfs-host"
SITE = parse_site({"site": {"id": "lab"}, "devices": [
    {"id": "node-1", "type": "gpu_node"}, {"id": "gpu-0", "type": "gpu"}, {"id": "gpu-1", "type": "gpu"},
    {"id": "hwmon", "type": "collector"}]}, "lab.yaml")
DEVICES = {"amdgpu@0000:03:00.0": "gpu-0", "amdgpu@0000:43:00.0": "gpu-1", "*": "node-1"}


def _source(root: Path, devices=DEVICES):
    config = parse_sources({"site": "lab", "sources": [{"kind": "hwmon", "devices": devices,
                                                         "options": {"root": str(root)}}]}, "s.yaml")[0]
    return KINDS["hwmon"].build(config, SITE, lambda: 0.0)


def _write(path: Path, value: int) -> None:
    path.write_text(f"{value}\n")


def test_the_fixture_tree_gives_power_now_and_energy_rates_after_a_second_poll(tmp_path):
    root = tmp_path / "sys"
    shutil.copytree(TREE, root, symlinks=True)
    source = _source(root)
    first = source.poll(10_000)
    assert sorted((p["device"], p["metric"], p["value"]) for p in first.points) == [
        ("gpu-0", "amdgpu_ppt_kw", 0.215), ("gpu-1", "amdgpu_ppt_kw", 0.298),  # power1_input, not the average
        ("node-1", "power_meter_power1_kw", 0.412)]
    assert first.rejects == []
    rapl = root / "devices/virtual/powercap/intel-rapl"
    _write(rapl / "intel-rapl:0/energy_uj", 196_671_150)  # wrapped: 43.3 J to the range + 196.7 J = 240 J in 2 s
    _write(rapl / "intel-rapl:0:0/energy_uj", 170_004_000_000 + 150_000_000)
    _write(rapl / "intel-rapl:0:1/energy_uj", 120_000_000 + 10_000_000)
    _write(rapl / "intel-rapl:1/energy_uj", 51_234_567_890 + 200_000_000)
    xe = root / "devices/pci0000:00/0000:4d:00.0/hwmon/hwmon6"
    _write(xe / "energy1_input", 98_012_345_678 + 600_000_000)
    _write(xe / "energy2_input", 97_001_234_567 + 500_000_000)
    igpu = root / "devices/pci0000:00/0000:00:02.0/hwmon/hwmon5/energy1_input"
    _write(igpu, 4_311_864_705 + 30_000_000)
    second = source.poll(12_000)
    kw = {p["metric"]: p["value"] for p in second.points if p["device"] == "node-1"}
    assert kw == pytest.approx({"power_meter_power1_kw": 0.412, "rapl_package_0_kw": 0.12, "rapl_core_kw": 0.075,
                                "rapl_uncore_kw": 0.005, "rapl_package_1_kw": 0.1, "i915_energy1_energy_kw": 0.015,
                                "xe_card_energy_kw": 0.3, "xe_pkg_energy_kw": 0.25})
    assert {p["unit"] for p in second.points} == {"kW"} and {p["ts_ms"] for p in second.points} == {12_000}


def test_unreadable_and_unmapped_sensors_are_rejected_and_an_empty_tree_is_a_failed_poll(tmp_path):
    root = tmp_path / "sys"
    shutil.copytree(TREE, root, symlinks=True)
    sensor = root / "devices/pci0000:00/0000:03:00.0/hwmon/hwmon3/power1_average"
    sensor.unlink()
    sensor.mkdir()  # reading it fails as a sleeping GPU's does (an OSError), whoever runs the test
    source = _source(root, {"amdgpu@0000:43:00.0": "gpu-1", "amdgpu": "gpu-0"})
    out = source.poll(0)
    assert [(r.kind, r.reason.split(":")[0]) for r in out.rejects if r.kind == "invalid"] == \
        [("invalid", "hwmon3/power1_average (amdgpu)")]
    unknown = sorted(r.raw.decode() for r in out.rejects if r.kind == "unknown")
    assert unknown == ["hwmon1 power_meter", "hwmon5 i915", "hwmon6 xe", "intel-rapl:0 package-0",
                       "intel-rapl:0:0 core", "intel-rapl:0:1 uncore", "intel-rapl:1 package-1"]
    assert source.poll(1_000).rejects == []  # standing problems are told once, not at every poll
    sensor.rmdir()
    _write(sensor, 180_000_000)
    assert [p["value"] for p in source.poll(2_000).points if p["device"] == "gpu-0"] == [0.18]
    sensor.unlink()
    sensor.mkdir()
    assert [r.kind for r in source.poll(3_000).rejects] == ["invalid"]  # it came back: told again
    with pytest.raises(SourceUnavailable, match="no class/hwmon or class/powercap"):
        _source(tmp_path / "empty").poll(0)


def test_this_machines_sysfs():
    chips = read_chips(Path("/sys"))
    with_power = [c for c in chips or [] if any(a.startswith(("power", "energy")) for a in c.attrs)]
    if not with_power:
        pytest.skip("this machine's /sys has no hwmon power/energy attribute and no powercap zone "
                    f"({'no class/hwmon or class/powercap' if chips is None else f'{len(chips)} chips, none with power'})")
    source = _source(Path("/sys"), {"*": "node-1"})
    first = source.poll(0)
    second = source.poll(1_000)
    values = [p["value"] for p in first.points + second.points]
    assert values and all(0 <= v < 100 for v in values)  # kW of one machine's parts
