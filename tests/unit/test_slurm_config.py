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
