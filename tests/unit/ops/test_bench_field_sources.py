"""The field-sources bench's configs fit its site: every target's models or agent map to a declared device."""

from __future__ import annotations

import pytest

from opsloop.connectors.sources.loop import mapping_errors
from opsloop.ops.bench.field_sources import bench_site, source_config

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("kind", ["sunspec", "snmp"])
def test_the_bench_source_of_n_devices_maps_every_device_to_the_bench_site(kind):
    ports = [15021, 15022, 15023]
    config, site = source_config(kind, ports), bench_site(len(ports), kind)
    assert mapping_errors(config, site) == []
    assert len(config.options["targets"]) == 3
    assert len(set(config.devices.values())) == (9 if kind == "sunspec" else 3)  # ess, two meters per PCS; a PDU


def test_the_snmp_bench_source_uses_the_client_it_is_given():
    assert source_config("snmp", [15021]).options["client"] == "pysnmp"
    assert source_config("snmp", [15021], "ezsnmp").options["client"] == "ezsnmp"
