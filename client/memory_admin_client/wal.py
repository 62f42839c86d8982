"""The offline write-ahead log: calls that may wait (store_fact, publish, set_agent_status),
kept in order in a SQLite file while the server cannot be reached, with the idempotency key
each was first sent with.

A row is removed only after the server answered it, so an agent killed mid-replay sends
the unanswered rows again on its next start, and the server's Idempotency-Key replay makes
that resend change nothing (keys are kept for 24 hours, per token). One process per file:
a second one is refused (an exclusive lock on `<file>.lock`), since two replaying the same
rows could not keep their order.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memory_admin_client.errors import MemoryAdminError

try:
    import fcntl
except ImportError:  # Windows: no guard against a second process
    fcntl = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    body BLOB,
    idempotency_key TEXT NOT NULL,
    agent_id TEXT,
    queued REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    error TEXT
);
CREATE INDEX IF NOT EXISTS log_state_seq ON log (state, seq);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class LogInUse(MemoryAdminError):
    """The offline log file is already open: by another client of this process, or by another process."""

    code = "offline_log_in_use"


# The files open in this process. flock would refuse a second open of one file in the same
# process too, but it cannot tell that case apart, which is the one with an easy fix.
_open_here: set[Path] = set()
_open_here_lock = threading.Lock()


@dataclass(frozen=True)
class Row:
    seq: int
    kind: str
    method: str
    path: str
    body: bytes | None
    idempotency_key: str
    agent_id: str | None
    queued: float
    state: str = "queued"
    error: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "method": self.method,
            "path": self.path,
            "body": json.loads(self.body) if self.body else None,
            "idempotency_key": self.idempotency_key,
            "agent_id": self.agent_id,
            "queued_at": self.queued,
            "state": self.state,
            "error": self.error,
        }


class OfflineLog:
    """The SQLite file. Thread-safe; every change is committed (synchronous=FULL) before the
    method returns, so a row the caller was told is queued survives a crash."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = self.path.resolve()
        with _open_here_lock:
            if self._key in _open_here:
                raise LogInUse(
                    f"the offline log {self.path} is already open by another client in this process:"
                    " share that client (it is safe to use from several threads or tasks), or close it"
                    " before opening another on the same file"
                )
            self._guard = self._take_guard()
            _open_here.add(self._key)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._queued = self._db.execute("SELECT count(*) FROM log WHERE state = 'queued'").fetchone()[0]
        except BaseException:
            self._release()
            raise

    def _take_guard(self):
        if fcntl is None:
            return None
        handle = open(f"{self.path}.lock", "a")  # noqa: SIM115 - held for the log's whole life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise LogInUse(f"the offline log {self.path} is in use by another process") from exc
        return handle

    @property
    def backlog(self) -> int:
        """How many rows wait to be sent."""
        return self._queued

    def append(
        self, *, kind: str, method: str, path: str, body: bytes | None, key: str, agent_id: str | None
    ):
        with self._lock:
            self._db.execute(
                "INSERT INTO log (kind, method, path, body, idempotency_key, agent_id, queued)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (kind, method, path, body, key, agent_id, time.time()),
            )
            self._queued += 1

    def queued(self, limit: int = 1000) -> list[Row]:
        return self.rows("queued", limit)

    def done(self, seq: int) -> None:
        """The server answered the row: it leaves the log."""
        with self._lock:
            if self._db.execute("DELETE FROM log WHERE seq = ? AND state = 'queued'", (seq,)).rowcount:
                self._queued -= 1

    def fail(self, seq: int, error: str) -> None:
        """The server refused the row for good (bad input, another agent): kept aside, not resent."""
        with self._lock:
            if self._db.execute(
                "UPDATE log SET state = 'failed', error = ? WHERE seq = ? AND state = 'queued'", (error, seq)
            ).rowcount:
                self._queued -= 1

    def rows(self, state: str, limit: int = -1) -> list[Row]:
        """The rows in `state`, oldest first; up to `limit` of them (-1, SQLite's "no limit": all)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, method, path, body, idempotency_key, agent_id, queued, state, error"
                " FROM log WHERE state = ? ORDER BY seq LIMIT ?",
                (state, limit),
            ).fetchall()
        return [Row(*row) for row in rows]

    def get(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def put(self, name: str, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = ?",
                (name, value, value),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._release()

    def _release(self) -> None:
        if self._guard is not None:
            self._guard.close()
            self._guard = None
        with _open_here_lock:
            _open_here.discard(self._key)
