"""The guard agent: ``actions.proposed`` → verdicts on ``actions.approved``; approvals; PCS verification.

Thin: decode, ask ``models.guard.decide``, emit. It reads four topics:

* ``actions.proposed``: every verdict (approved, needs_approval, rejected) goes
  to ``actions.approved`` (sinks act only on ``approved``); a rejection also
  goes to ``actions.results`` with its reasons.
* ``operator.feedback``: ``approve_action`` / ``reject_action`` on a pending
  action (by id). An approval re-checks every limit with the state at that
  moment. A request not answered before ``approval_deadline_ms`` lapses
  (``rejected`` result). Only feedback signed with the NOC's key
  (``models.signing``), given after the action was proposed and before its
  request lapsed, answers it, and only the first answer counts; anything else,
  feedback for an action not (yet) proposed included, is ignored, logged with
  its reason code (``models.guard.feedback_problem``) and never kept.
* ``telemetry.site``: the latest ESS state of charge, health and power per site
  (the guard's view of the plant), and the observations for verification.
* ``actions.results``: an ``executed`` PCS action is verified against the ESS
  power of the following site windows (``models.verify.judge_power``; a grid-limit action
  with ``judge_grid_limit``: the power its limit calls for at each window's site load) within
  ``verify_window_s``; on failure the guard publishes ``failed``, an approved
  ``pcs_idle`` (the revert), ``reverted`` and an alarm on ``alarms.raw``.

Every verdict is signed with the verdict key (``OPSLOOP_VERDICT_KEY``, required) after an
Avro round trip, so the sinks verify exactly what they decode. A ``slurm_release`` or
``slurm_resume`` naming ``params.undo_of`` is checked against the guard's own approved
actions (``models.guard.undo_problems``). An ``llm_shift`` or ``llm_cap`` is checked against the LLM
actions the guard approved that still hold (``PlantState.llm_holding``, from the same decisions table).

Decisions, pending approvals, verifications and the Slurm budget spent (the
shedding actions approved per site within the policy's ``budget_window_s``,
pruned as they age out) are kept in a small SQLite file
(``<data_dir>/guard.sqlite``) written before offsets are committed, so a restart
neither re-decides an action, nor forgets a pending one, nor the budget spent. It runs on the
processors' loop (streams/processor.py), not as a Faust agent: four inputs, tiny volume, and
commits that must follow the SQLite writes. Each batch with input is committed at once; the
deadlines and verifications are its ``housekeeping``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import replace
from typing import Callable

from opsloop.models.records import action_alarm, action_result
from opsloop.models.cooling import KIND as COOLING_KIND
from opsloop.models.cooling import state_from_action
from opsloop.models.battery import Battery
from opsloop.models.event_time import EventTimeBounds
from opsloop.models.guard import (APPROVED, LLM_KINDS, NEEDS_APPROVAL, PCS_KINDS, REJECTED, REVERT, SLURM_SHEDDING, Decision,
                                  EssState, PlantState, SlurmSpend, approval_deadline_ms, decide, operator_rejection,
                                  feedback_problem, revert_approval, slurm_charge)
from opsloop.models.signing import Keyring, feedback_authentic, sign_verdict
from opsloop.config.policy import Policy
from opsloop.models.verify import FAILED, VERIFIED, judge_grid_limit, judge_power
from opsloop.config.settings import Settings
from opsloop.config.site import Site
from opsloop.streams.processor import BatchProcessor

INPUTS = {"actions.proposed": "Action", "operator.feedback": "Feedback", "telemetry.site": "SiteSnapshot",
          "actions.results": "ActionResult"}
NAME = "guard"
log = logging.getLogger("opsloop.guard")


class GuardStore:
    """Decided ids, pending approvals, PCS verifications and Slurm budget spent, durable across restarts."""

    def __init__(self, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS decided (action_id TEXT PRIMARY KEY, verdict TEXT, action TEXT);
            CREATE TABLE IF NOT EXISTS pending (action_id TEXT PRIMARY KEY, action TEXT, deadline_ms INTEGER);
            CREATE TABLE IF NOT EXISTS verifying (action_id TEXT PRIMARY KEY, action TEXT, since_ms INTEGER,
                                                  deadline_ms INTEGER, observed TEXT);
            CREATE TABLE IF NOT EXISTS slurm_spent (action_id TEXT PRIMARY KEY, site TEXT, approved_ms INTEGER,
                                                    jobs INTEGER, gpu_hours REAL);""")

    def rows(self, sql: str, *args):
        return self.db.execute(sql, args).fetchall()

    def run(self, sql: str, *args) -> None:
        self.db.execute(sql, args)


