"""The GPU sink: approved ``gpu_clock_lock`` / ``gpu_power_limit`` → NVML on this node's GPUs, restored at expiry.

One runs on each GPU node (``opsloop worker --agents gpu-sink``), as its own consumer group
(``gpu-sink-<node>``), and acts on the actions for the Slurm partitions its node belongs to
(read from Slurm at start, or given); actions for other partitions are left to the other nodes.
Through the ledger, as every sink: claim the id, record the undo read from the GPUs before the
change (each GPU's power limit; for a clock lock, a reset of the locks), change, publish. At the
action's expiry the undo runs and a ``reverted`` result says what was put back. An action found
half-done after a crash is never applied again: its recorded undo still runs at expiry (putting
back a limit that was never changed changes nothing).

Where NVML cannot start (no driver: a host without GPUs) or refuses (not root, a GPU that cannot
lock clocks, a limit outside the GPU's range), the action fails with the reason code and a
sentence in its result (``nvml_unavailable: ...``; ``connectors.nvml``) and an alarm; nothing is
changed.
"""

from __future__ import annotations

import logging

from opsloop.connectors.ledger import EXECUTED, FAILED
from opsloop.connectors.nvml import NvmlGpus, NvmlProblem
from opsloop.models.guard import GPU_KINDS
from opsloop.models.records import action_alarm, action_result
from opsloop.streams.actuator import ActuatorSink

log = logging.getLogger("opsloop.gpu")


class GpuSink(ActuatorSink):
    name = "gpu-sink"
    kinds = GPU_KINDS
    device_type = "gpu"

    def __init__(self, settings, policy, node: str, partitions, gpus=NvmlGpus, clock=None):
        self.name = f"gpu-sink-{node}"  # one group and one ledger per node: every node acts on its own GPUs
        super().__init__(settings, policy, **({"clock": clock} if clock else {}))
        self.node, self.partitions = node, frozenset(partitions)
        self.open_gpus = gpus  # opened per action: NVML missing fails that action, not the sink

    def act_on(self, approved: dict) -> None:
        partition = (approved["action"].get("params") or {}).get("partition")
        if approved["action"]["kind"] in self.kinds and partition not in self.partitions:
            self.stats["ignored"] += 1  # another node's GPUs
            return
        super().act_on(approved)

    def execute(self, action: dict):
        params, kind = action["params"], action["kind"]
        try:
            gpus = self.open_gpus()
            try:
                if kind == "gpu_clock_lock":
                    mhz = int(float(params["sm_mhz"]))
                    undo = [["reset_clocks", i] for i in range(len(gpus.handles))]
                    self.ledger.plan(action["action_id"], undo)  # before the change
                    gpus.lock_clocks(mhz)
                    done = f"locked the SM clocks of {len(undo)} GPU(s) on {self.node} at {mhz} MHz"
                else:
                    watts = float(params["watts"])
                    undo = gpus.power_limit_undo()
                    self.ledger.plan(action["action_id"], undo)
                    gpus.set_power_limit(watts)
                    done = (f"set the power limit of {len(undo)} GPU(s) on {self.node} to {watts:g} W (was "
                            f"{', '.join(f'{w:g}' for _, _, w in undo)} W)")
            finally:
                gpus.close()
        except NvmlProblem as problem:
            now = self.now_ms()
            self.raise_alarm(action_alarm(action, "gpu", f"opsloop.{self.name}", "ACTION_FAILED",
                                          f"{kind} {action['action_id'][:120]} on {self.node}: {problem}", now))
            return FAILED, action_result(action, "failed", "nothing changed", str(problem), self.name, now), None
        return EXECUTED, action_result(action, "executed", done, "", self.name, self.now_ms()), undo

    def reconcile(self, action: dict):
        entry = self.ledger.get(action["action_id"])
        return EXECUTED if entry.undo else FAILED, action_result(
            action, "executed" if entry.undo else "failed", f"{action['kind']} on {self.node} interrupted",
            "interrupted; not applied again after a restart (what it recorded is restored at expiry)",
            self.name, self.now_ms()), entry.undo

    def housekeeping(self) -> bool:
        sent = False
        for entry in self.ledger.due_for_undo(self.now_ms()):
            try:
                gpus = self.open_gpus()
                try:
                    done = gpus.undo(entry.undo)
                finally:
                    gpus.close()
            except NvmlProblem as problem:
                done = f"could not restore: {problem}"
                self.raise_alarm(action_alarm(entry.action, "gpu", f"opsloop.{self.name}", "ACTION_UNDO_FAILED",
                                              f"{entry.action['kind']} {entry.action_id[:120]} on {self.node}: {done}",
                                              self.now_ms()))
            self.ledger.mark_undone(entry.action_id)
            self.stats["reverted"] += 1
            self.publish(action_result(entry.action, "reverted", done, "action expired: restored", self.name,
                                       self.now_ms()))
            sent = True
        return sent
