"""NVML where there is none: every use says why, with a reason code, and changes nothing."""

from __future__ import annotations

import ctypes.util
from pathlib import Path

import pytest

from opsloop.connectors.nvml import CODES, NvmlGpus, NvmlProblem

pytestmark = pytest.mark.unit
HAS_DRIVER = bool(ctypes.util.find_library("nvidia-ml")) or Path("/dev/nvidiactl").exists()


@pytest.mark.skipif(HAS_DRIVER, reason="this host has an NVIDIA driver: NVML starts here")
def test_without_a_driver_nvml_is_unavailable_with_a_code_and_a_sentence():
    with pytest.raises(NvmlProblem) as caught:
        NvmlGpus()
    assert caught.value.code == "nvml_unavailable" and caught.value.code in CODES
    assert str(caught.value).startswith("nvml_unavailable: NVML is not available on this host (")
    assert caught.value.text.endswith("no NVIDIA driver, so nothing was changed")
