"""The Slurm queue parser and snapshot: GPUs over nodes, times, reservations, unmapped partitions."""

from dataclasses import replace

import pytest

from opsloop.config.site import SiteError, parse_site
from opsloop.models.slurm_queue import (NodeGpus, PartitionDevice, parse_nodes, parse_reservations, parse_squeue,
                                        partition_devices, snapshot, with_node_gpus)

pytestmark = pytest.mark.unit

ROWS = "\n".join([
    "11|batch|RUNNING|4294901756|gres:gpu:8|N/A|2|N/A|2|2026-12-05T18:10:11|2026-12-05T18:10:11|2026-12-05T18:15:11|None"
    "|(null)|root|full|node",  # the name keeps its separator
    "12|train-a|PENDING|4294901755|N/A|gres/gpu:a100:4|3|N/A|3|2026-12-05T18:10:11|2026-12-05T18:15:11|"
    "2026-12-05T18:20:11|Resources|maint|ann|",
    "13|lab|PENDING|5|gres:gpu:1|N/A|1|N/A|1|N/A|N/A|N/A|Priority|(null)|bob|x",
    "15_3|batch|PENDING|5|N/A|N/A|2|gres:gpu:1|6|N/A|N/A|N/A|Priority|(null)|bob|per task",
    "garbage without separators",
    "14|batch|RUNNING|7|gres:gpu:1|N/A|1|N/A|1|2026-13-45T99:00:00|N/A|N/A|None|(null)|bob|bad time",
])
NOW = 1_796_494_211_000  # 2026-12-05T18:10:11Z


def test_rows_give_gpus_over_nodes_utc_times_and_bad_rows_with_reasons():
    jobs, bad = parse_squeue(ROWS)
    assert [(j.job_id, j.gpus, j.nodes) for j in jobs] == [("11", 16, 2), ("12", 4, 3), ("13", 1, 1), ("15_3", 6, 2)]
    assert jobs[0].name == "full|node" and jobs[0].start_ms == NOW and jobs[0].expected_start_ms is None
    assert jobs[1].expected_start_ms == NOW + 300_000 and jobs[1].reservation == "maint" and jobs[1].name is None
    assert jobs[2].submit_ms is None and jobs[2].reason == "Priority"
    assert [why.split(":")[0] for _, why in bad] == ["1 fields, expected 16", "unreadable field"]


def test_snapshot_totals_per_device_and_unmapped_partitions_left_out():
    jobs, _ = parse_squeue(ROWS)
    parts = {"batch": PartitionDevice("pod-b", "gpu_node", 0.5), "train-a": PartitionDevice("pod-a", "gpu_node", 1.0)}
    snap = snapshot(NOW, "s", "q", jobs, [], parts)
    assert [(r["entry"], r["id"], r["est_kw"], r["gpus"], r["snapshot_size"]) for r in snap.records] == [
        ("job", "11", 8.0, 16, 3), ("job", "12", 4.0, 4, 3), ("job", "15_3", 3.0, 6, 3), ("snapshot", "q", 15.0, 26, 3)]
    totals = {(p["device"], p["metric"]): p["value"] for p in snap.points}
    assert totals[("pod-b", "slurm_running_kw")] == 8.0 and totals[("pod-a", "slurm_pending_kw")] == 4.0
    assert totals[("pod-a", "slurm_starting_1h_kw")] == 4.0 and totals[("pod-b", "slurm_pending_gpus")] == 6
    assert snap.unmapped == {"lab": 1}
    later = snapshot(NOW - 3_600_000, "s", "q", jobs, [], parts)  # expected start more than an hour ahead
    assert {(p["device"], p["metric"]): p["value"] for p in later.points}[("pod-a", "slurm_starting_1h_kw")] == 0


