"""The default log rules on real-looking lines, journald entries, and rules that cannot be used."""

import json

import pytest
import yaml

from opsloop.config.assets import LOG_RULES_FILE
from opsloop.models.log_rules import LogAlarms, LogRuleError, parse_journal, parse_rules, parse_syslog

pytestmark = pytest.mark.unit

RULES = parse_rules(yaml.safe_load(LOG_RULES_FILE.read_text()), "log_rules.yaml")
DEVICES = {"gpu-n1/PCI:0000:3b:00": "rack-a01-n1-g2", "gpu-n1": "rack-a01-n1", "head-1": "slurm-head",
           "ups-a": "ups-a", "mgmt-1": "ups-b"}


def _alarms(*lines: str):
    logs = LogAlarms(RULES, DEVICES, "demo", "kernel", default_host="head-1")
    out = [logs.alarm(parse_syslog(line), 1_000) for line in lines]
    return logs, [(a["code"], a["severity"], a["state"], a["device"], a["device_type"]) if a else None for a in out]


def test_nvidia_xid_codes_and_severity_by_xid_with_the_gpu_mapped_by_pci_then_host():
    logs, got = _alarms(
        "2026-12-05T18:00:01.123456+00:00 gpu-n1 kernel: [811.2] NVRM: Xid (PCI:0000:3b:00): 79, pid=2231, "
        "name=python3, GPU has fallen off the bus.",
        "Dec  5 18:00:02 gpu-n1 kernel: NVRM: Xid (PCI:0000:5e:00): 13, pid=9, name=train, Graphics Exception",
        "2026-12-05T18:00:03Z gpu-n1 kernel: NVRM: Xid (PCI:0000:3b:00): 94, pid='<unknown>', name=<unknown>, "
        "Contained: SM (0x1). RST: No, D-RST: No",
        "2026-12-05T18:00:04Z gpu-n1 kernel: nvidia-nvswitch2: SXid (PCI:0000:07:00.0): 12028, Non-fatal, Link 32")
    assert got == [("XID_79", "critical", "raise", "rack-a01-n1-g2", "gpu"),
                   ("XID_13", "minor", "raise", "rack-a01-n1", "gpu"),
                   ("XID_94", "major", "raise", "rack-a01-n1-g2", "gpu"),
                   ("SXID", "major", "raise", "rack-a01-n1", "nvswitch")]
    assert logs.matched == 4 and logs.ignored == 0


def test_the_raw_line_time_and_groups_are_kept():
    line = ("2026-12-05T18:00:01.5+00:00 gpu-n1 kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=2231, name=python3, "
            "GPU has fallen off the bus.")
    record = LogAlarms(RULES, DEVICES, "demo", "kernel").alarm(parse_syslog(line), 1_000)
    assert record["attributes"]["log_line"] == line and record["ts_ms"] == 1_796_493_601_500
    assert record["attributes"]["xid"] == "79" and record["attributes"]["rule"] == "nvidia-xid"
    assert record["text"].startswith("GPU PCI:0000:3b:00 on gpu-n1: Xid 79: pid=2231")


def test_slurm_daemon_errors_from_syslog_and_from_their_own_files():
    _, got = _alarms("2026-12-05T18:01:00Z head-1 slurmctld[812]: error: Nodes gpu-n[1-4] not responding",
                     "2026-12-05T18:01:01Z head-1 slurmctld[812]: error: Munge decode failed: Expired credential",
                     "2026-12-05T18:01:02Z gpu-n1 slurmd[90]: error: Gres GPU plugin failed to load configuration",
                     "2026-12-05T18:01:03Z gpu-n1 slurmd[90]: fatal: Unable to determine this slurmd's NodeName",
                     "2026-12-05T18:01:04Z gpu-n1 slurmd[90]: launch task StepId=12.0 request from UID:0",
                     "2026-12-05T18:01:05Z gpu-n1 myapp[7]: error: not a slurm daemon")
    assert got == [("SLURM_NODE_NOT_RESPONDING", "major", "raise", "slurm-head", "gpu_node"),
                   ("MUNGE_FAIL", "major", "raise", "slurm-head", "gpu_node"),
                   ("SLURM_DAEMON_ERROR", "minor", "raise", "rack-a01-n1", "gpu_node"),
                   ("SLURM_DAEMON_FATAL", "critical", "raise", "rack-a01-n1", "gpu_node"), None, None]
    own = LogAlarms(RULES, DEVICES, "demo", "ctld", default_host="head-1")
    record = own.alarm(parse_syslog("[2026-12-05T18:09:56.123] error: Nodes vm not responding", "head-1",
                                    "slurmctld"), 5_000)
    assert (record["code"], record["device"], record["ts_ms"]) == ("SLURM_NODE_NOT_RESPONDING", "slurm-head", 5_000)


