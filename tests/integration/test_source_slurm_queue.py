"""The slurm-queue source against the local Slurm: running, pending (with the scheduler's expected start)
and held jobs, a reservation, their GPUs and estimated kW, on slurm.queue and as partition totals."""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import parse_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources import KINDS
from opsloop.connectors.sources.base import SourceUnavailable
from opsloop.connectors.duckdb import query
from opsloop.connectors.sources.loop import SourceRun
from opsloop.schemas.codec import Codec
from opsloop.streams import views

pytestmark = pytest.mark.integration


def _site():
    doc = yaml.safe_load(DEMO_SITE.read_text())
    doc["gpu_pods"][0]["kw_per_gpu"] = 1.1  # train-a: the site's own estimate per GPU
    doc["devices"] = [{"id": "slurm-q", "type": "collector"}]
    return parse_site(doc, "demo.yaml")


def _submit(slurm, partition: str, *args: str) -> str:
    return slurm.run("sbatch", "--parsable", "-p", partition, "-o", "/dev/null", "-t", "5", *args,
                     "--wrap", "sleep 600").strip().split(";")[0]


def _squeue(slurm, job_id: str, fmt: str) -> str:
    return slurm.run("squeue", "-h", "-j", job_id, "-o", fmt).strip()


def _wait(what, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what.__doc__}")


def test_jobs_and_reservations_come_out_with_gpus_expected_start_and_kw(kafka_settings, slurm, read_topic):
    site = _site()
    running = _submit(slurm, "batch", "--gres=gpu:8", "-J", "fills-the-node")
    waiting, held, array = None, None, None
    try:
        _wait(lambda: _squeue(slurm, running, "%T") == "RUNNING")
        waiting = _submit(slurm, "train-a", "--gres=gpu:4", "-J", "waits")
        held = _submit(slurm, "inference", "--gpus=2", "--hold", "-J", "held")
        array = _submit(slurm, "train-b", "--gres=gpu:1", "--array=0-2", "--hold", "-J", "sweep")

        def expected_start_known():
            """the scheduler's expected start of the waiting job, and why it waits (a job the scheduler has not
            looked at yet waits for reason None; on a loaded machine, for a while)"""
            return _squeue(slurm, waiting, "%S") not in ("N/A", "") and _squeue(slurm, waiting, "%r") == "Resources"
        _wait(expected_start_known)
        slurm.scontrol("create", "reservation", "ReservationName=opsloop-maint", "StartTime=now+2hours",
                       "Duration=30", "Nodes=ALL", "Users=root", "PartitionName=batch", "Flags=IGNORE_JOBS")

        config = parse_sources({"site": "demo", "sources": [{"kind": "slurm-queue", "name": "slurm-q",
                                                             "options": {"slurm_conf": slurm.env["SLURM_CONF"]}}]},
                               "s.yaml")[0]
        now_ms = int(time.time() * 1000)
        run = SourceRun(kafka_settings, config, site, KINDS["slurm-queue"].build(config, site, time.time),
                        clock=lambda: now_ms / 1000)
        run.poll_once()
        stopped = threading.Event()
        stopped.set()
        run.run(stopped)
    finally:
        if "opsloop-maint" in slurm.scontrol("show", "reservation"):
            slurm.scontrol("delete", "ReservationName=opsloop-maint")
        slurm.run("scancel", *[j for j in (running, waiting, held, array) if j])

    codec = Codec.default()
    queue = [codec.decode_as("SlurmQueue", m.value()) for m in read_topic(kafka_settings, "slurm.queue")]
    by_id = {q["id"]: q for q in queue}
    assert {q["snapshot_size"] for q in queue} == {7} and {q["ts_ms"] for q in queue} == {now_ms}
    assert [(q["entry"], q["gpus"], q["est_kw"]) for q in queue[-1:]] == [("snapshot", 17, pytest.approx(13.5))]
    assert [(q["gpus"], q["device"]) for q in queue if q["name"] == "sweep"] == [(1, "gpu-pod-2")] * 3  # squeue -r
    job = by_id[running]
    assert (job["state"], job["partition"], job["device"], job["gpus"], job["est_kw"]) == \
        ("RUNNING", "batch", "gpu-pod-3", 8, pytest.approx(5.6))
    assert job["start_ms"] <= now_ms and job["expected_start_ms"] is None and job["end_ms"] > now_ms
    job = by_id[waiting]
    assert (job["state"], job["reason"], job["device"], job["gpus"], job["est_kw"]) == \
        ("PENDING", "Resources", "gpu-pod-1", 4, pytest.approx(4.4))
    assert job["expected_start_ms"] == by_id[running]["end_ms"]  # when the running job reaches its limit
    assert job["priority"] > 0 and job["submit_ms"] <= now_ms and job["name"] == "waits"
    job = by_id[held]
    assert (job["state"], job["device"], job["gpus"], job["est_kw"]) == ("PENDING", "gpu-pod-4", 2, pytest.approx(1.4))
    resv = by_id["opsloop-maint"]
    assert (resv["entry"], resv["partition"], resv["device"], resv["state"]) == \
        ("reservation", "batch", "gpu-pod-3", "INACTIVE")
    # no gres/gpu in a 22.05 reservation's TRES without slurmdbd: the GPUs of the node it holds whole
    assert (resv["gpus"], resv["est_kw"]) == (8, pytest.approx(5.6))
    assert 2 * 3_600_000 - 120_000 < resv["start_ms"] - now_ms <= 2 * 3_600_000 + 5_000
    assert resv["end_ms"] - resv["start_ms"] == 30 * 60_000

    points = [codec.decode_as("TelemetryPoint", m.value()) for m in read_topic(kafka_settings, "telemetry.raw")]
    totals = {(p["device"], p["metric"]): p["value"] for p in points}
    assert totals[("gpu-pod-3", "slurm_running_gpus")] == 8 and totals[("gpu-pod-3", "slurm_running_kw")] == \
        pytest.approx(5.6)
    assert totals[("gpu-pod-1", "slurm_pending_gpus")] == 4 and totals[("gpu-pod-1", "slurm_pending_kw")] == \
        pytest.approx(4.4)
    assert totals[("gpu-pod-1", "slurm_starting_1h_kw")] == pytest.approx(4.4)  # starts within 5 minutes
    assert totals[("gpu-pod-4", "slurm_pending_gpus")] == 2 and totals[("gpu-pod-4", "slurm_starting_1h_kw")] == 0
    assert totals[("gpu-pod-2", "slurm_running_jobs")] == 0 and totals[("gpu-pod-2", "slurm_pending_jobs")] == 3
    assert totals[("gpu-pod-2", "slurm_pending_kw")] == pytest.approx(2.1)
    assert {p["unit"] for p in points if p["metric"].endswith("_kw")} == {"kW"}

    sink = views.ViewsSink(kafka_settings, topics=["slurm.queue"])  # the snapshot as the NOC and SQL users see it
    sink.run(threading.Event(), exit_when_idle=True)
    _, rows = query(kafka_settings.duckdb_file, "SELECT entry, count(*), sum(est_kw) FROM slurm_queue "
                                                "WHERE entry <> 'snapshot' GROUP BY entry ORDER BY entry")
    assert [(entry, n, round(kw, 1)) for entry, n, kw in rows] == [("job", 6, 13.5), ("reservation", 1, 5.6)]


