"""The pyslurm backend: a clear error without pyslurm; its checks when pyslurm is installed."""

from __future__ import annotations

import importlib.util

import pytest

from opsloop.connectors.slurm import SlurmError, UnsupportedCommand

from opsloop.connectors.slurm_backends import make_backend
from opsloop.config.settings import Settings

pytestmark = pytest.mark.unit
HAVE_PYSLURM = importlib.util.find_spec("pyslurm") is not None


@pytest.mark.skipif(HAVE_PYSLURM, reason="pyslurm is installed: the missing-module error cannot occur")
def test_without_pyslurm_the_backend_says_what_to_do():
    with pytest.raises(SlurmError, match="needs the pyslurm package.*scontrol or slurmrestd"):
        make_backend(Settings(slurm_backend="pyslurm"), env={})


@pytest.mark.skipif(not HAVE_PYSLURM, reason="pyslurm not installed: no build matches Debian's Slurm 22.05")
def test_with_pyslurm_commands_and_job_ids_are_checked():
    backend = make_backend(Settings(slurm_backend="pyslurm"), env={})
    with pytest.raises(UnsupportedCommand):
        backend.act("reboot", "1")
    with pytest.raises(SlurmError, match="refusing job id"):
        backend.act("hold", "1; rm -rf /")
