from __future__ import annotations

from pathlib import Path

import pytest

from opsloop.config.settings import Settings
from opsloop.config.site import load_site
from opsloop.ops.slurm import SlurmLayout, SlurmSetupError, render_slurm_conf, site_partitions

pytestmark = pytest.mark.unit


def test_partitions_follow_the_gpu_pods_in_file_order():
    assert site_partitions(load_site(Settings().topology)) == ("train-a", "train-b", "batch", "inference")


def test_a_site_without_gpu_pods_is_a_clear_error(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("site: {id: x}\n")
    with pytest.raises(SlurmSetupError, match="no gpu_pods"):
        site_partitions(load_site(site))


def test_config_names_this_host_and_runs_without_cgroups():
    conf = render_slurm_conf(SlurmLayout(Path("/state"), "gpu-host", 7001, 7002, ("a", "b")), gpus=4)
    assert "SlurmctldHost=gpu-host(127.0.0.1)" in conf
    assert "NodeName=gpu-host NodeAddr=127.0.0.1" in conf and "Gres=gpu:4" in conf
    assert "ProctrackType=proctrack/linuxproc" in conf and "TaskPlugin=task/none" in conf
    assert conf.count("PartitionName=") == 2 and "PartitionName=a Nodes=gpu-host Default=YES" in conf


def test_jwt_auth_is_configured_only_with_a_key():
    layout = SlurmLayout(Path("/s"), "node1", 6817, 6818, ("batch",))
    assert "AuthAlt" not in render_slurm_conf(layout, gpus=1)
    conf = render_slurm_conf(layout, gpus=1, jwt_key=Path("/s/jwt.key")).splitlines()
    assert "AuthAltTypes=auth/jwt" in conf and "AuthAltParameters=jwt_key=/s/jwt.key" in conf


def test_a_multi_node_cluster_gives_each_slurmd_its_name_port_and_files():
    layout = SlurmLayout(Path("/s"), "gpu-host", 7001, 7002, ("batch", "train"), node_ports=(7101, 7102, 7103))
    assert layout.nodes == ("node1", "node2", "node3")
    conf = render_slurm_conf(layout, gpus=4).splitlines()
    nodes = [line for line in conf if line.startswith("NodeName=")]
    assert nodes[1].startswith("NodeName=node2 NodeHostname=gpu-host NodeAddr=127.0.0.1 Port=7102 ")
    assert len(nodes) == 3 and all("Gres=gpu:4" in line for line in nodes)
    assert "SlurmdPidFile=/s/slurmd-%n.pid" in conf and "SlurmdSpoolDir=/s/spool/%n" in conf
    assert "PartitionName=train Nodes=node1,node2,node3 Default=NO MaxTime=INFINITE State=UP OverSubscribe=FORCE:4" in conf


def test_the_default_is_one_node_named_after_the_host():
    layout = SlurmLayout(Path("/s"), "gpu-host", 7001, 7002, ("batch",))
    assert layout.nodes == ("gpu-host",) and not layout.multi
    assert "SlurmdPidFile=/s/slurmd.pid" in render_slurm_conf(layout, gpus=1)
