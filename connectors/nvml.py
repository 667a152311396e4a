"""NVML (nvidia-ml-py, ``import pynvml``): lock the GPUs' SM clocks or lower their power limits, and put them back.

``NvmlGpus`` drives every GPU of the host it runs on. Each change returns what undoing it means,
read before the change: the power limit each GPU had, or that its clocks were unlocked (NVML
cannot read a lock back, so a clock lock is undone by resetting the locked clocks to the
driver's default behaviour). Both need root (or the admin rights NVML asks for).

Whatever NVML refuses becomes an ``NvmlProblem`` with a reason code and a sentence:

- ``nvml_unavailable``: no NVIDIA driver or ``libnvidia-ml`` on this host (a machine without GPUs);
- ``nvml_no_permission``: the process may not change GPU settings (not root);
- ``nvml_not_supported``: the GPU or driver cannot do it (clock locks need Volta or newer);
- ``nvml_out_of_range``: a power limit outside the GPU's own constraints;
- ``nvml_error``: anything else NVML says.
"""

from __future__ import annotations

from dataclasses import dataclass

UNAVAILABLE, NO_PERMISSION, NOT_SUPPORTED, OUT_OF_RANGE, ERROR = (
    "nvml_unavailable", "nvml_no_permission", "nvml_not_supported", "nvml_out_of_range", "nvml_error")
CODES = frozenset({UNAVAILABLE, NO_PERMISSION, NOT_SUPPORTED, OUT_OF_RANGE, ERROR})


class NvmlProblem(RuntimeError):
    """NVML refused or is missing; ``code`` is one of ``CODES``, the message a sentence for an operator."""

    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code, self.text = code, text

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"


@dataclass(frozen=True)
class GpuState:
    index: int
    name: str
    sm_mhz: int  # SM clock now
    power_limit_w: float  # the enforced power limit now
    default_power_limit_w: float
    min_power_limit_w: float  # the GPU's own constraints on its limit
    max_power_limit_w: float


def _problem(pynvml, exc: Exception, doing: str) -> NvmlProblem:
    if isinstance(exc, (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded,
                        pynvml.NVMLError_Uninitialized)):
        return NvmlProblem(UNAVAILABLE, f"NVML is not available on this host ({exc}): no NVIDIA driver, "
                                        f"so nothing was changed")
    if isinstance(exc, pynvml.NVMLError_NoPermission):
        return NvmlProblem(NO_PERMISSION, f"NVML refused to {doing}: this process may not change GPU settings "
                                          f"(it needs root)")
    if isinstance(exc, pynvml.NVMLError_NotSupported):
        return NvmlProblem(NOT_SUPPORTED, f"this GPU or driver cannot {doing}")
    if isinstance(exc, pynvml.NVMLError_InvalidArgument):
        return NvmlProblem(OUT_OF_RANGE, f"NVML refused to {doing}: a value outside what the GPU accepts")
    return NvmlProblem(ERROR, f"NVML could not {doing}: {exc}")


class NvmlGpus:
    """Every GPU NVML sees on this host. Raises ``NvmlProblem`` (``nvml_unavailable``) when NVML cannot start."""

    def __init__(self):
        try:
            import pynvml
        except ImportError as exc:  # the dependency is declared; a broken install still says why
            raise NvmlProblem(UNAVAILABLE, f"the NVML bindings (nvidia-ml-py) are not installed: {exc}") from None
        self.nvml = pynvml
        try:
            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except pynvml.NVMLError as exc:
            raise _problem(pynvml, exc, "start") from None
        if not self.handles:
            raise NvmlProblem(UNAVAILABLE, "NVML sees no GPU on this host")

    def _call(self, doing: str, fn, *args):
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            raise _problem(self.nvml, exc, doing) from None

    def states(self) -> list[GpuState]:
        nv, out = self.nvml, []
        for i, h in enumerate(self.handles):
            low, high = self._call("read the power limit constraints", nv.nvmlDeviceGetPowerManagementLimitConstraints, h)
            name = self._call("read the GPU name", nv.nvmlDeviceGetName, h)
            out.append(GpuState(i, name.decode() if isinstance(name, bytes) else str(name),
                                int(self._call("read the SM clock", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)),
                                self._call("read the power limit", nv.nvmlDeviceGetEnforcedPowerLimit, h) / 1000,
                                self._call("read the default power limit",
                                           nv.nvmlDeviceGetPowerManagementDefaultLimit, h) / 1000,
                                low / 1000, high / 1000))
        return out

    def lock_clocks(self, sm_mhz: int) -> list:
        """Lock every GPU's SM clock at ``sm_mhz``; the undo resets the locks (NVML cannot read a lock back)."""
        for h in self.handles:
            self._call(f"lock the SM clock at {sm_mhz} MHz", self.nvml.nvmlDeviceSetGpuLockedClocks, h, sm_mhz, sm_mhz)
        return [["reset_clocks", i] for i in range(len(self.handles))]

    def power_limit_undo(self) -> list:
        """What undoing a power-limit change means: each GPU's limit now (read before the change)."""
        return [["power_limit_w", s.index, s.power_limit_w] for s in self.states()]

    def set_power_limit(self, watts: float) -> None:
        for s, h in zip(self.states(), self.handles):
            if not s.min_power_limit_w <= watts <= s.max_power_limit_w:
                raise NvmlProblem(OUT_OF_RANGE, f"GPU {s.index} ({s.name}) takes a power limit from "
                                                f"{s.min_power_limit_w:g} to {s.max_power_limit_w:g} W, not {watts:g} W")
            self._call(f"set the power limit to {watts:g} W", self.nvml.nvmlDeviceSetPowerManagementLimit, h,
                       int(watts * 1000))

    def undo(self, steps: list) -> str:
        """Put back what ``steps`` recorded; returns what was done."""
        done = []
        for step in steps:
            if step[0] == "reset_clocks":
                self._call("reset the locked clocks", self.nvml.nvmlDeviceResetGpuLockedClocks, self.handles[step[1]])
                done.append(f"GPU {step[1]} clocks unlocked")
            elif step[0] == "power_limit_w":
                self._call("restore the power limit", self.nvml.nvmlDeviceSetPowerManagementLimit,
                           self.handles[step[1]], int(step[2] * 1000))
                done.append(f"GPU {step[1]} power limit {step[2]:g} W")
        return ", ".join(done) or "nothing to restore"

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass
