"""The actuator ledger: a durable record, per sink, of every action id it has started, so none runs twice.

SQLite in WAL mode with ``synchronous=FULL``: a row is on disk before the call
returns. A sink marks an action ``started`` *before* touching the device and
``executed``/``failed`` (with the result it will publish) right after; the
Kafka offset is committed only after the result is delivered. After a SIGKILL:

* killed after the offset commit: the action is never seen again;
* killed between execution and the commit: the action is redelivered, the
  ledger has its result, the device is not touched again and the stored result
  is published (again, if it had been: consumers key results by action id);
* killed between ``started`` and the result: the device may or may not have
  been driven, so the sink reconciles by reading the device back instead of
  executing again (at most once, never twice).

The Slurm and LLM sinks also keep here what undoing an action means (which jobs to release
or resume) and whether it has been undone.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

STARTED, EXECUTED, FAILED = "started", "executed", "failed"


@dataclass
class Entry:
    action_id: str
    state: str
    action: dict
    result: dict | None
    published: bool
    undo: list | None
    undone: bool
    verified: bool | None


class Ledger:
    def __init__(self, path: Path | str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS actions (
            action_id TEXT PRIMARY KEY, state TEXT NOT NULL, action TEXT NOT NULL, result TEXT,
            published INTEGER NOT NULL DEFAULT 0, undo TEXT, undone INTEGER NOT NULL DEFAULT 0,
            verified INTEGER, expires_ms INTEGER NOT NULL)""")

    def get(self, action_id: str) -> Entry | None:
        row = self.db.execute("SELECT action_id, state, action, result, published, undo, undone, verified "
                              "FROM actions WHERE action_id = ?", (action_id,)).fetchone()
        return self._entry(row) if row else None

    @staticmethod
    def _entry(row) -> Entry:
        action_id, state, action, result, published, undo, undone, verified = row
        return Entry(action_id, state, json.loads(action), json.loads(result) if result else None, bool(published),
                     json.loads(undo) if undo else None, bool(undone), None if verified is None else bool(verified))

    def start(self, action: dict) -> bool:
        """Claim an action id; False when it was claimed before (never execute it then)."""
        cur = self.db.execute("INSERT OR IGNORE INTO actions (action_id, state, action, expires_ms) VALUES (?, ?, ?, ?)",
                              (action["action_id"], STARTED, json.dumps(action), action["expires_ms"]))
        return cur.rowcount == 1

    def finish(self, action_id: str, state: str, result: dict, undo: list | None = None) -> None:
        self.db.execute("UPDATE actions SET state = ?, result = ?, undo = ? WHERE action_id = ?",
                        (state, json.dumps(result), json.dumps(undo) if undo is not None else None, action_id))

    def plan(self, action_id: str, undo: list) -> None:
        """Record what undoing a started action means, before acting on the device."""
        self.db.execute("UPDATE actions SET undo = ? WHERE action_id = ?", (json.dumps(undo), action_id))

    def mark_published(self, action_id: str) -> None:
        self.db.execute("UPDATE actions SET published = 1 WHERE action_id = ?", (action_id,))

    def mark_verified(self, action_id: str, ok: bool) -> None:
        self.db.execute("UPDATE actions SET verified = ? WHERE action_id = ?", (int(ok), action_id))

    def mark_undone(self, action_id: str) -> None:
        self.db.execute("UPDATE actions SET undone = 1 WHERE action_id = ?", (action_id,))

    def awaiting_verification(self) -> list[Entry]:
        rows = self.db.execute("SELECT action_id, state, action, result, published, undo, undone, verified "
                               "FROM actions WHERE state = ? AND published = 1 AND verified IS NULL AND undone = 0", (EXECUTED,))
        return [self._entry(r) for r in rows]

    def due_for_undo(self, now_ms: int) -> list[Entry]:
        """Executed actions with something to undo, past their expiry and not undone yet."""
        rows = self.db.execute("SELECT action_id, state, action, result, published, undo, undone, verified "
                               "FROM actions WHERE state = ? AND published = 1 AND undo IS NOT NULL AND undone = 0 "
                               "AND expires_ms <= ?",
                               (EXECUTED, now_ms))
        return [self._entry(r) for r in rows]

    def holding(self, now_ms: int) -> list[Entry]:
        """Executed actions with something to undo, not expired and not undone: in force now."""
        rows = self.db.execute("SELECT action_id, state, action, result, published, undo, undone, verified "
                               "FROM actions WHERE state = ? AND published = 1 AND undo IS NOT NULL AND undone = 0 "
                               "AND expires_ms > ?", (EXECUTED, now_ms))
        return [self._entry(r) for r in rows]

    def close(self) -> None:
        self.db.close()
