"""The sources that read the site twin: every number the twin measures is read by exactly one of them, every device
they name is the site's, and the compose profile's file is what the builder writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources.loop import mapping_errors
from opsloop.models.twin import SiteTwin
from opsloop.ops.twin import DEFAULT_DATA, read_curve
from opsloop.ops.twin_sources import PAGE_METRICS, SUNSPEC_METRICS, page_devices, twin_sources

pytestmark = pytest.mark.unit

SITE = load_site(DEMO_SITE)
COMPOSE_FILE = Path(__file__).resolve().parents[3] / "ops" / "sources" / "twin.yaml"


@pytest.fixture(scope="module")
def points():
    curve = read_curve(DEFAULT_DATA)
    twin = SiteTwin(SITE, curve)
    return twin.points(twin.measure(curve[0][0] + 14 * 3_600_000, 1000.0, {}), 60.0)


def test_every_metric_the_twin_measures_is_read_by_exactly_one_source(points):
    measured = {p["metric"] for p in points}
    assert measured == set(SUNSPEC_METRICS) | set(PAGE_METRICS)
    assert not set(SUNSPEC_METRICS) & set(PAGE_METRICS)


def test_every_device_the_sources_name_is_the_sites_and_the_page_devices_are_all_mapped(points):
    doc = twin_sources(SITE, "127.0.0.1:1503", "127.0.0.1:1502", "http://127.0.0.1:9108/metrics", page_devices(points))
    configs = parse_sources(doc, "twin sources")
    assert [c.name for c in configs] == ["sunspec-pcs", "prom-twin"]
    for config in configs:
        assert mapping_errors(config, SITE) == [], config.name
    page = configs[1]
    on_page = {p["device"] for p in points if p["metric"] in PAGE_METRICS}
    assert {page.device(f"127.0.0.1:9108/{d}") for d in on_page} == on_page
    assert configs[0].device("meter/203") == "grid-meter-1" and configs[0].device("pcs/802") == "ess-1"


def test_the_compose_profiles_sources_file_is_the_one_the_builder_writes(points):
    expected = twin_sources(SITE, "twin:1503", "twin-pcs:1502", "http://twin:9108/metrics", page_devices(points),
                            interval_s=1.0)
    assert yaml.safe_load(COMPOSE_FILE.read_text()) == expected
