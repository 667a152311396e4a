"""The example configs of the slurm-queue, logs and hwmon kinds fit the demo site and build."""

from pathlib import Path

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site
from opsloop.config.sources import load_sources
from opsloop.connectors.sources import KINDS
from opsloop.connectors.sources.loop import mapping_errors

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).parents[3] / "ops" / "sources"


@pytest.mark.parametrize("kind", ["slurm-queue", "logs", "hwmon"])
def test_example_config_maps_onto_the_demo_site_and_builds(kind):
    site = load_site(DEMO_SITE)
    configs = load_sources(EXAMPLES / f"{kind}.yaml")
    assert configs and {c.kind for c in configs} == {kind}
    for config in configs:
        assert mapping_errors(config, site) == []
        assert KINDS[kind].build(config, site, lambda: 0.0) is not None
