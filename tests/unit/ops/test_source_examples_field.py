"""The example configs of the sunspec and snmp kinds fit the demo site and build (nothing is contacted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site
from opsloop.config.sources import load_sources
from opsloop.connectors.sources import KINDS
from opsloop.connectors.sources.loop import mapping_errors

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[3] / "ops" / "sources"


@pytest.mark.parametrize("kind", ["sunspec", "snmp"])
def test_the_example_config_names_only_demo_devices_and_builds(kind, monkeypatch):
    monkeypatch.setenv("OPSLOOP_PDU_AUTH", "auth-key-1")
    monkeypatch.setenv("OPSLOOP_PDU_PRIV", "priv-key-1")
    site = load_site(DEMO_SITE)
    configs = [c for c in load_sources(EXAMPLES / f"{kind}.yaml") if c.kind == kind]
    assert configs and all(mapping_errors(c, site) == [] for c in configs)
    for config in configs:
        KINDS[kind].build(config, site, None).close()


def test_a_v3_key_the_environment_lacks_is_named(monkeypatch):
    monkeypatch.delenv("OPSLOOP_PDU_AUTH", raising=False)
    (config,) = load_sources(EXAMPLES / "snmp.yaml")
    with pytest.raises(ValueError, match="auth_key_env names OPSLOOP_PDU_AUTH, which is not set"):
        KINDS["snmp"].build(config, load_site(DEMO_SITE), None)
