"""What every actuator sink shares: read ``actions.approved``, execute each approved action at most once, publish.

A sink handles the approved actions of its kinds (``kinds``), one message at a
time: decode (undecodable → ``deadletter``), skip verdicts other than
``approved`` and other kinds, then through the ledger (``connectors.ledger``):
claim the id, execute, record the result, publish it to ``actions.results``,
wait for the broker, commit the offset. Between messages ``housekeeping`` runs
(verification, undo at expiry). Subclasses implement ``execute`` and
``reconcile`` (an action found ``started`` after a crash) and may override
``housekeeping``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from confluent_kafka import KafkaError, KafkaException

from opsloop.connectors.kafka import DeadLetters, close_clients, consumer, producer, send_record, wait_delivered
from opsloop.connectors.ledger import EXECUTED, FAILED, Ledger
from opsloop.config.policy import Policy
from opsloop.config.settings import Settings
from opsloop.models.records import action_result
from opsloop.schemas.codec import Codec, DecodeError

log = logging.getLogger("opsloop.actuator")


class ActuatorSink:
    name = "actuator"
    kinds: tuple[str, ...] = ()

    def __init__(self, settings: Settings, policy: Policy, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.policy = policy
        self.clock = clock  # wall clock of the connector layer: expiry, verification deadlines
        self.codec = Codec.default()
        self.ledger = Ledger(settings.data_dir / "ledger" / f"{self.name}.sqlite")
        self.stats = {"executed": 0, "failed": 0, "skipped_duplicates": 0, "reconciled": 0, "ignored": 0,
                      "dead_letters": 0, "verified": 0, "reverted": 0}
        self.on_result: Callable[[dict], None] | None = None  # tests and the demo watch results as they go
        self._prod = None

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- to implement -------------------------------------------------------------------

    def execute(self, action: dict) -> tuple[str, dict, list | None]:
        """Drive the device; returns (ledger state, ActionResult, undo info or None)."""
        raise NotImplementedError

    def reconcile(self, action: dict) -> tuple[str, dict, list | None]:
        """An action was started but its result not recorded (a crash): find out from the device, never redo."""
        raise NotImplementedError

    def housekeeping(self) -> None:
        pass

    # -- publishing ---------------------------------------------------------------------

    def publish(self, record: dict) -> None:
        send_record(self._prod, self.settings, "actions.results", record, self.codec)
        if self.on_result is not None:
            self.on_result(record)

    def raise_alarm(self, record: dict) -> None:
        send_record(self._prod, self.settings, "alarms.raw", record, self.codec)

    # -- one approved action ------------------------------------------------------------

    def handle(self, approved: dict) -> None:
        action = approved["action"]
        if approved["verdict"] != "approved" or action["kind"] not in self.kinds:
            self.stats["ignored"] += 1
            return
        action_id = action["action_id"]
        entry = self.ledger.get(action_id)
        if entry is None and self.ledger.start(action):
            if self.now_ms() >= action["expires_ms"]:
                state, record, undo = FAILED, action_result(action, "failed", "nothing done", "expired before execution",
                                                     self.name, self.now_ms()), None
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
        wait_delivered(self._prod)
        self.ledger.mark_published(action_id)

    # -- the loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event, exit_when_idle: bool = False) -> dict:
        settings = self.settings
        cons = consumer(settings, settings.group(self.name), **{"fetch.wait.max.ms": 50})
        self._prod = producer(settings, **{"linger.ms": 0})
        dead = DeadLetters(settings, self._prod, self.name)
        cons.subscribe([settings.topic("actions.approved")])
        caught_up: set[int] = set()
        try:
            while not stop.is_set():
                first = cons.poll(0.1)  # returns on the first message (consume() waits out its timeout for a batch)
                for msg in ([first] + cons.consume(99, timeout=0) if first is not None else []):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            caught_up.add(msg.partition())
                            continue
                        raise KafkaException(err)
                    caught_up.discard(msg.partition())
                    try:
                        approved = self.codec.decode_as("ApprovedAction", msg.value())
                    except DecodeError as exc:
                        dead.send(msg, "decode", exc.reason)
                        wait_delivered(self._prod)
                    else:
                        self.handle(approved)
                    cons.commit(message=msg, asynchronous=False)
                self.housekeeping()
                self._prod.poll(0)
                assigned = {tp.partition for tp in cons.assignment()}
                if exit_when_idle and assigned and caught_up >= assigned and self.idle():
                    break
        finally:
            self.stats["dead_letters"] = dead.count
            try:
                close_clients(self._prod, cons)
            finally:
                self._prod = dead = None  # release the client before the broker may go away
                self.ledger.close()
        log.info("%s stopped: %s", self.name, self.stats)
        return self.stats

    def idle(self) -> bool:
        """Nothing left to verify or undo (``exit_when_idle``)."""
        return True
