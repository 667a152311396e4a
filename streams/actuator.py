"""What every actuator sink shares: read ``actions.approved``, execute each approved action at most once, publish.

A sink runs on the processors' loop (streams/processor.py), tuned for latency: a batch is
handed over as soon as one action is there and committed right after. It handles the
approved actions of its kinds (``kinds``) one at a time: decode (undecodable →
``deadletter``), skip verdicts other than ``approved`` and other kinds, then through the
ledger (``connectors.ledger``): claim the id, execute, record the result, publish it to
``actions.results``, wait for the broker, mark it published. The loop commits the offsets
only after that. After each batch ``housekeeping`` runs (verification, undo at expiry).
Subclasses implement ``execute`` and ``reconcile`` (an action found ``started`` after a
crash) and may override ``housekeeping`` and ``settled``.

A sink executes only verdicts the guard wrote: before the ledger is touched, an
``approved`` verdict of its kinds must carry the guard's valid signature
(``OPSLOOP_VERDICT_KEY``), name the policy version the sink runs with and be unexpired
(``models.signing.verdict_problems``). Anything else is refused without claiming its id:
an ``ActionResult`` ``rejected`` with the reason, a major ``ACTION_REFUSED`` alarm, a
dead letter (``invalid``) and a log line.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from opsloop.config.policy import Policy
from opsloop.config.settings import Settings
from opsloop.connectors.ledger import EXECUTED, FAILED, Ledger
from opsloop.models.records import action_alarm, action_result
from opsloop.models.signing import Keyring, verdict_problems
from opsloop.streams.processor import BatchProcessor

log = logging.getLogger("opsloop.actuator")


class ActuatorSink(BatchProcessor):
    name = "actuator"
    source = "actions.approved"
    kinds: tuple[str, ...] = ()
    device_type = "actuator"  # on the alarms it raises
    poll_s = 0.1
    batch_size = 100
    wake_on_first = True  # an approved action waits for no batch to fill
    quiet_s = 0.0  # caught up and settled is idle: nothing else arrives by itself
    commit_stat = None
    consumer_overrides = {"fetch.wait.max.ms": 50}
    producer_overrides = {"linger.ms": 0}

    def __init__(self, settings: Settings, policy: Policy, clock: Callable[[], float] = time.time):
        super().__init__(settings)
        self.policy = policy
        self.verdict_keys = Keyring.parse(settings.verdict_key, "OPSLOOP_VERDICT_KEY")
        if not self.verdict_keys:
            raise ValueError(f"{self.name} executes only verdicts signed by the guard: set OPSLOOP_VERDICT_KEY")
        self.wall_clock = clock  # wall clock of the connector layer: expiry, verification deadlines
        self.ledger = Ledger(settings.data_dir / "ledger" / f"{self.name}.sqlite")
        self.stats = {"executed": 0, "failed": 0, "skipped_duplicates": 0, "reconciled": 0, "ignored": 0,
                      "dead_letters": 0, "verified": 0, "reverted": 0, "refused": 0}
        self.on_result: Callable[[dict], None] | None = None  # tests and the demo watch results as they go

    def now_ms(self) -> int:
        return int(self.wall_clock() * 1000)

    # -- to implement -------------------------------------------------------------------

    def execute(self, action: dict) -> tuple[str, dict, list | None]:
        """Drive the device; returns (ledger state, ActionResult, undo info or None)."""
        raise NotImplementedError

    def reconcile(self, action: dict) -> tuple[str, dict, list | None]:
        """An action was started but its result not recorded (a crash): find out from the device, never redo."""
        raise NotImplementedError

    # -- publishing ---------------------------------------------------------------------

    def publish(self, record: dict) -> None:
        self.emit("actions.results", record)
        if self.on_result is not None:
            self.on_result(record)

    def raise_alarm(self, record: dict) -> None:
        self.emit("alarms.raw", record)

    # -- the loop's hooks ---------------------------------------------------------------

    def handle(self, msg) -> None:
        approved = self.decoded(msg, "ApprovedAction")
        if approved is None:
            return
        if approved["verdict"] == "approved" and approved["action"]["kind"] in self.kinds:
            problems = verdict_problems(approved, self.verdict_keys, self.policy.label, self.now_ms())
            if problems:
                self.refuse(msg, approved, problems)
                return
        self.act_on(approved)

    def refuse(self, msg, approved: dict, problems: list) -> None:
        """An approved verdict the guard did not write (or that no longer holds): nothing is executed."""
        action, now = approved["action"], self.now_ms()
        codes = ", ".join(p.code for p in problems)
        why = "; ".join(p.text for p in problems)
        self.stats["refused"] += 1
        log.warning("%s: refused %s %r (%s): %s", self.name, action["kind"], action["action_id"][:120], codes, why)
        self.dead_letter(msg, "invalid", f"refused verdict ({codes}): {why}")
        self.publish(action_result(action, "rejected", "nothing done", f"refused by {self.name} ({codes}): {why}",
                                   self.name, now))
        self.raise_alarm(action_alarm(action, self.device_type, f"opsloop.{self.name}", "ACTION_REFUSED",
                                      f"{action['kind']} {action['action_id'][:120]} refused ({codes}): {why}", now))
        self.flush()

    def end_batch(self, messages: int, idle: bool) -> bool:
        return messages > 0  # commit what was acted on at once

    def close(self) -> None:
        self.ledger.close()

    # -- one approved action ------------------------------------------------------------

    def act_on(self, approved: dict) -> None:
        action = approved["action"]
        if approved["verdict"] != "approved" or action["kind"] not in self.kinds:
            self.stats["ignored"] += 1
            return
        action_id = action["action_id"]
        entry = self.ledger.get(action_id)
        if entry is None and self.ledger.start(action):
            if self.now_ms() >= action["expires_ms"]:
                state, record, undo = FAILED, action_result(action, "failed", "nothing done",
                                                            "expired before execution", self.name, self.now_ms()), None
            else:
                try:
                    state, record, undo = self.execute(action)
                except Exception as exc:  # the device said no or is unreachable: a failed action, not a crash
                    log.warning("%s: %s failed: %s", self.name, action_id, exc)
                    state, record, undo = FAILED, action_result(action, "failed", "not executed", str(exc), self.name,
                                                                self.now_ms()), None
            self.ledger.finish(action_id, state, record, undo)
            self.stats["executed" if state == EXECUTED else "failed"] += 1
        else:
            entry = entry or self.ledger.get(action_id)
            if entry.result is None:  # claimed, never finished: the process died in between
                state, record, undo = self.reconcile(action)
                self.ledger.finish(action_id, state, record, undo)
                self.stats["reconciled"] += 1
            else:
                self.stats["skipped_duplicates"] += 1
                if entry.published:
                    return
                record = entry.result
        self.publish(record)
        self.flush()
        self.ledger.mark_published(action_id)