class GuardProcessor(BatchProcessor):
    name = NAME
    sources = tuple(INPUTS)
    poll_s = 0.2
    batch_size = 500
    wake_on_first = True  # a proposal waits for no batch to fill: the closed loop's latency (ops/bench/loop.py)
    commit_stat = None
    consumer_overrides = {"fetch.wait.max.ms": 50}
    producer_overrides = {"linger.ms": 0}

    def __init__(self, settings: Settings, policy: Policy, site: Site, clock: Callable[[], float] = time.time):
        super().__init__(settings)
        self.policy = policy
        self.verdict_keys = Keyring.parse(settings.verdict_key, "OPSLOOP_VERDICT_KEY")
        if not self.verdict_keys:
            raise ValueError("the guard signs its verdicts and the sinks execute no other: set OPSLOOP_VERDICT_KEY")
        self.feedback_keys = Keyring.parse(settings.feedback_key, "OPSLOOP_FEEDBACK_KEY")
        if not self.feedback_keys:
            log.warning("guard: OPSLOOP_FEEDBACK_KEY is not set: no operator approval will be accepted")
        self.wall_clock = clock  # decisions, deadlines and verification windows
        self.store = GuardStore(settings.data_dir / "guard.sqlite")
        self.batteries = {site.id: Battery.from_spec(site.ess[0])} if site.ess else {}  # site → its first ESS
        self.ess: dict[str, EssState] = {}  # site → latest ESS state
        self.last_change: dict[str, int] = {}  # site → when the guard last approved a new PCS setpoint
        self.stats = {"proposed": 0, APPROVED: 0, NEEDS_APPROVAL: 0, REJECTED: 0, "operator_approved": 0,
                      "lapsed": 0, "verified": 0, "verify_failed": 0, "dead_letters": 0, "feedback_ignored": 0}

    def now_ms(self) -> int:
        return int(self.wall_clock() * 1000)

    @property
    def bounds(self) -> EventTimeBounds:
        return EventTimeBounds.from_settings(self.settings)

    # -- emitting -----------------------------------------------------------------------

    def _emit_verdict(self, action: dict, decision: Decision, operator: str | None = None) -> None:
        verdict, reasons = decision.verdict, decision.reasons
        record = {"action": action, "verdict": verdict, "reasons": list(reasons),
                  "reason_codes": list(decision.reason_codes), "policy_version": self.policy.label,
                  "decided_ms": self.now_ms(), "approved_by": operator}
        record = self.codec.decode_as("ApprovedAction", self.codec.encode("ApprovedAction", record))
        self.emit("actions.approved", sign_verdict(record, self.verdict_keys))  # signed as the sinks decode it
        self.stats[verdict] += 1
        if verdict == REJECTED:
            self._emit_result(action_result(action, "rejected", "nothing done", "; ".join(reasons), NAME,
                                            self.now_ms()))
        if verdict == APPROVED and action["kind"] in PCS_KINDS:
            self.last_change[action["site"]] = self.now_ms()
        if verdict == APPROVED and action["kind"] in SLURM_SHEDDING and self.policy.slurm.budget_window_s > 0:
            # before `decided`: after a crash in between, the re-decision skips its own record and replaces it
            jobs, gpu_hours = slurm_charge(action, self.policy.slurm, self.now_ms())
            self.store.run("INSERT OR REPLACE INTO slurm_spent VALUES (?, ?, ?, ?, ?)", action["action_id"],
                           action["site"], self.now_ms(), jobs, gpu_hours)
        self.store.run("INSERT OR REPLACE INTO decided VALUES (?, ?, ?)", action["action_id"], verdict,
                       json.dumps(action))

    def _emit_result(self, record: dict) -> None:
        self.emit("actions.results", record)

    # -- state --------------------------------------------------------------------------

    def state(self, site: str) -> PlantState:
        ess = self.ess.get(site)
        if ess is not None:
            ess = EssState(**{**ess.__dict__, "last_change_ms": self.last_change.get(site)})
        return PlantState(ess, slurm_spent=self.slurm_spent(site))

    def approved_action(self, action_id: str | None) -> dict[str, dict]:
        """The action the guard approved under ``action_id``, by id (empty if none)."""
        rows = self.store.rows("SELECT action FROM decided WHERE action_id = ? AND verdict = ?", action_id, APPROVED)
        return {action_id: json.loads(rows[0][0])} if rows else {}

    def state_for(self, action: dict) -> PlantState:
        """The plant state for deciding ``action``: the site's, and the action it undoes if it names one."""
        state = self.state(action["site"])
        undo_of = action.get("params", {}).get("undo_of")
        if action["kind"] in LLM_KINDS:
            state = replace(state, llm_holding=self.llm_holding(action["target"]))
        if action["kind"] == COOLING_KIND:
            state = replace(state, cooling=state_from_action(action, self.cooling_changes(action)))
        return replace(state, approved=self.approved_action(undo_of)) if undo_of is not None else state

    def cooling_changes(self, action: dict) -> tuple[dict, ...]:
        """The setpoint changes the guard approved for ``action``'s target in the last hour (the hourly ramp)."""
        rows = self.store.rows("SELECT action FROM decided WHERE verdict = ? AND json_extract(action, '$.kind') = ? "
                               "AND json_extract(action, '$.target') = ? AND json_extract(action, '$.created_ms') > ? "
                               "AND action_id != ?", APPROVED, COOLING_KIND, action["target"],
                               self.now_ms() - 3_600_000, action["action_id"])
        return tuple(json.loads(r[0]) for r in rows)

    def llm_holding(self, target: str) -> tuple[dict, ...]:
        """The LLM actions approved for ``target`` that have not expired."""
        rows = self.store.rows("SELECT action FROM decided WHERE verdict = ? AND json_extract(action, '$.kind') IN "
                               "(?, ?) AND json_extract(action, '$.target') = ? AND "
                               "json_extract(action, '$.expires_ms') > ?", APPROVED, *LLM_KINDS, target, self.now_ms())
        return tuple(json.loads(r[0]) for r in rows)

    def slurm_spent(self, site: str) -> tuple[SlurmSpend, ...]:
        """The site's approvals still inside the budget window; older ones are pruned."""
        window_start_ms = self.now_ms() - int(self.policy.slurm.budget_window_s * 1000)
        self.store.run("DELETE FROM slurm_spent WHERE approved_ms <= ?", window_start_ms)
        return tuple(SlurmSpend(*row) for row in self.store.rows(
            "SELECT action_id, site, approved_ms, jobs, gpu_hours FROM slurm_spent WHERE site = ?", site))

    def on_snapshot(self, snap: dict) -> None:
        battery = self.batteries.get(snap["site"])
        if battery and snap.get("ess_soc_pct") is not None and snap.get("ess_soh_pct") is not None:
            self.ess[snap["site"]] = EssState(snap["ess_soc_pct"], snap["ess_soh_pct"], snap.get("ess_kw") or 0.0,
                                              battery, snap["window_end_ms"])
        if snap.get("ess_kw") is None:
            return
        for action_id, _action, since_ms, _deadline, observed in self.store.rows(
                "SELECT * FROM verifying WHERE json_extract(action, '$.site') = ?", snap["site"]):
            if snap["window_start_ms"] >= since_ms:  # a window wholly after the setpoint was written
                grid_limit = json.loads(_action).get("params", {}).get("control") == "grid_limit"
                if grid_limit and snap.get("grid_kw") is None:
                    continue
                values = json.loads(observed) + [[snap["ess_kw"], snap["grid_kw"]] if grid_limit else snap["ess_kw"]]
                self.store.run("UPDATE verifying SET observed = ? WHERE action_id = ?", json.dumps(values), action_id)

    # -- inputs -------------------------------------------------------------------------

    def on_proposed(self, action: dict) -> None:
        self.stats["proposed"] += 1
        if self.store.rows("SELECT 1 FROM decided WHERE action_id = ?", action["action_id"]):
            return  # decided before a restart: never twice
        decision = decide(action, self.state_for(action), self.policy, self.now_ms())
        if decision.verdict == NEEDS_APPROVAL:
            deadline = approval_deadline_ms(action, self.policy, self.now_ms())
            self.store.run("INSERT OR REPLACE INTO pending VALUES (?, ?, ?)", action["action_id"], json.dumps(action),
                           deadline)
        self._emit_verdict(action, decision)

    def _answer(self, action: dict, kind: str, operator: str) -> None:
        self.store.run("DELETE FROM pending WHERE action_id = ?", action["action_id"])
        if kind == "reject_action":
            self._emit_verdict(action, operator_rejection(operator))
            return
        decision = decide(action, self.state_for(action), self.policy, self.now_ms(), operator=operator)
        if decision.verdict == APPROVED:
            self.stats["operator_approved"] += 1
        self._emit_verdict(action, decision, operator if decision.verdict == APPROVED else None)

    def on_feedback(self, feedback: dict) -> None:
        if feedback["kind"] not in ("approve_action", "reject_action"):
            return  # alarm and incident labels are for other agents
        target = feedback["target_id"]
        rows = self.store.rows("SELECT action, deadline_ms FROM pending WHERE action_id = ?", target)
        pending, deadline = (json.loads(rows[0][0]), rows[0][1]) if rows else (None, None)
        decided = bool(self.store.rows("SELECT 1 FROM decided WHERE action_id = ?", target))
        authentic = feedback_authentic(feedback, self.feedback_keys) is None
        problem = feedback_problem(feedback, pending, deadline, decided, authentic, self.now_ms())
        if problem is not None:
            self.stats["feedback_ignored"] += 1
            log.warning("guard: %s for %r ignored (%s): %s", feedback["kind"], target[:120], problem.code,
                        problem.text)
            return
        self._answer(pending, feedback["kind"], feedback["operator"])

    def on_result(self, record: dict) -> None:
        if record["status"] != "executed" or record["executor"] == NAME:
            return
        rows = self.store.rows("SELECT action FROM decided WHERE action_id = ?", record["action_id"])
        if not rows:
            return
        action = json.loads(rows[0][0])
        if action["kind"] not in PCS_KINDS or action.get("params", {}).get("revert_of"):
            return  # Slurm sinks verify from job states themselves
        deadline = record["ts_ms"] + int(self.settings.verify_window_s * 1000)
        self.store.run("INSERT OR IGNORE INTO verifying VALUES (?, ?, ?, ?, '[]')", action["action_id"],
                       json.dumps(action), record["ts_ms"], deadline)

    # -- time-driven --------------------------------------------------------------------

    def housekeeping(self) -> bool:
        """Lapse unanswered requests and judge open verifications; True when it published something."""
        now = self.now_ms()
        sent = False
        for action_id, action, _deadline in self.store.rows("SELECT * FROM pending WHERE deadline_ms <= ?", now):
            action = json.loads(action)
            self.store.run("DELETE FROM pending WHERE action_id = ?", action_id)
            self.stats["lapsed"] += 1
            self._emit_result(action_result(action, "rejected", "nothing done",
                                            "no operator approval before the request lapsed", NAME, now))
            sent = True
        for action_id, action, _since, deadline, observed in self.store.rows("SELECT * FROM verifying"):
            action = json.loads(action)
            expected = 0.0 if action["kind"] == "pcs_idle" else action["setpoint_kw"]
            params = action.get("params") or {}
            if params.get("control") == "grid_limit":
                expected = float(params.get("expected_kw", expected))
                outcome = judge_grid_limit(float(params["grid_limit_kw"]), float(params.get("max_discharge_kw", 0)),
                                           float(params.get("charge_kw", 0)),
                                           float(params.get("charge_ceiling_kw", params["grid_limit_kw"])),
                                           json.loads(observed), now, deadline)
            else:
                outcome = judge_power(expected, json.loads(observed), now, deadline)
            if outcome.status == VERIFIED:
                self.stats["verified"] += 1
                self._emit_result(action_result(action, "verified", outcome.text, "ESS power in telemetry.site", NAME,
                                                now, -expected))
            elif outcome.status == FAILED:
                self.stats["verify_failed"] += 1
                self._revert(action, outcome.text, now)
            else:
                continue
            self.store.run("DELETE FROM verifying WHERE action_id = ?", action_id)
            sent = True
        return sent

    def settled(self) -> bool:
        """No approval request and no verification open."""
        waiting = self.store.rows("SELECT 1 FROM pending LIMIT 1")
        return not (waiting or self.store.rows("SELECT 1 FROM verifying LIMIT 1"))

    def _revert(self, action: dict, why: str, now: int) -> None:
        self._emit_result(action_result(action, "failed", why, "verification failed", NAME, now))
        idle = {**action, "action_id": f"{action['action_id']}:revert", "kind": "pcs_idle", "setpoint_kw": 0.0,
                "shed_kw": None, "job_ids": [], "params": {"revert_of": action["action_id"]},
                "reason": f"revert {action['action_id']}: {why}", "reason_code": REVERT, "expected_effect": "PCS idle",
                "expected_delta_kw": None, "created_ms": now, "expires_ms": now + 600_000, "proposer": NAME}
        self._emit_verdict(idle, revert_approval(action["action_id"]), "opsloop guard (revert)")
        self._emit_result(action_result(action, "reverted", "pcs_idle issued", f"revert action {idle['action_id']}",
                                        NAME, now))
        self.emit("alarms.raw", action_alarm(action, "pcs", "opsloop.guard", "ACTION_VERIFY_FAILED",
                                             f"{action['kind']} {action['action_id']} not verified: {why}; "
                                             "PCS sent to idle", now))

    # -- the loop's hooks ---------------------------------------------------------------

    def handle(self, msg) -> None:
        topic = self.catalog_name(msg.topic())
        value = self.decoded(msg, INPUTS[topic])
        if value is None:
            return
        if topic == "actions.proposed":
            self.on_proposed(value)  # a malformed one (NaN setpoint, unknown target) is rejected with its reason
        elif topic == "operator.feedback":
            self.on_feedback(value)
        elif topic == "telemetry.site":
            refused = self.bounds.check(value["window_start_ms"], None, None, self.now_ms())
            if refused is not None:  # it would pass for the freshest plant state and verify actions
                self.dead_letter(msg, "invalid", f"snapshot of site {value['site']}: {refused}")
                return
            self.on_snapshot(value)
        else:
            self.on_result(value)

    def end_batch(self, messages: int, idle: bool) -> bool:
        return messages > 0  # verdicts out and inputs committed at once

    def close(self) -> None:
        self.store.db.close()

