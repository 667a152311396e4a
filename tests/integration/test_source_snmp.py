"""Kind ``snmp`` against Debian's real snmpd serving a PDU through a pass_persist script: v2c and
v3 (SHA + AES), units, breaker and overload alarms, bad values, a timeout, and the monitoring-loss
alarm on the real broker. The readings tests run with both clients (pysnmp, and Net-SNMP through
ezsnmp), and one compares them poll by poll."""

from __future__ import annotations

import importlib.util

import pytest

from opsloop.config.site import parse_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources import KINDS
from opsloop.connectors.sources.base import SourceUnavailable
from opsloop.connectors.sources.loop import SourceRun

from opsloop.ops.snmp_pdu import COMMUNITY, PDU_ROOT, V3_AUTH, V3_PRIV, V3_USER, LocalSnmpd, free_udp_port, pdu_values
from source_run import finish_and_read

pytestmark = pytest.mark.integration
CLIENTS = ["pysnmp", pytest.param("ezsnmp", marks=pytest.mark.skipif(
    importlib.util.find_spec("ezsnmp") is None, reason="ezsnmp has wheels for x86-64 Linux only"))]

SITE = parse_site({"site": {"id": "lab"}, "pdus": [{"id": "pdu-a1", "share": 1.0}],
                   "devices": [{"id": "pdu-poller", "type": "collector"}]}, "lab.yaml")
MAPPING = {
    "metrics": [{"oid": f"{PDU_ROOT}.1.1.3", "metric": "phase{index}_kw", "scale": 0.001, "unit": "kW"},
                {"oid": f"{PDU_ROOT}.1.1.2", "metric": "phase{index}_a", "scale": 0.1, "unit": "A"},
                {"oid": f"{PDU_ROOT}.1.1.4", "metric": "phase{index}_v", "scale": 0.1, "unit": "V"},
                {"oid": f"{PDU_ROOT}.1.2", "metric": "it_kw", "scale": 0.001, "unit": "kW"},
                {"oid": f"{PDU_ROOT}.2.1.2", "metric": "outlet{index}_kw", "scale": 0.001, "unit": "kW"},
                {"oid": f"{PDU_ROOT}.5.1.2", "metric": "inlet{index}_temp_c", "scale": 0.1, "unit": "degC"}],
    "alarms": [{"oid": f"{PDU_ROOT}.3.1.2", "raise_on": [2], "code": "PDU_BREAKER_OPEN", "severity": "major",
                "text": "breaker {index} open"},
               {"oid": f"{PDU_ROOT}.1.1.5", "raise_on": [2], "code": "PDU_PHASE_OVERLOAD", "severity": "major",
                "text": "phase {index} overloaded"}]}


def config(port: int, **options):
    auth = options.pop("auth", {"version": "v2c", "community": COMMUNITY})
    block = {"kind": "snmp", "name": "pdu-poller", "timeout_s": 0.5, "interval_s": 0.01, "backoff_max_s": 0.01,
             "fail_after": 2, "devices": {f"127.0.0.1:{port}": "pdu-a1"},
             "options": {"host": "127.0.0.1", "port": port, "retries": 0, **auth, **MAPPING, **options}}
    return parse_sources({"site": "lab", "sources": [block]}, "sources.yaml")[0]


V3 = {"version": "v3", "v3": {"user": V3_USER, "auth_protocol": "sha", "auth_key_env": "PDU_AUTH",
                              "priv_protocol": "aes", "priv_key_env": "PDU_PRIV"}}


@pytest.fixture
def agent(tmp_path):
    with LocalSnmpd(tmp_path) as snmpd:
        yield snmpd


@pytest.fixture
def v3_keys(monkeypatch):
    monkeypatch.setenv("PDU_AUTH", V3_AUTH)
    monkeypatch.setenv("PDU_PRIV", V3_PRIV)


def poll(cfg, times: int = 1):
    poller = KINDS["snmp"].build(cfg, SITE, None)
    try:
        return [poller.poll(1_000 * (i + 1)) for i in range(times)]
    finally:
        poller.close()


EXPECTED = {"phase1_kw": 1.83, "phase2_kw": 1.75, "phase3_kw": 1.92, "phase1_a": 8.0, "phase2_a": 7.6,
            "phase3_a": 8.3, "phase1_v": 230.0, "phase2_v": 230.0, "phase3_v": 230.0, "it_kw": 5.5,  # config order
            "outlet1_kw": 0.41, "outlet2_kw": 0.395, "outlet3_kw": 0.0, "outlet4_kw": 0.512, "inlet1_temp_c": 23.1}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("auth", ["v2c", "v3"])
