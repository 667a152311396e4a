"""The actuator ledger: an id is claimed once; results, plans and undo survive reopening the file."""

from __future__ import annotations

import pytest

from opsloop.connectors.ledger import EXECUTED, Ledger

pytestmark = pytest.mark.unit


def test_an_action_id_is_claimed_once_and_everything_survives_a_reopen(tmp_path):
    path = tmp_path / "ledger" / "sink.sqlite"
    action = {"action_id": "a1", "kind": "slurm_suspend", "expires_ms": 1000}
    ledger = Ledger(path)
    assert ledger.start(action) and not ledger.start(action)
    ledger.plan("a1", [["slurm_resume", "7"]])
    ledger.close()  # a crash here: planned, not finished

    ledger = Ledger(path)
    entry = ledger.get("a1")
    assert entry.state == "started" and entry.result is None and entry.undo == [["slurm_resume", "7"]]
    ledger.finish("a1", EXECUTED, {"status": "executed"}, entry.undo)
    assert ledger.awaiting_verification() == [] and ledger.due_for_undo(2000) == []  # not published yet
    ledger.mark_published("a1")
    assert [e.action_id for e in ledger.awaiting_verification()] == ["a1"]
    assert ledger.due_for_undo(999) == [] and [e.action_id for e in ledger.due_for_undo(1000)] == ["a1"]
    ledger.mark_verified("a1", True)
    ledger.mark_undone("a1")
    assert ledger.awaiting_verification() == [] and ledger.due_for_undo(5000) == []
    assert ledger.get("a1").verified is True and ledger.get("a1").undone
    ledger.close()
