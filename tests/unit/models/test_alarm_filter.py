"""Alarm filter models: dedup/flap decisions, topology errors, correlation, and the storm targets on two topologies."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.models.alarm_filter import AlarmFilter
from opsloop.models.correlate import SiteCorrelator
from opsloop.models.dedup import DedupConfig, decide, fingerprint, settle
from opsloop.ops.evals.storm import generate_storm
from opsloop.config.site import load_site
from opsloop.models.topology import Topology, TopologyError
from opsloop.ops.evals.alarms import default_background, evaluate

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
TOPOLOGIES = [DEMO_SITE, ROOT / "tests" / "data" / "topology_colo.yaml"]


def alarm(ts, state="raise", device="pdu-1", code="PWR_INPUT_LOSS", **extra):
    return {"ts_ms": ts, "site": "s", "device": device, "device_type": "pdu", "source": "bms", "code": code,
            "severity": "major", "state": state, "text": "", "attributes": {}, **extra}


def test_fingerprint_fields_are_configurable_per_source():
    cfg = DedupConfig(fields_by_source={"snmp": ("device", "attributes.oid")})
    a = alarm(0, source="snmp", attributes={"oid": "1.3.6"})
    assert fingerprint(a, cfg) == "snmp|pdu-1|1.3.6"
    assert fingerprint(alarm(0), cfg) == "bms|s|pdu-1|pdu|PWR_INPUT_LOSS"


def test_flapping_is_announced_once_folded_then_settled():
    cfg = DedupConfig(flap_window_ms=100_000, flap_threshold=4)
    fp, state, emitted = "fp", None, []
    for i, s in enumerate(["raise", "clear", "raise", "clear", "raise", "clear", "raise", "clear"]):
        state, d = decide(state, alarm(i * 5_000, s), fp, cfg)
        emitted.append((d.emit, d.state, d.flapping))
    assert emitted[:4] == [(True, "raise", False), (True, "clear", False), (True, "raise", False),
                           (True, "raise", True)]  # the 4th change starts flapping: shown as raised
    assert all(not e for e, _, _ in emitted[4:])  # folded while flapping
    assert settle(state, 40_000, cfg)[1] is None
    state, d = settle(state, 140_000, cfg)
    assert (d.emit, d.state, d.flapping) == (True, "clear", False) and "stable" in d.reason


def test_a_clear_of_an_alarm_never_raised_is_not_announced():
    _, d = decide(None, alarm(0, "clear"), "fp", DedupConfig())
    assert not d.emit and d.reason == "clear of an alarm that is not raised"


def test_topology_errors_name_the_entry(tmp_path):
    with pytest.raises(TopologyError, match="names 'ups-9'"):
        Topology.from_dict("s", {"power": [{"id": "pdu-1", "type": "pdu", "fed_by": "ups-9"}]})
    with pytest.raises(TopologyError, match="cycle"):
        Topology.from_dict("s", {"power": [{"id": "a", "type": "ups", "fed_by": "b"},
                                           {"id": "b", "type": "ups", "fed_by": "a"}]})
    path = tmp_path / "x.yaml"
    path.write_text("site: {id: x}\n")
    with pytest.raises(TopologyError, match="x.yaml: no topology"):
        Topology.from_site(load_site(path))
    path.write_text("site: {id: x}\ntopology: {power: [{id: pdu-1, type: pdu, fed_by: ups-9}]}\n")
    with pytest.raises(TopologyError, match=r"x.yaml: topology: pdu-1 names 'ups-9'"):
        Topology.from_site(load_site(path))


def test_late_root_merges_the_incidents_opened_by_its_children():
    topo = Topology.from_dict("s", {"power": [{"id": "ups-1", "type": "ups"},
                                              {"id": "pdu-1", "type": "pdu", "fed_by": "ups-1"},
                                              {"id": "pdu-2", "type": "pdu", "fed_by": "ups-1"}]})
    corr = SiteCorrelator("s", topo)

    def clean(ts, device):
        return {"alarm": alarm(ts, device=device), "fingerprint": device, "duplicate_count": 1, "flapping": False}

    corr.on_alarm(clean(0, "pdu-1"))
    corr.on_alarm(clean(1_000, "pdu-2"))
    opened = corr.flush()
    assert len(opened) == 2 and all(r["state"] == "open" for r in opened)
    corr.on_alarm(clean(30_000, "ups-1"))
    records = {r["incident_id"]: r for r in corr.flush()}
    live = [r for r in records.values() if not r["merged_into"]]
    [merged] = [r for r in records.values() if r["merged_into"]]
    assert len(live) == 1 and live[0]["root_device"] == "ups-1" and live[0]["member_count"] == 3
    assert merged["state"] == "resolved" and merged["merged_into"] == live[0]["incident_id"]


def test_members_carry_what_their_alarms_say_for_the_narrator():
    topo = Topology.from_dict("s", {"power": [{"id": "gpu-node-7", "type": "gpu_node"}]})
    corr = SiteCorrelator("s", topo)
    kernel = "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus."
    raised = alarm(0, device="gpu-node-7", code="KERN_ERR", text="kernel error on host",
                   attributes={"log_line": kernel})
    corr.on_alarm({"alarm": raised, "fingerprint": "x", "duplicate_count": 1, "flapping": False})
    [record] = corr.flush()
    [member] = record["members"]
    assert (member["text"], member["log_line"]) == ("kernel error on host", kernel)
    quiet = alarm(0, device="gpu-node-7", code="OTHER", attributes={"message": "x" * 2_000})
    corr.on_alarm({"alarm": quiet, "fingerprint": "y", "duplicate_count": 1, "flapping": False})
    [record] = corr.flush()
    member = next(m for m in record["members"] if m["code"] == "OTHER")
    assert member["text"] == "" and len(member["log_line"]) == 512  # bounded


def test_restored_state_continues_where_it_left_off():
    topo = Topology.from_site(load_site(TOPOLOGIES[1]))
    storm = generate_storm(topo, seed=5, failures=3, background=5, horizon_s=3600)
    whole, split = AlarmFilter({"colo": topo}), AlarmFilter({"colo": topo})
    alarms = [a for a, _ in storm.alarms]
    for a in alarms:
        whole.process(a)
    for a in alarms[: len(alarms) // 2]:
        split.process(a)
    corr = split.correlators["colo"]
    split.correlators["colo"] = SiteCorrelator("colo", topo, corr.config, corr.to_state())
    for a in alarms[len(alarms) // 2:]:
        split.process(a)
    assert split.correlators["colo"].to_state()["incidents"] == whole.correlators["colo"].to_state()["incidents"]


@pytest.mark.parametrize("topology", TOPOLOGIES, ids=lambda p: p.stem)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_storm_corpus_meets_the_targets(topology, seed):
    topo = Topology.from_site(load_site(topology))
    storm = generate_storm(topo, seed=seed, failures=8, background=default_background(len(topo), 3.0))
    result = evaluate(storm, AlarmFilter({topo.site: topo}))
    assert result["compression"] >= 0.95
    assert result["incident_recall"] == 1.0
    assert result["root_cause_accuracy"] >= 0.9
