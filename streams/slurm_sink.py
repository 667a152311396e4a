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

An approved ``slurm_shrink`` releases nodes from one running job that declares ``opsloop:dp``
(``models.parallelism``): the sink reads the job back (state, partition, nodes, GPUs, comment) and
refuses, with the reason code and sentence, a job that is not elastic, would go below its ``min``,
sits in a partition it may not touch or would release more GPUs than the guard charged. It records
the give-back in the ledger, holds the nodes it will release in a MAINT reservation named after the
action until the expiry (so no queued job lands on them and the shed power stays shed), then runs
``scontrol update JobId=<id> NumNodes=<keep>``; verified when the job runs on the nodes it kept.
At expiry the reservation is deleted: the nodes go back to the pool. A shrink naming no job (``params.partitions``,
``params.gpus``; what the live peaks agent proposes) has its jobs picked here, from what Slurm shows now
(``parallelism.choose_releases``: running, touchable, declared dp, above ``min``, largest surplus first), and
fails with ``no_elastic_job`` or ``node_over_gpus`` when none can give anything; every pick's give-back is in
the ledger before the first hold, each job gets its own hold, and each is verified and given back as above. The job itself cannot grow
back: Slurm 22.05's only way to grow a running job (``--dependency=expand:<id>``, then
``NumNodes=0`` on the new job and ``NumNodes=ALL`` on the old) refuses any job holding GRES
("has allocated GRES": every GPU job), and ``NumNodes=ALL`` also needs an accounting database
(slurmdbd) to have indexed the job. So the give-back returns the capacity and says so; a
data-parallel launcher (torchrun's elastic agent, for one) re-forms at its own size on a new
allocation.
"""

from __future__ import annotations

import logging

from opsloop.connectors.ledger import EXECUTED, FAILED
from opsloop.connectors.slurm import COMMANDS, RESERVE, SHRINK as SHRINK_COMMAND, SlurmError
from opsloop.connectors.slurm_backends import make_backend
from opsloop.models import parallelism
from opsloop.models.guard import MAINTENANCE, SHRINK, action_limits, declared_partitions, maintenance_problems
from opsloop.models.jobs import EXPECTED, UNDO, flexible_gpu_kw, select_jobs, touchable, touchable_partition
from opsloop.models.verify import FAILED as V_FAILED, VERIFIED, Outcome, judge_jobs
from opsloop.models.records import action_alarm, action_result
from opsloop.models.reservation import Reservation, judge_reservation, requested, reservation_name, utc
from opsloop.streams.actuator import ActuatorSink

log = logging.getLogger("opsloop.slurm")
CHECK_EVERY_MS = 1000
GIVE_BACK = "slurm_give_back"  # a shrink's undo in the ledger: [GIVE_BACK, job id, reservation, kept, released]
NO_REGROW = ("Slurm 22.05 cannot grow a running GPU job back (expand refuses jobs with allocated GRES), so the "
             "job keeps its size until it ends")


class SlurmSink(ActuatorSink):
    name = "slurm-sink"
    kinds = ("slurm_hold", "slurm_release", "slurm_requeue", "slurm_suspend", "slurm_resume", MAINTENANCE, SHRINK)
    device_type = "slurm"

    def __init__(self, settings, policy, backend=None, clock=None, site=None):
        super().__init__(settings, policy, **({"clock": clock} if clock else {}))
        self.backend = backend or make_backend(settings)
        # per-GPU power by partition: the site file's GPU pods, else the policy's estimate
        self.kw_per_gpu = {pod.slurm_partition: pod.kw_per_gpu for pod in (site.gpu_pods if site else ())
                           if pod.slurm_partition}
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

    def shrink(self, action: dict):
        """Release nodes of running opsloop:dp jobs: the one the action names down to ``params.nodes``, or those the
        sink picks in ``params.partitions`` for up to ``params.gpus``; the released nodes are held free."""
        self.backend.check(SHRINK_COMMAND)
        if not action.get("job_ids"):
            return self._shrink_partitions(action)
        job_id, keep = action["job_ids"][0], int(action["params"]["nodes"])
        shape = self.backend.job_shape(job_id)
        if shape is None or shape.state != "RUNNING":
            raise SlurmError(f"job {job_id} is not running ({shape.state if shape else 'not listed'}): not shrunk")
        found = parallelism.shrink_problems(parallelism.declared(shape.comment), len(shape.nodes), keep)
        if not touchable_partition(shape.partition, self.policy.slurm, declared_partitions(action)):
            found.append(("untouchable_partition", f"job {job_id} runs in {shape.partition}, which this action or "
                                                   f"the policy does not allow"))
        released = parallelism.kept_and_released(shape, keep)[1]
        charged = float(action["params"].get("gpus", "inf"))
        if len(released) * shape.gpus_per_node > charged:
            found.append(("over_gpu_hours", f"releasing {len(released) * shape.gpus_per_node} GPUs, more than the "
                                            f"{charged:g} the guard charged"))
        if found:  # the job Slurm shows now, not the one the proposal saw, decides
            raise SlurmError("; ".join(f"{code}: {text}" for code, text in found))
        return self._release(action, [(parallelism.Release(shape, keep), reservation_name(action["action_id"]))])

    def _shrink_partitions(self, action: dict):
        """A shrink naming a partition: the jobs come from Slurm now (running, touchable, declared dp, above min)."""
        declared = declared_partitions(action)
        running = [j for j in self.backend.jobs() if j.state == "RUNNING" and touchable(j, self.policy.slurm, declared)]
        shapes = [s for s in (self.backend.job_shape(j.job_id) for j in running)
                  if s is not None and touchable_partition(s.partition, self.policy.slurm, declared)]
        limits = action_limits(action, self.policy.slurm, self._hold_s(action))
        releases, found = parallelism.choose_releases(shapes, int(action["params"]["gpus"]),
                                                      limits.max_jobs_per_event)
        if found:
            raise SlurmError("; ".join(f"{code}: {text} (partition(s) {', '.join(declared)})" for code, text in found))
        return self._release(action, [(r, reservation_name(f"{action['action_id']}-{r.shape.job_id}"))
                                      for r in releases])

    def _release(self, action: dict, releases):
        """Plan every give-back in the ledger first (a crash mid-way never shrinks twice), then per job: hold the
        nodes it releases, shrink it. A job Slurm refuses keeps its nodes and its hold is dropped."""
        undo = [[GIVE_BACK, r.shape.job_id, hold, list(kept), list(released)]
                for r, hold in releases for kept, released in [parallelism.kept_and_released(r.shape, r.keep)]]
        self.ledger.plan(action["action_id"], undo)
        done, errors, kw, parts = [], [], 0.0, []
        for row, (release, hold) in zip(undo, releases):
            shape, released = release.shape, row[4]
            try:
                self._hold_nodes(hold, released, action)
                self.backend.resize(shape.job_id, release.keep)
            except SlurmError as exc:
                self.backend.unreserve(hold)  # not shrunk: do not keep its nodes free for nothing
                errors.append(str(exc) if len(releases) == 1 else f"job {shape.job_id}: {exc}")
                continue
            done.append(row)
            job_kw = parallelism.released_kw(len(released), shape.gpus_per_node, self._kw_per_gpu(shape.partition))
            kw += job_kw
            parts.append(f"shrank job {shape.job_id} ({shape.partition}) from {len(shape.nodes)} to {release.keep} "
                         f"nodes: released {','.join(released)} ({release.gpus} GPUs, ~{job_kw:g} kW), held free "
                         f"by reservation {hold}")
        if not done:
            raise SlurmError("; ".join(errors))
        observed = "; ".join(parts) + " until expiry"
        return EXECUTED, action_result(action, "executed", observed, "; ".join(errors), self.name, self.now_ms(),
                                       -round(kw, 6)), done

    def _kw_per_gpu(self, partition: str) -> float:
        return self.kw_per_gpu.get(partition, self.policy.slurm.kw_per_gpu)

    def _hold_nodes(self, name: str, nodes, action: dict) -> None:
        """A MAINT reservation of ``nodes`` from now to the action's expiry (an existing one by the name is kept)."""
        if self.backend.reservation(name) is None:
            start_s = self.now_ms() // 1000 - 1  # Slurm takes a start just past; a future one would leave a gap
            self.backend.reserve(Reservation(name, tuple(sorted(nodes)), start_s, action["expires_ms"] // 1000,
                                             ("MAINT",)))

    def give_back(self, undo) -> str:
        """End the hold on a shrunk job's released nodes: they go back to the pool (the job cannot regrow)."""
        _, job_id, hold, _, _ = undo
        gone = self.backend.unreserve(hold)
        shape = self.backend.job_shape(job_id)
        where = f"job {job_id} runs on {len(shape.nodes)} nodes" if shape and shape.state == "RUNNING" else \
            f"job {job_id} no longer runs"
        return (f"ended reservation {hold}: its nodes are back in the pool" if gone else
                f"reservation {hold} was already gone") + f"; {where} ({NO_REGROW})"

    def execute(self, action: dict):
        kind = action["kind"]
        if kind == MAINTENANCE:
            return self.reserve(action)
        if kind == SHRINK:
            return self.shrink(action)
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
        if action["kind"] == SHRINK:
            return self._reconcile_shrink(action, entry)
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

    def _reconcile_shrink(self, action: dict, entry):
        """A shrink interrupted after its plan: each job's node count says whether Slurm shrank it. Never repeated;
        for a job that was shrunk the hold on its released nodes is made sure of (by name, so never twice)."""
        if not entry.undo:
            return FAILED, action_result(action, "failed", "no job changed", "interrupted before acting; not repeated",
                                         self.name, self.now_ms()), None
        shrunk, seen = [], []
        for row in entry.undo:
            _, job_id, hold, kept, released = row
            shape = self.backend.job_shape(job_id)
            if shape is not None and shape.state == "RUNNING" and len(shape.nodes) <= len(kept):
                self._hold_nodes(hold, released, action)  # kept if it is there already
                shrunk.append(row)
                seen.append(f"job {job_id} runs on {len(shape.nodes)} nodes")
            else:
                self.backend.unreserve(hold)  # a hold made before the crash would keep nodes free for nothing
                seen.append(f"job {job_id} was not shrunk")
        if shrunk:
            return EXECUTED, action_result(action, "executed", "; ".join(seen),
                                           "interrupted; confirmed from the job after a restart (not repeated)",
                                           self.name, self.now_ms()), shrunk
        return FAILED, action_result(action, "failed", "; ".join(seen), "interrupted; not repeated after a restart",
                                     self.name, self.now_ms()), None

    def undo(self, entry) -> str:
        if entry.undo and entry.undo[0][0] == GIVE_BACK:
            done = "; ".join(self.give_back(row) for row in entry.undo)
            self.ledger.mark_undone(entry.action_id)
            return done
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

    def _verify_shrink(self, entry, now: int) -> bool:
        deadline = entry.result["ts_ms"] + self.window_ms
        outcomes = [parallelism.judge_shrink(job_id, tuple(kept), self.backend.job_shape(job_id), now, deadline)
                    for _, job_id, _, kept, _ in entry.undo]
        outcome = next((o for o in outcomes if o.status == V_FAILED), None) or \
            next((o for o in outcomes if o.status != VERIFIED), None) or \
            Outcome(VERIFIED, "; ".join(o.text for o in outcomes))
        if outcome.status == VERIFIED:
            self.ledger.mark_verified(entry.action_id, True)
            self.stats["verified"] += 1
            self.publish(action_result(entry.action, "verified", outcome.text, entry.result["observed_effect"],
                                       self.name, now, entry.result.get("observed_delta_kw")))
            return True
        if outcome.status == V_FAILED:
            self.ledger.mark_verified(entry.action_id, False)
            self.publish(action_result(entry.action, "failed", outcome.text, "verification failed", self.name, now))
            undone = self.undo(entry)
            self.stats["reverted"] += 1
            self.publish(action_result(entry.action, "reverted", undone, "reverted after failed verification",
                                       self.name, now))
            self.raise_alarm(action_alarm(entry.action, "slurm", "opsloop.slurm-sink", "ACTION_VERIFY_FAILED",
                                          f"slurm_shrink {entry.action_id} not verified: {outcome.text}; {undone}",
                                          now))
            return True
        return False

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
        for entry in [e for e in waiting if e.action["kind"] == SHRINK]:
            sent = self._verify_shrink(entry, now) or sent
        waiting = [e for e in waiting if e.action["kind"] not in (MAINTENANCE, SHRINK)]
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
