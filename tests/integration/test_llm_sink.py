"""The LLM sink against a real HAProxy, without a broker: at most once, restored after a crash, reverted at expiry,
fail safe when the balancer's metrics cannot be read. (The servers behind it need not run: weights and limits
are the balancer's own state.)"""

from __future__ import annotations

import shutil
import time

import pytest

from actuation import TEST_VERDICT_KEY, action, approved, free_port
from opsloop.config.policy import load_policy
from opsloop.config.settings import Settings
from opsloop.connectors.haproxy import HaproxyRuntime
from opsloop.connectors.ledger import FAILED
from opsloop.ops.llm_balancer import BACKEND, LocalBalancer
from opsloop.schemas.codec import Codec
from opsloop.streams.llm_sink import LlmSink

pytestmark = pytest.mark.integration
CODEC = Codec.default()


class Sink(LlmSink):
    """The LLM sink with its outputs kept in a list instead of sent to a broker."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, dict]] = []

    def emit(self, topic, record):
        CODEC.encode(self.catalog[topic].record, record)  # it must be a valid record
        self.sent.append((topic, record))

    def flush(self):
        pass

    def statuses(self, action_id: str) -> list[str]:
        return [r["status"] for t, r in self.sent if t == "actions.results" and r["action_id"] == action_id]


@pytest.fixture
def balancer(tmp_path):
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (make system-deps)")
    lb = LocalBalancer(tmp_path / "haproxy", {"large": ("127.0.0.1", free_port(), 100),
                                              "small": ("127.0.0.1", free_port(), 0)},
                       port=free_port(), metrics_port=free_port()).start()
    yield lb
    lb.stop()


def sink_for(tmp_path, lb: LocalBalancer, clock=time.time, metrics_url: str | None = None) -> Sink:
    settings = Settings(data_dir=tmp_path, verdict_key=TEST_VERDICT_KEY, haproxy_socket=str(lb.socket),
                        haproxy_metrics_url=metrics_url or lb.metrics_url)
    return Sink(settings, load_policy(settings.policy), clock=clock)


def weights(lb: LocalBalancer) -> dict[str, int]:
    return {name: s.weight for name, s in HaproxyRuntime(str(lb.socket)).servers(BACKEND).items()}


def test_a_redelivered_shift_is_applied_once_verified_and_reverted_at_expiry(tmp_path, balancer):
    shift_s = [0.0]
    sink = sink_for(tmp_path, balancer, clock=lambda: time.time() + shift_s[0])
    verdict = approved(action("shift-1", "llm_shift", target=BACKEND, shift_pct=50))
    sink.act_on(verdict)
    assert weights(balancer) == {"large": 50, "small": 50}
    HaproxyRuntime(str(balancer.socket)).set_weight(BACKEND, "small", 10)  # someone else's change since
    sink.act_on(verdict)  # the approval delivered again after a restart: never applied twice
    assert weights(balancer) == {"large": 50, "small": 10}
    assert sink.stats["executed"] == 1 and sink.stats["skipped_duplicates"] == 1
    assert sink.housekeeping()
    assert sink.statuses("shift-1") == ["executed", "verified"]  # its result was published: not again
    shift_s[0] = 601.0
    sink._last_check_ms = 0
    assert sink.housekeeping()
    assert weights(balancer) == {"large": 100, "small": 0}
    assert sink.statuses("shift-1")[-1] == "reverted"
    sink.close()


def test_a_sink_killed_mid_change_restores_the_servers_instead_of_repeating(tmp_path, balancer):
    cap = action("cap-1", "llm_cap", target=BACKEND, servers="large,small", maxconn=4)
    first = sink_for(tmp_path, balancer)
    first.ledger.start(cap)  # claimed, undo planned, half applied: then SIGKILL
    first.ledger.plan("cap-1", [["maxconn", "large", 64], ["maxconn", "small", 64]])
    HaproxyRuntime(str(balancer.socket)).set_maxconn(BACKEND, "large", 4)
    first.close()
    again = sink_for(tmp_path, balancer)
    again.act_on(approved(cap))
    servers = HaproxyRuntime(str(balancer.socket)).servers(BACKEND)
    assert (servers["large"].maxconn, servers["small"].maxconn) == (64, 64)
    assert again.stats["reconciled"] == 1 and again.ledger.get("cap-1").state == FAILED
    assert again.statuses("cap-1") == ["failed"]
    again.close()


def test_unreadable_balancer_metrics_revert_the_action_with_an_alarm(tmp_path, balancer):
    sink = sink_for(tmp_path, balancer, metrics_url=f"http://127.0.0.1:{free_port()}/metrics")
    sink.act_on(approved(action("shift-2", "llm_shift", target=BACKEND, shift_pct=40)))
    assert weights(balancer) == {"large": 60, "small": 40}
    assert sink.housekeeping()
    assert weights(balancer) == {"large": 100, "small": 0}
    [reverted] = [r for t, r in sink.sent if t == "actions.results" and r["status"] == "reverted"]
    assert "slo_unknown" in reverted["detail"]
    assert [r["code"] for t, r in sink.sent if t == "alarms.raw"] == ["LLM_SLO_BREACH"]
    sink.close()


def test_a_second_shift_on_the_same_backend_is_not_stacked(tmp_path, balancer):
    sink = sink_for(tmp_path, balancer)
    sink.act_on(approved(action("shift-a", "llm_shift", target=BACKEND, shift_pct=50)))
    sink.act_on(approved(action("shift-b", "llm_shift", target=BACKEND, shift_pct=50)))
    assert weights(balancer) == {"large": 50, "small": 50}
    assert sink.statuses("shift-b") == ["failed"]
    sink.close()