def test_a_pdu_is_read_over_v2c_and_v3_in_kw_amps_volts_and_degc(agent, v3_keys, auth, client):
    cfg = config(agent.port, client=client, **({"auth": V3} if auth == "v3" else {}))
    (got,) = poll(cfg)
    assert {p["metric"]: p["value"] for p in got.points} == pytest.approx(EXPECTED)
    assert {(p["device"], p["device_type"], p["site"]) for p in got.points} == {("pdu-a1", "pdu", "lab")}
    assert {p["metric"]: p["unit"] for p in got.points}["inlet1_temp_c"] == "degC"
    assert got.alarms == [] and got.rejects == []


@pytest.mark.parametrize("client", CLIENTS)
def test_columns_longer_than_one_request_are_walked_to_their_end(agent, client):
    (got,) = poll(config(agent.port, max_repetitions=1, client=client))  # one row per column per request: many rounds
    assert [p["metric"] for p in got.points] == list(EXPECTED)  # the config's column order, rows in order
    assert {p["metric"]: p["value"] for p in got.points} == pytest.approx(EXPECTED)


@pytest.mark.parametrize("client, says", [("pysnmp", "Wrong SNMP PDU digest"),
                                           ("ezsnmp", r"Authentication failure \(incorrect password")])
def test_v3_with_a_wrong_key_is_refused_by_the_agent(agent, monkeypatch, client, says):
    if client == "ezsnmp":
        pytest.importorskip("ezsnmp")
    monkeypatch.setenv("PDU_AUTH", "not-the-key-1")
    monkeypatch.setenv("PDU_PRIV", V3_PRIV)
    with pytest.raises(SourceUnavailable, match=f"SNMP 127.0.0.1:{agent.port}: {says}"):
        poll(config(agent.port, auth=V3, client=client))


def test_an_open_breaker_and_an_overloaded_phase_raise_alarms_that_clear(agent):
    poller = KINDS["snmp"].build(config(agent.port), SITE, None)
    try:
        first = poller.poll(1_000)
        agent.set_values(pdu_values(breakers=(1, 2), overload=(1, 1, 2)))
        opened, again = poller.poll(2_000), poller.poll(3_000)
        agent.set_values(pdu_values())
        closed = poller.poll(4_000)
    finally:
        poller.close()
    assert first.alarms == [] and again.alarms == []
    assert [(a["code"], a["state"], a["text"], a["device"]) for a in opened.alarms] == [  # in the config's order
        ("PDU_BREAKER_OPEN", "raise", "pdu-a1: breaker 2 open", "pdu-a1"),
        ("PDU_PHASE_OVERLOAD", "raise", "pdu-a1: phase 3 overloaded", "pdu-a1")]
    assert [(a["code"], a["state"]) for a in closed.alarms] == [("PDU_BREAKER_OPEN", "clear"),
                                                                ("PDU_PHASE_OVERLOAD", "clear")]


def test_values_that_are_not_numbers_are_dead_lettered_and_the_rest_is_read(agent):
    values = pdu_values()
    values[f"{PDU_ROOT}.2.1.2.3"] = ["string", "n/a"]
    values[f"{PDU_ROOT}.5.1.2.1"] = ["string", "NaN"]
    agent.set_values(values)
    (got,) = poll(config(agent.port))
    assert [(r.kind, r.raw) for r in got.rejects] == [("decode", f"{PDU_ROOT}.2.1.2.3 = n/a".encode()),
                                                      ("invalid", f"{PDU_ROOT}.5.1.2.1 = NaN".encode())]
    metrics = {p["metric"] for p in got.points}
    assert "outlet3_kw" not in metrics and "inlet1_temp_c" not in metrics and "outlet4_kw" in metrics


@pytest.mark.parametrize("client", CLIENTS)
def test_an_agent_that_does_not_answer_is_source_unavailable(client):
    port = free_udp_port()
    with pytest.raises(SourceUnavailable) as failed:
        poll(config(port, client=client))
    assert str(failed.value) == (f"SNMP 127.0.0.1:{port}: No SNMP response received before timeout "
                                 f"(walking {', '.join(m['oid'] for m in MAPPING['metrics'] + MAPPING['alarms'])})")


def readings(got) -> list:
    """A poll's points, alarms and rejects, comparable across clients."""
    return [[(p["metric"], p["value"], p["unit"], p["device"]) for p in got.points],
            [(a["code"], a["state"], a["text"]) for a in got.alarms], [(r.kind, r.raw, r.reason) for r in got.rejects]]


