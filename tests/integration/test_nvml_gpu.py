"""NVML on a host with NVIDIA GPUs (``make test-gpu``; skipped where there is none): the GPU sink's two changes, a
power limit and an SM clock lock, made on every GPU, read back from the driver, and undone to what was read first.
Each GPU's board power (``nvmlDeviceGetPowerUsage``, the reading DCGM's ``DCGM_FI_DEV_POWER_USAGE`` reports) is
printed before, during and after each change, the measurement of what a lever sheds on real GPUs."""

from __future__ import annotations

import ctypes.util
import time

import pytest

from opsloop.connectors.nvml import NO_PERMISSION, NvmlGpus, NvmlProblem

pytestmark = [pytest.mark.integration, pytest.mark.gpu,
              pytest.mark.skipif(not ctypes.util.find_library("nvidia-ml"), reason="no NVML on this host")]


@pytest.fixture
def gpus():
    g = NvmlGpus()
    try:
        yield g
    finally:
        g.close()


def board_w(gpus: NvmlGpus) -> list[float]:
    return [gpus.nvml.nvmlDeviceGetPowerUsage(h) / 1000 for h in gpus.handles]


def settle() -> None:
    time.sleep(2.0)  # the driver applies a limit or a lock within a second; the power reading averages about one


def test_a_power_limit_is_enforced_on_every_gpu_and_put_back(gpus):
    before = gpus.states()
    watts = max(s.min_power_limit_w for s in before)
    undo = gpus.power_limit_undo()
    print(f"board power before: {board_w(gpus)} W; limits {[s.power_limit_w for s in before]} W")
    try:
        gpus.set_power_limit(watts)
    except NvmlProblem as problem:
        assert problem.code == NO_PERMISSION, problem  # only root may change limits: said so, nothing changed
        assert [s.power_limit_w for s in gpus.states()] == [s.power_limit_w for s in before]
        pytest.skip(f"not root here: {problem}")
    try:
        settle()
        limited = gpus.states()
        print(f"board power at the {watts:g} W limit: {board_w(gpus)} W")
        assert all(abs(s.power_limit_w - watts) < 1.0 for s in limited), limited
    finally:
        print(gpus.undo(undo))
    settle()
    assert [round(s.power_limit_w) for s in gpus.states()] == [round(s.power_limit_w) for s in before]
    print(f"board power after: {board_w(gpus)} W")


def test_an_sm_clock_lock_holds_the_clock_and_its_reset_frees_it(gpus):
    nv, handle = gpus.nvml, gpus.handles[0]
    memory = max(nv.nvmlDeviceGetSupportedMemoryClocks(handle))
    lowest = min(nv.nvmlDeviceGetSupportedGraphicsClocks(handle, memory))
    print(f"board power before: {board_w(gpus)} W; SM clocks {[s.sm_mhz for s in gpus.states()]} MHz")
    try:
        undo = gpus.lock_clocks(lowest)
    except NvmlProblem as problem:
        assert problem.code == NO_PERMISSION, problem
        pytest.skip(f"not root here: {problem}")
    try:
        settle()
        locked = gpus.states()
        print(f"board power with SM clocks locked at {lowest} MHz: {board_w(gpus)} W")
        assert all(s.sm_mhz <= lowest + 15 for s in locked), [s.sm_mhz for s in locked]  # the clock cannot rise
    finally:
        print(gpus.undo(undo))
    settle()
    print(f"board power after the reset: {board_w(gpus)} W; SM clocks {[s.sm_mhz for s in gpus.states()]} MHz")
