"""The LLM sink: approved ``llm_shift`` / ``llm_cap`` → HAProxy's runtime API, SLO-guarded, reverted at expiry.

An action's ``target`` is the balancer's backend. The sink reads the servers'
weights and limits, plans the change and its undo (``models.llm_lever.lever_plan``),
records the undo in the ledger *before* touching the balancer (a crash mid-way
still knows what to restore), applies it and reads it back. While it holds,
the SLO guard runs here, about once a second: the backend's load from HAProxy's
own Prometheus metrics (and, where vLLM serves, its p99 time to first token since the previous
check, from ``OPSLOOP_VLLM_METRICS_URLS``) against the policy's ``llm`` SLO (``slo_verdict``). The first
check within the SLO publishes ``verified``; a breach, or metrics that cannot be read,
restores the servers at once, publishes ``reverted`` and raises a major
``LLM_SLO_BREACH`` alarm. At expiry the servers are restored (``reverted``). Weights and
limits change live: no request is cut and no server restarted.
"""

from __future__ import annotations

import logging

from opsloop.connectors.haproxy import BalancerMetrics, HaproxyError, HaproxyRuntime
from opsloop.connectors.ledger import EXECUTED, FAILED
from opsloop.models.guard import LLM_KINDS
from opsloop.models.llm_lever import applied, lever_plan, slo_verdict
from opsloop.models.records import action_alarm, action_result
from opsloop.streams.actuator import ActuatorSink

log = logging.getLogger("opsloop.llm")
CHECK_EVERY_MS = 1000


def _describe(rows: list[list]) -> str:
    return ", ".join(f"{server} {setting} {value}" for setting, server, value in rows)


class LlmSink(ActuatorSink):
    name = "llm-sink"
    kinds = LLM_KINDS
    device_type = "llm"

    def __init__(self, settings, policy, runtime: HaproxyRuntime | None = None,
                 metrics: BalancerMetrics | None = None, clock=None):
        super().__init__(settings, policy, **({"clock": clock} if clock else {}))
        self.runtime = runtime or HaproxyRuntime(settings.haproxy_socket)
        vllm = tuple(u.strip() for u in settings.vllm_metrics_urls.split(",") if u.strip())
        self.metrics = metrics or BalancerMetrics(settings.haproxy_metrics_url, vllm_urls=vllm)
        self._last_check_ms = 0

    def _present(self, backend: str) -> dict[str, tuple[int, int]]:
        return {name: (s.weight, s.maxconn) for name, s in self.runtime.servers(backend).items()}

    def _apply(self, backend: str, rows: list[list]) -> None:
        for setting, server, value in rows:
            if setting == "weight":
                self.runtime.set_weight(backend, server, value)
            else:
                self.runtime.set_maxconn(backend, server, value)

    # -- executing ----------------------------------------------------------------------

    def execute(self, action: dict):
        if self.policy.llm is None:  # the guard rejects these too; the device end checks what it cheaply can
            raise HaproxyError("the policy has no llm section: LLM-serving actions are off")
        backend = action["target"]
        busy = [e.action_id for e in self.ledger.holding(self.now_ms())
                if e.action["kind"] == action["kind"] and e.action["target"] == backend]
        if busy:
            raise HaproxyError(f"{action['kind']} {busy[0][:80]} still holds on {backend}: not stacked")
        changes, undo = lever_plan(action["kind"], action.get("params") or {}, self._present(backend))
        self.ledger.plan(action["action_id"], undo)
        try:
            self._apply(backend, changes)
        except HaproxyError:
            self._apply(backend, undo)  # half a shift is worse than none
            raise
        if not applied(changes, self._present(backend)):
            self._apply(backend, undo)
            return FAILED, action_result(action, "failed", f"balancer did not read back {_describe(changes)}",
                                         "restored what was there", self.name, self.now_ms()), None
        shed = action.get("shed_kw")
        return EXECUTED, action_result(action, "executed", f"{backend}: {_describe(changes)}",
                                       f"HAProxy runtime API; restores {_describe(undo)} at expiry", self.name,
                                       self.now_ms(), -shed if shed else None), undo

    def reconcile(self, action: dict):
        """Started, result unknown: restore what was planned (a half-applied change is worse than none)."""
        entry = self.ledger.get(action["action_id"])
        if entry.undo:
            self._apply(action["target"], entry.undo)
        return FAILED, action_result(action, "failed", "restored the servers as they were" if entry.undo else
                                     "nothing changed", "interrupted; not repeated (at most once)", self.name,
                                     self.now_ms()), None

    def _restore(self, entry) -> str | None:
        """Put the servers back; None when the balancer cannot be reached now (tried again next check)."""
        try:
            self._apply(entry.action["target"], entry.undo)
        except HaproxyError as exc:
            log.warning("%s: cannot restore %s yet: %s", self.name, entry.action_id[:120], exc)
            return None
        self.ledger.mark_undone(entry.action_id)
        self.stats["reverted"] += 1
        return f"restored {_describe(entry.undo)}"

    # -- the SLO guard and expiry -------------------------------------------------------

    def housekeeping(self) -> bool:
        now = self.now_ms()
        if now - self._last_check_ms < CHECK_EVERY_MS:
            return False
        self._last_check_ms = now
        sent = False
        for entry in self.ledger.due_for_undo(now):
            restored = self._restore(entry)
            if restored is not None:
                self.publish(action_result(entry.action, "reverted", restored, "action expired: undone", self.name,
                                           now))
                sent = True
        limits = self.policy.llm
        holding = self.ledger.holding(now)
        loads = {backend: self.metrics.load(backend) for backend in {e.action["target"] for e in holding}}
        for entry in holding:
            verdict = slo_verdict(loads[entry.action["target"]], limits.slo_ttfb_s, limits.slo_queue)
            action = entry.action
            if verdict.breached:
                restored = self._restore(entry)
                if restored is None:
                    continue
                log.warning("%s: %s %s reverted (%s): %s", self.name, action["kind"], action["action_id"][:120],
                            verdict.code, verdict.text)
                self.publish(action_result(action, "reverted", restored, f"SLO guard ({verdict.code}): "
                                           f"{verdict.text}", self.name, now))
                self.raise_alarm(action_alarm(action, self.device_type, f"opsloop.{self.name}", "LLM_SLO_BREACH",
                                              f"{action['kind']} {action['action_id'][:120]} reverted: {verdict.text}",
                                              now))
                sent = True
            elif entry.verified is None:
                self.ledger.mark_verified(entry.action_id, True)
                self.stats["verified"] += 1
                self.publish(action_result(action, "verified", verdict.text, entry.result["observed_effect"],
                                           self.name, now, entry.result.get("observed_delta_kw")))
                sent = True
        return sent

    def settled(self) -> bool:
        return not any(e.verified is None for e in self.ledger.holding(self.now_ms()))