def test_an_unreachable_controller_is_a_failed_poll(tmp_path):
    site = _site()
    config = parse_sources({"site": "demo", "sources": [{"kind": "slurm-queue", "name": "slurm-q", "timeout_s": 10,
                                                         "options": {"slurm_conf": str(tmp_path / "none.conf")}}]},
                           "s.yaml")[0]
    source = KINDS["slurm-queue"].build(config, site, time.time)
    with pytest.raises(SourceUnavailable, match="squeue"):
        source.poll(0)


def test_a_partition_without_a_device_is_dead_lettered_once_and_left_out(slurm):
    doc = yaml.safe_load(DEMO_SITE.read_text())
    for pod in doc["gpu_pods"]:
        if pod["slurm_partition"] != "batch":
            del pod["slurm_partition"]
    doc["devices"] = [{"id": "slurm-q", "type": "collector"}]
    site = parse_site(doc, "demo.yaml")
    config = parse_sources({"site": "demo", "sources": [{"kind": "slurm-queue", "name": "slurm-q",
                                                         "options": {"slurm_conf": slurm.env["SLURM_CONF"],
                                                                     "reservations": False}}]}, "s.yaml")[0]
    source = KINDS["slurm-queue"].build(config, site, time.time)
    held = _submit(slurm, "train-a", "--gres=gpu:2", "--hold", "-J", "elsewhere")
    try:
        first, second = source.poll(1_000), source.poll(2_000)
    finally:
        slurm.run("scancel", held)
    assert [(r.kind, r.raw) for r in first.rejects] == [("unknown", b"train-a")]
    assert "partition 'train-a' (1 queue entry) maps to no device" in first.rejects[0].reason
    assert second.rejects == [] and [q["entry"] for _, q in second.records] == ["snapshot"]
    assert {p["device"] for p in second.points} == {"gpu-pod-3"}
