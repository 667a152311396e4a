"""Whatever text reaches the log, Slurm and sysfs parsers, they answer or name the bad input: never crash."""

import json

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from opsloop.config.assets import LOG_RULES_FILE
from opsloop.models.hwmon import Chip, HwmonReader
from opsloop.models.log_rules import LogAlarms, parse_journal, parse_rules, parse_syslog
from opsloop.models.slurm_queue import PartitionDevice, parse_reservations, parse_squeue, snapshot

pytestmark = pytest.mark.unit

RULES = parse_rules(yaml.safe_load(LOG_RULES_FILE.read_text()))
PIECES = st.sampled_from(["|", "N/A", "gres:gpu:", "gpu=", "2026-12-05T18:10:11", "RUNNING", "PENDING", "\n", "²",
                          "NVRM: Xid (PCI:0000:3b:00): ", "error: ", "slurmd[1]: ", "kernel: ", "UPS a@b on battery",
                          "=", " ", "{", "}", "ReservationName=", "NodeCnt=", "StartTime=", "TRES="])
TEXT = st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_any_line_is_an_alarm_or_ignored(line):
    logs = LogAlarms(RULES, {"*": "node-1"}, "demo", "fuzz")
    record = logs.alarm(parse_syslog(line), 0)
    assert record is None or record["attributes"]["log_line"] == line.rstrip("\r\n")
    assert logs.matched + logs.ignored + logs.unmapped == 1


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["MESSAGE", "__REALTIME_TIMESTAMP", "_HOSTNAME", "SYSLOG_IDENTIFIER", "_PID"]),
                        inner, max_size=5), max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_any_journal_json_is_a_line_or_a_value_error(entry):
    try:
        line = parse_journal(json.loads(json.dumps(entry)))
    except ValueError:
        return
    LogAlarms(RULES, {"*": "node-1"}, "demo", "fuzz").alarm(line, 0)


@settings(max_examples=300, deadline=None)
@given(TEXT, TEXT)
def test_any_squeue_and_scontrol_text_gives_jobs_or_bad_rows(rows, reservations):
    jobs, bad = parse_squeue(rows)
    resv, bad_resv = parse_reservations(reservations)
    snap = snapshot(0, "demo", "fuzz", jobs, resv, {"p": PartitionDevice("pod", "gpu_node", 0.7)})
    assert snap.records[-1]["entry"] == "snapshot" and all(r["gpus"] >= 0 for r in snap.records)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["power1_input", "power1_average", "power1_label", "energy1_input",
                                        "energy2_input", "energy2_label", "energy_uj", "max_energy_range_uj"]),
                       TEXT, max_size=5))
def test_any_sysfs_contents_give_points_or_rejects(attrs):
    reader = HwmonReader({"*": "node-1"}, {}, "lab")
    for kind in ("hwmon", "powercap"):
        out = reader.read([Chip(kind, "intel-rapl:0" if kind == "powercap" else "hwmon1", "x", None, attrs)], 0)
        assert all(p["value"] >= 0 for p in out.points)

