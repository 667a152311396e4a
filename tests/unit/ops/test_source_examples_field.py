"""The example configs of the sunspec, snmp and snmp-trap kinds fit the demo site and build (nothing is contacted)."""

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


@pytest.mark.parametrize("kind", ["sunspec", "snmp", "snmp-trap"])
def test_the_example_config_names_only_demo_devices_and_builds(kind, monkeypatch):
    for name in ("OPSLOOP_PDU_AUTH", "OPSLOOP_PDU_PRIV", "OPSLOOP_TRAP_COMMUNITY", "OPSLOOP_TRAP_AUTH",
                 "OPSLOOP_TRAP_PRIV"):
        monkeypatch.setenv(name, "key-of-test-1")
    site = load_site(DEMO_SITE)
    configs = [c for c in load_sources(EXAMPLES / f"{kind}.yaml") if c.kind == kind]
    assert configs and all(mapping_errors(c, site) == [] for c in configs)
    for config in configs:
        built = KINDS[kind].build(config, site, None)
        if hasattr(built, "close"):
            built.close()


def test_a_v3_key_the_environment_lacks_is_named(monkeypatch):
    monkeypatch.delenv("OPSLOOP_PDU_AUTH", raising=False)
    (config,) = load_sources(EXAMPLES / "snmp.yaml")
    with pytest.raises(ValueError, match="auth_key_env names OPSLOOP_PDU_AUTH, which is not set"):
        KINDS["snmp"].build(config, load_site(DEMO_SITE), None)


def test_a_trap_from_a_sender_the_config_does_not_map_is_dead_lettered_with_the_sender(monkeypatch):
    for name in ("OPSLOOP_TRAP_COMMUNITY", "OPSLOOP_TRAP_AUTH", "OPSLOOP_TRAP_PRIV"):
        monkeypatch.setenv(name, "key-of-test-1")
    (config,) = load_sources(EXAMPLES / "snmp-trap.yaml")
    receiver = KINDS["snmp-trap"].build(config, load_site(DEMO_SITE), lambda: 1.0)
    trap = [("1.3.6.1.6.3.1.1.4.1.0", "1.3.6.1.4.1.32473.14.0.1"), ("1.3.6.1.4.1.32473.14.3.1.2.1", 2)]
    (reject,) = receiver._readings("10.9.9.9", trap).rejects
    assert reject.kind == "unknown" and "from 10.9.9.9: the sender is not mapped" in reject.reason
    (raised,) = receiver._readings("10.0.20.11", trap).alarms
    assert (raised["device"], raised["code"], raised["text"]) == ("pdu-a1", "PDU_BREAKER_OPEN",
                                                                 "pdu-a1: breaker 1 tripped")