def test_ups_events_raise_and_clear():
    _, got = _alarms("2026-12-05T18:02:00Z mgmt-1 upsmon[501]: UPS ups-a@localhost on battery",
                     "2026-12-05T18:02:30Z mgmt-1 upsmon[501]: UPS ups-a@localhost battery is low",
                     "2026-12-05T18:03:00Z mgmt-1 upsmon[501]: UPS ups-a@localhost on line power",
                     "2026-12-05T18:04:00Z mgmt-1 upsmon[501]: Communications with UPS ups-a@localhost lost",
                     "2026-12-05T18:05:00Z mgmt-1 apcupsd[77]: Power failure.",
                     "2026-12-05T18:05:06Z mgmt-1 apcupsd[77]: Running on UPS batteries.",
                     "2026-12-05T18:06:00Z mgmt-1 apcupsd[77]: Mains returned. No longer on UPS batteries.",
                     "2026-12-05T18:07:00Z mgmt-1 apcupsd[77]: Battery power exhausted.")
    assert got == [("UPS_ON_BATTERY", "major", "raise", "ups-a", "ups"), ("UPS_BATT_LOW", "critical", "raise", "ups-a", "ups"),
                   ("UPS_ON_BATTERY", "info", "clear", "ups-a", "ups"), ("UPS_COMM_LOST", "major", "raise", "ups-a", "ups"),
                   ("UPS_ON_BATTERY", "major", "raise", "ups-b", "ups"), ("UPS_ON_BATTERY", "major", "raise", "ups-b", "ups"),
                   ("UPS_ON_BATTERY", "info", "clear", "ups-b", "ups"), ("UPS_BATT_LOW", "critical", "raise", "ups-b", "ups")]


def test_unmatched_lines_are_counted_and_unmapped_hosts_named():
    logs = LogAlarms(RULES, {}, "demo", "kernel")
    assert logs.alarm(parse_syslog("2026-12-05T18:00:00Z n9 sshd[4]: Accepted publickey for root"), 0) is None
    assert logs.alarm(parse_syslog("2026-12-05T18:00:00Z n9 kernel: NVRM: Xid (PCI:0000:3b:00): 79, x"), 0) is None
    assert (logs.ignored, logs.unmapped, logs.matched) == (1, 1, 0)
    assert logs.last_unmapped == "rule nvidia-xid matched, but the devices map has none of n9/PCI:0000:3b:00, " \
                                 "PCI:0000:3b:00, n9, *"


def test_journal_entries_text_bytes_and_malformed():
    entry = {"__REALTIME_TIMESTAMP": "1796493601500123", "_HOSTNAME": "gpu-n1", "SYSLOG_IDENTIFIER": "kernel",
             "_TRANSPORT": "kernel", "MESSAGE": "NVRM: Xid (PCI:0000:3b:00): 48, pid=1, name=x, DBE (0x1)"}
    line = parse_journal(json.loads(json.dumps(entry)))
    assert (line.ts_ms, line.host, line.program) == (1_796_493_601_500, "gpu-n1", "kernel")
    assert line.raw == "2026-12-05T18:00:01.500000+00:00 gpu-n1 kernel: " + entry["MESSAGE"]
    record = LogAlarms(RULES, DEVICES, "demo", "journal").alarm(line, 0)
    assert (record["code"], record["severity"], record["device"]) == ("XID_48", "critical", "rack-a01-n1-g2")
    assert parse_journal({**entry, "MESSAGE": list(b"slurmd error: \xff")}).message == "slurmd error: \ufffd"
    for bad in ({"_HOSTNAME": "x"}, ["MESSAGE"], {"MESSAGE": 5}):
        with pytest.raises(ValueError):
            parse_journal(bad)


@pytest.mark.parametrize("rule, message", [
    ({"name": "r", "pattern": "(", "code": "C", "device_type": "x"}, "bad regex"),
    ({"name": "r", "pattern": "x", "code": "C"}, "'device_type' is required"),
    ({"name": "r", "pattern": "x", "code": "C", "device_type": "x", "severity": "loud"}, "severity must be"),
    ({"name": "r", "pattern": "x", "code": "C", "device_type": "x", "device_key": "pci"}, "device_key 'pci'"),
    ({"name": "r", "pattern": "(?P<n>x)", "code": "C", "device_type": "x", "severity_by": {"group": "m"}},
     "severity_by needs"),
    ({"name": "r", "pattern": "x", "code": "C", "device_type": "x", "colour": "red"}, "unknown key"),
])
def test_rules_that_cannot_be_used_are_named(rule, message):
    with pytest.raises(LogRuleError, match=message):
        parse_rules([rule], "my.yaml")
