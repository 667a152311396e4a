"""The snmp kind's client-neutral parts: the column walk both clients drive, how ezsnmp's typed
text becomes pysnmp-like values, and the ``options.client`` checks."""

from __future__ import annotations

import pytest

from opsloop.config.site import parse_site
from opsloop.config.sources import SourceConfigError, parse_sources
from opsloop.connectors.sources.snmp import SnmpPoller
from opsloop.connectors.sources.snmp_walk import END, ColumnWalk

pytestmark = pytest.mark.unit

A, B = "1.3.6.1.4.1.32473.14.1.1.3", "1.3.6.1.4.1.32473.14.1.2"


def test_columns_walk_side_by_side_until_each_leaves_its_subtree():
    walk = ColumnWalk([A, B])
    assert walk.request() == [A, B]
    # row-major, two repetitions: B's second row is already past B (the next column's first row)
    walk.feed([(f"{A}.1", 10), (f"{B}.0", 5), (f"{A}.2", 20), ("1.3.6.1.4.1.32473.14.2.1.2.1", 7)])
    assert walk.request() == [f"{A}.2"]
    walk.feed([(f"{A}.3", 30), (f"{A}.3.1", END)])  # END finishes the column whatever its oid
    assert walk.request() == []
    assert walk.rows() == [(f"{A}.1", 10), (f"{A}.2", 20), (f"{A}.3", 30), (f"{B}.0", 5)]
    assert walk.repetitions(16) == 4 and walk.repetitions(2) == 2


def test_an_agent_with_nothing_under_a_column_ends_the_walk():
    walk = ColumnWalk([A])
    walk.request()
    walk.feed([])
    assert walk.request() == [] and walk.rows() == []


def test_ezsnmp_values_read_as_pysnmp_gives_them():
    netsnmp = pytest.importorskip("opsloop.connectors.sources.snmp_netsnmp")
    if netsnmp.ezsnmp is None:
        pytest.skip("ezsnmp has wheels for x86-64 Linux only")
    assert netsnmp.value_of("1830", "Gauge32") == 1830 and netsnmp.value_of("-4", "INTEGER") == -4
    assert netsnmp.value_of("18446744073709551615", "Counter64") == 2**64 - 1
    assert netsnmp.value_of("n/a", "STRING") == "n/a"
    gone = "No more variables left in this MIB View (It is past the end of the MIB tree)"
    assert netsnmp.value_of(gone, gone) is END


SITE = parse_site({"site": {"id": "lab"}, "pdus": [{"id": "pdu-a1", "share": 1.0}],
                   "devices": [{"id": "pdu-poller", "type": "collector"}]}, "lab.yaml")


def poller(**options):
    block = {"kind": "snmp", "name": "pdu-poller", "devices": {"127.0.0.1:16161": "pdu-a1"},
             "options": {"host": "127.0.0.1", "port": 16161, "community": "c",
                         "metrics": [{"oid": B, "metric": "it_kw", "scale": 0.001, "unit": "kW"}], **options}}
    return SnmpPoller(parse_sources({"site": "lab", "sources": [block]}, "sources.yaml")[0], SITE)


def test_an_unknown_client_is_a_config_error():
    with pytest.raises(SourceConfigError, match="options.client must be one of pysnmp, ezsnmp, got 'netsnmp'"):
        poller(client="netsnmp")


def test_ezsnmp_refuses_3des_privacy_which_net_snmp_lacks():
    netsnmp = pytest.importorskip("opsloop.connectors.sources.snmp_netsnmp")
    if netsnmp.ezsnmp is None:
        pytest.skip("ezsnmp has wheels for x86-64 Linux only")
    v3 = {"user": "u", "auth_key": "auth-key-1", "priv_key": "priv-key-1", "priv_protocol": "3des"}
    with pytest.raises(SourceConfigError, match="ezsnmp takes des, aes, aes192, aes256"):
        poller(client="ezsnmp", version="v3", v3=v3)
    poller(client="pysnmp", version="v3", v3=v3).close()  # pysnmp has it
