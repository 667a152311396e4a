"""The Slurm sink: approved ``slurm_*`` actions → the Slurm backend, verified, undone at expiry.

Sink: a shedding action (hold, requeue, suspend) picks its jobs with
``models.jobs.select_jobs`` (partition, priority, estimated GPU kW, the
policy's limits narrowed to the jobs and GPUs the action declared: what the
guard charged to the Slurm budget), records the plan and its undo in the
ledger, acts, then verifies from the job states within ``verify_window_s``: ``verified``, or
``failed`` → undo, alarm, ``reverted``. At the action's expiry, or on a
``slurm_release``/``slurm_resume`` action with ``params.undo_of``, it undoes
what it did; an early undo only for the action's own proposer and target (the guard checks
it too). Protected partitions are filtered out twice: by the selection and
again right before each command.

An approved ``slurm_reserve`` (a maintenance window, ``models.maintenance``) becomes a Slurm
maintenance reservation named after the action id (``models.reservation``): one already there by
that name counts as done, so a retry after a crash never makes a second one. It is verified by
reading the reservation back (nodes, window, MAINT). It has nothing to undo at expiry: the
proposal expires when the window starts, and Slurm ends the reservation itself at its EndTime.
"""

from __future__ import annotations

import logging

from opsloop.connectors.ledger import EXECUTED, FAILED
from opsloop.connectors.slurm import COMMANDS, RESERVE, SlurmError
from opsloop.connectors.slurm_backends import make_backend
from opsloop.models.guard import MAINTENANCE, action_limits, declared_partitions, maintenance_problems
from opsloop.models.jobs import EXPECTED, UNDO, Job, flexible_gpu_kw, select_jobs, touchable
from opsloop.models.verify import FAILED as V_FAILED, VERIFIED, judge_jobs
from opsloop.models.records import action_alarm, action_result
from opsloop.models.reservation import judge_reservation, requested, utc
from opsloop.streams.actuator import ActuatorSink

log = logging.getLogger("opsloop.slurm")
CHECK_EVERY_MS = 1000