def test_reservations_with_and_without_partition():
    text = ("ReservationName=maint StartTime=2026-12-05T19:10:11 EndTime=2026-12-05T20:10:11 Duration=01:00:00 "
            "Nodes=vm NodeCnt=4 CoreCnt=64 PartitionName=(null) TRES=cpu=64,gres/gpu=32 Users=root State=INACTIVE\n"
            "ReservationName=big StartTime=2026-12-05T18:00:00 EndTime=2026-12-06T18:00:00 NodeCnt=1 "
            "PartitionName=batch TRES=cpu=8,gres/gpu=8 Users=ann State=ACTIVE\n")
    resv, bad = parse_reservations(text + "ReservationName=x StartTime=tomorrow\n")
    assert [why.split(":")[0] for _, why in bad] == ["unreadable field"]
    assert [(r.name, r.partition, r.gpus, r.nodes, r.state) for r in resv] == \
        [("maint", None, 32, 4, "INACTIVE"), ("big", "batch", 8, 1, "ACTIVE")]
    assert resv[0].start_ms == NOW + 3_600_000 and parse_reservations("No reservations in the system\n") == ([], [])
    snap = snapshot(NOW, "s", "q", [], resv, {"batch": PartitionDevice("pod-b", "gpu_node", 0.5)}, 0.9)
    assert [(r["entry"], r["device"], r["est_kw"]) for r in snap.records] == \
        [("reservation", None, pytest.approx(28.8)), ("reservation", "pod-b", 4.0), ("snapshot", None, 0.0)]
    empty = snapshot(NOW, "s", "q", [], [], {})
    assert [(r["entry"], r["snapshot_size"], r["gpus"]) for r in empty.records] == [("snapshot", 0, 0)]


def test_site_kw_per_gpu_maps_partitions_and_is_checked():
    site = parse_site({"site": {"id": "s"}, "gpu_pods": [
        {"id": "pod-a", "nodes": 1, "gpus_per_node": 8, "slurm_partition": "train", "kw_per_gpu": 1.2},
        {"id": "pod-b", "nodes": 1, "gpus_per_node": 8, "slurm_partition": "batch"}]}, "s.yaml")
    parts = partition_devices(site.gpu_pods, {"debug": "node-9"}, {"node-9": "gpu_node"}, 0.4)
    assert {k: (v.device, v.kw_per_gpu) for k, v in parts.items()} == \
        {"train": ("pod-a", 1.2), "batch": ("pod-b", 0.7), "debug": ("node-9", 0.4)}
    with pytest.raises(SiteError, match=r"gpu_pods\[0\].kw_per_gpu: expected a positive number"):
        parse_site({"site": {"id": "s"}, "gpu_pods": [{"id": "p", "kw_per_gpu": 0}]}, "s.yaml")


RESV_22_05 = ("ReservationName=r-nodes StartTime=2026-12-05T23:09:33 EndTime=2026-12-05T23:39:33 Duration=00:30:00 "
              "Nodes=vm NodeCnt=1 CoreCnt=64 Features=(null) PartitionName=batch Flags=IGNORE_JOBS,SPEC_NODES,PART_NODES "
              "TRES=cpu=64 Users=root Groups=(null) Accounts=(null) Licenses=(null) State=INACTIVE BurstBuffer=(null) "
              "Watts=n/a MaxStartDelay=(null)")  # Slurm 22.05 without slurmdbd: no gres/gpu in TRES
NODE_22_05 = ("NodeName=vm Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=64 CPUTot=64 CPULoad=15.11 "
              "AvailableFeatures=(null) ActiveFeatures=(null) Gres=gpu:8 NodeAddr=127.0.0.1 NodeHostName=vm "
              "Version=22.05.8 State=IDLE CfgTRES=cpu=64,mem=500G,billing=64 AllocTRES= CapWatts=n/a")


def test_a_reservation_without_gpu_tres_counts_the_gpus_of_the_nodes_it_holds_whole():
    (resv,), bad = parse_reservations(RESV_22_05)
    assert bad == [] and (resv.gpus, resv.node_list, resv.cores) == (0, "vm", 64)
    nodes = parse_nodes(NODE_22_05)
    assert nodes == {"vm": NodeGpus(8, 64)}
    assert with_node_gpus(resv, nodes).gpus == 8
    assert with_node_gpus(replace(resv, cores=16), nodes).gpus == 0  # a quarter of the node's cores: which GPUs?
    assert with_node_gpus(replace(resv, gpus=2), nodes).gpus == 2  # the TRES, where Slurm gives it, wins
    (tres,), _ = parse_reservations(RESV_22_05.replace("TRES=cpu=64", "TRES=cpu=64,gres/gpu=4"))
    assert tres.gpus == 4