@pytest.mark.parametrize("auth", ["v2c", "v3"])
def test_both_clients_read_the_same_points_alarms_and_rejects_from_the_same_agent(agent, v3_keys, auth):
    pytest.importorskip("ezsnmp")
    values = pdu_values(breakers=(2, 1), overload=(1, 2, 1))
    values[f"{PDU_ROOT}.2.1.2.3"] = ["string", "n/a"]
    values[f"{PDU_ROOT}.5.1.2.1"] = ["string", "NaN"]
    agent.set_values(values)
    extra = {"auth": V3} if auth == "v3" else {}
    by_client = {c: [readings(r) for r in poll(config(agent.port, client=c, **extra), times=2)]
                 for c in ("pysnmp", "ezsnmp")}
    assert by_client["ezsnmp"] == by_client["pysnmp"]
    first_points, first_alarms, first_rejects = by_client["pysnmp"][0]
    assert len(first_points) == len(EXPECTED) - 2 and len(first_alarms) == 2 and len(first_rejects) == 2
    assert by_client["pysnmp"][1][1] == []  # the alarms stay raised: no new edge on the second poll


def test_breaker_alarm_and_monitoring_loss_reach_kafka(kafka_settings, read_topic, tmp_path):
    clock = iter(range(1_000, 10**9, 1_000))
    snmpd = LocalSnmpd(tmp_path).start()
    cfg = config(snmpd.port)
    source = SourceRun(kafka_settings, cfg, SITE, KINDS["snmp"].build(cfg, SITE, None), clock=lambda: next(clock))
    try:
        source.poll_once()
        snmpd.set_values(pdu_values(breakers=(2, 1)))
        source.poll_once()
    finally:
        snmpd.stop()
    source.poll_once(), source.poll_once()  # no agent: fail_after = 2
    with LocalSnmpd(tmp_path, port=snmpd.port):
        source.poll_once()
        published = finish_and_read(source, kafka_settings, read_topic)
    alarms, points = published["Alarm"], published["TelemetryPoint"]
    by_device = {d: [(a["code"], a["state"]) for a in alarms if a["device"] == d] for d in ("pdu-a1", "pdu-poller")}
    # the restarted PDU has every breaker closed again: the open one clears
    assert by_device == {"pdu-a1": [("PDU_BREAKER_OPEN", "raise"), ("PDU_BREAKER_OPEN", "clear")],
                         "pdu-poller": [("COLLECTOR_DOWN", "raise"), ("COLLECTOR_DOWN", "clear")]}
    assert [p["value"] for p in points if p["metric"] == "it_kw"] == [5.5, 5.5, 5.5]


MANY = parse_site({"site": {"id": "lab"}, "pdus": [{"id": f"pdu-a{i}", "share": 1 / 3} for i in (1, 2, 3)],
                   "devices": [{"id": "pdu-poller", "type": "collector"}]}, "lab.yaml")


@pytest.mark.parametrize("client", CLIENTS)
def test_one_source_walks_several_agents_at_once_each_with_its_own_alarms_and_a_silent_one_is_named(tmp_path, client):
    dirs = [tmp_path / f"a{i}" for i in (1, 2, 3)]
    for d in dirs:
        d.mkdir()
    silent = free_udp_port()
    with LocalSnmpd(dirs[0]) as a1, LocalSnmpd(dirs[1]) as a2, LocalSnmpd(dirs[2]) as a3:
        a2.set_values(pdu_values(phase_w=(1000, 1000, 1000), breakers=(2, 1)))
        agents = [a1, a2, a3]
        block = config(a1.port)
        options = {k: v for k, v in block.options.items() if k not in ("host", "port")} | {"client": client}
        cfg = parse_sources({"site": "lab", "sources": [{
            "kind": "snmp", "name": "pdu-poller", "timeout_s": 0.5,
            "devices": {**{f"127.0.0.1:{a.port}": f"pdu-a{i}" for i, a in enumerate(agents, 1)},
                        f"127.0.0.1:{silent}": "pdu-a1"},
            "options": {**options, "targets": [{"host": "127.0.0.1", "port": a.port} for a in agents]
                        + [{"host": "127.0.0.1", "port": silent}]}}]}, "sources.yaml")[0]
        poller = KINDS["snmp"].build(cfg, MANY, None)
        try:
            got = poller.poll(1_000)
        finally:
            poller.close()
    it_kw = {p["device"]: p["value"] for p in got.points if p["metric"] == "it_kw"}
    assert it_kw == {"pdu-a1": 5.5, "pdu-a2": 3.0, "pdu-a3": 5.5}
    assert len(got.points) == 3 * len(EXPECTED)
    assert [(a["device"], a["code"]) for a in got.alarms] == [("pdu-a2", "PDU_BREAKER_OPEN")]
    assert poller.failed_targets == {f"127.0.0.1:{silent}": 1}

    everything_silent = parse_sources({"site": "lab", "sources": [{
        "kind": "snmp", "name": "pdu-poller", "timeout_s": 0.5, "devices": {f"127.0.0.1:{silent}": "pdu-a1"},
        "options": {**options, "targets": [{"host": "127.0.0.1", "port": silent}]}}]}, "sources.yaml")[0]
    with pytest.raises(SourceUnavailable, match=f"127.0.0.1:{silent}"):
        poll(everything_silent)