class SlurmSink(ActuatorSink):
    name = "slurm-sink"
    kinds = ("slurm_hold", "slurm_release", "slurm_requeue", "slurm_suspend", "slurm_resume", MAINTENANCE)
    device_type = "slurm"

    def __init__(self, settings, policy, backend=None, clock=None):
        super().__init__(settings, policy, **({"clock": clock} if clock else {}))
        self.backend = backend or make_backend(settings)
        self.window_ms = int(settings.verify_window_s * 1000)
        self._last_check_ms = 0

    # -- executing ----------------------------------------------------------------------

    def _hold_s(self, action: dict) -> float:
        return max(0.0, (action["expires_ms"] - self.now_ms()) / 1000)

    def reserve(self, action: dict, detail: str = ""):
        """Make the maintenance reservation unless one by its name is there already. Returns no undo: the
        proposal expires at the window's start, which must not end the reservation (Slurm ends it at EndTime)."""
        self.backend.check(RESERVE)
        want = requested(action)
        if self.backend.reservation(want.name) is None:
            problems = maintenance_problems(action, self.now_ms())  # the guard checked; the device end checks again
            if problems:
                raise SlurmError("; ".join(p.text for p in problems))
            self.backend.reserve(want)
            verb = "created"
        else:
            verb, detail = "found", "; ".join(filter(None, [detail, "already there by this name: not created again"]))
        observed = (f"{verb} maintenance reservation {want.name} of {', '.join(want.nodes)} from "
                    f"{utc(want.start_s)} to {utc(want.end_s)}")
        return EXECUTED, action_result(action, "executed", observed, detail, self.name, self.now_ms()), None

    def execute(self, action: dict):
        kind = action["kind"]
        if kind == MAINTENANCE:
            return self.reserve(action)
        undo_of = action.get("params", {}).get("undo_of")
        if kind in ("slurm_release", "slurm_resume") and undo_of:
            entry = self.ledger.get(undo_of)
            if entry is None or not entry.undo:
                raise SlurmError(f"nothing to undo for action {undo_of[:120]}")
            if any(entry.action.get(k) != action.get(k) for k in ("proposer", "target", "site")):
                # the guard checked this already (undo_not_owner); the device end trusts nothing it can check
                raise SlurmError(f"{undo_of[:120]} belongs to another proposer or target: not undone")
            done = self.undo(entry)
            return EXECUTED, action_result(action, "executed", f"undid {undo_of}: {done}", "", self.name,
                                           self.now_ms()), None
        command = COMMANDS[kind]
        if kind == "slurm_requeue" and action.get("params", {}).get("requeue_hold", "true") == "false":
            command = COMMANDS["requeue_no_hold"]
        self.backend.check(command)  # UnsupportedCommand → failed action with its reason, no job touched
        jobs = self.backend.jobs()
        declared = declared_partitions(action)
        hold_s = self._hold_s(action)
        limits = action_limits(action, self.policy.slurm, hold_s)  # no more than the guard charged to the budget
        chosen = select_jobs(jobs, kind, declared, action.get("shed_kw"), limits, hold_s, action.get("job_ids") or ())
        if not chosen:
            raise SlurmError(f"no eligible job for {kind} in partition(s) {', '.join(declared) or 'none'}")
        undo = [[UNDO[kind], j.job_id] for j in chosen if kind in UNDO and command != "requeue"]
        self.ledger.plan(action["action_id"], undo)  # before acting: a crash mid-way still knows what to undo
        acted, errors = [], []
        for job in chosen:
            if not touchable(job, self.policy.slurm, declared):  # belt and braces: never a protected partition
                continue
            try:
                self.backend.act(command, job.job_id)
                acted.append(job)
            except SlurmError as exc:
                errors.append(str(exc))
        if not acted:
            return FAILED, action_result(action, "failed", "no job changed", "; ".join(errors), self.name,
                                         self.now_ms()), undo
        kw = sum(j.gpu_kw(self.policy.slurm.kw_per_gpu) for j in acted)
        flexible = flexible_gpu_kw(jobs, self.policy.slurm)
        observed = (f"{command} {len(acted)} job(s) {', '.join(j.job_id for j in acted)} in "
                    f"{', '.join(sorted({j.partition for j in acted}))}: {sum(j.gpus for j in acted)} GPUs, "
                    f"~{kw:g} kW of {flexible:g} kW flexible GPU power")
        delta = -kw if kind in ("slurm_requeue", "slurm_suspend") else None
        return EXECUTED, action_result(action, "executed", observed, "; ".join(errors), self.name, self.now_ms(),
                                       delta), undo

    def reconcile(self, action: dict):
        if action["kind"] == MAINTENANCE:  # the name makes it safe to run again: an existing one is kept
            try:
                return self.reserve(action, "interrupted; checked by name after a restart")
            except SlurmError as exc:  # e.g. the window has started meanwhile: report it, do not crash-loop
                return FAILED, action_result(action, "failed", "no reservation made", str(exc), self.name,
                                             self.now_ms()), None
        entry = self.ledger.get(action["action_id"])
        planned = [job_id for _, job_id in (entry.undo or [])]
        if not planned:
            return FAILED, action_result(action, "failed", "no job changed", "interrupted before acting; not repeated",
                                         self.name, self.now_ms()), None
        states = {j.job_id: j.state for j in self.backend.jobs()}
        reached = [j for j in planned if states.get(j) in EXPECTED[action["kind"]]]
        status = EXECUTED if reached else FAILED
        return status, action_result(action, "executed" if reached else "failed",
                                     f"{len(reached)} of {len(planned)} planned job(s) in the expected state",
                                     "interrupted; confirmed from job states after a restart (not repeated)",
                                     self.name, self.now_ms()), entry.undo

    def undo(self, entry) -> str:
        done, gone = [], []
        for kind, job_id in entry.undo or []:
            try:
                self.backend.act(COMMANDS[kind], job_id)
                done.append(job_id)
            except SlurmError as exc:
                gone.append(f"{job_id} ({exc})")
        self.ledger.mark_undone(entry.action_id)
        verb = {"slurm_release": "released", "slurm_resume": "resumed"}
        kinds = sorted({verb[k] for k, _ in entry.undo or []})
        return f"{'/'.join(kinds) or 'undid'} {len(done)} job(s) {', '.join(done)}" + \
            (f"; could not undo {', '.join(gone)}" if gone else "")

    # -- verification and expiry --------------------------------------------------------

    def _waiting(self) -> list:
        return [e for e in self.ledger.awaiting_verification()
                if (e.undo or e.action["kind"] == MAINTENANCE) and not e.action.get("params", {}).get("undo_of")]

    def _verify_reservation(self, entry, now: int) -> bool:
        action = entry.action
        want = requested(action)
        outcome = judge_reservation(want, self.backend.reservation(want.name), now,
                                    entry.result["ts_ms"] + self.window_ms)
        if outcome.status == VERIFIED:
            self.ledger.mark_verified(entry.action_id, True)
            self.stats["verified"] += 1
            self.publish(action_result(action, "verified", outcome.text, entry.result["observed_effect"], self.name,
                                       now))
            return True
        if outcome.status == V_FAILED:  # not ours to delete: it may be someone's by the same name
            self.ledger.mark_verified(entry.action_id, False)
            self.publish(action_result(action, "failed", outcome.text, "verification failed", self.name, now))
            self.raise_alarm(action_alarm(action, "slurm", "opsloop.slurm-sink", "ACTION_VERIFY_FAILED",
                                          f"{action['kind']} {action['action_id']} not verified: {outcome.text}", now))
            return True
        return False

    def housekeeping(self) -> bool:
        now = self.now_ms()
        if now - self._last_check_ms < CHECK_EVERY_MS:
            return False  # squeue is a process per call: poll the job states about once a second
        self._last_check_ms = now
        waiting = self._waiting()
        due = self.ledger.due_for_undo(now)  # a reservation has no undo, so it is never due here
        sent = False
        for entry in [e for e in waiting if e.action["kind"] == MAINTENANCE]:
            sent = self._verify_reservation(entry, now) or sent
        waiting = [e for e in waiting if e.action["kind"] != MAINTENANCE]
        if not waiting and not due:
            return sent
        states = {j.job_id: j.state for j in self.backend.jobs()}
        for entry in waiting:
            action = entry.action
            expected = {job_id: EXPECTED[action["kind"]] for _, job_id in entry.undo}
            outcome = judge_jobs(expected, states, now, entry.result["ts_ms"] + self.window_ms)
            if outcome.status == VERIFIED:
                self.ledger.mark_verified(entry.action_id, True)
                self.stats["verified"] += 1
                self.publish(action_result(action, "verified", outcome.text, entry.result["observed_effect"],
                                           self.name, now, entry.result.get("observed_delta_kw")))
                sent = True
            elif outcome.status == V_FAILED:
                self.ledger.mark_verified(entry.action_id, False)
                self.publish(action_result(action, "failed", outcome.text, "verification failed", self.name, now))
                undone = self.undo(entry) if entry.undo else "nothing to undo"
                self.stats["reverted"] += 1
                self.publish(action_result(action, "reverted", undone, "reverted after failed verification",
                                           self.name, now))
                self.raise_alarm(action_alarm(action, "slurm", "opsloop.slurm-sink", "ACTION_VERIFY_FAILED",
                                              f"{action['kind']} {action['action_id']} not verified: "
                                              f"{outcome.text}; {undone}", now))
                sent = True
        for entry in due:
            if entry.undone:
                continue
            undone = self.undo(entry)
            self.stats["reverted"] += 1
            self.publish(action_result(entry.action, "reverted", undone, "action expired: undone", self.name, now))
            sent = True
        return sent  # what was published is delivered before the loop goes on

    def settled(self) -> bool:
        return not self._waiting()
