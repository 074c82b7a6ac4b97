"""A render-job table shared by several MCP fronts (``DIFFAGENT_JOB_TABLE``): a client may poll or cancel a job
through any front, not only the one that took it (no sticky sessions behind a load balancer).

The front that takes a job runs it (its own worker threads, or Ray Serve replicas) and writes every state change and
progress step here; the others read the row. A cancel through another front sets ``cancel_requested``, which the
owner's worker sees at the job's next step. The table is SQLite in WAL mode, so the fronts must share a machine (or a
filesystem SQLite supports); a database server in its place is the next step (docs/operations.md).

Results travel as the tool's JSON (``RenderOutput``, without its preview); a front that did not render the image
rebuilds the preview from the PNG, which is in the output folder the fronts share.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS render_job (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    finished REAL
)
"""


@dataclass(frozen=True)
class JobRow:
    id: str
    state: str
    step: int
    total: int
    error: str | None
    result: str | None
    cancel_requested: bool
    finished: float | None


class JobStore:
    """The shared table; every method is one short transaction, safe from several threads and processes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            con.execute("PRAGMA busy_timeout=10000")
            self._local.con = con
        return con

    def add(self, job_id: str) -> None:
        self._conn().execute("INSERT INTO render_job (id, state, updated) VALUES (?, 'queued', ?)",
                             (job_id, time.time()))

    def progress(self, job_id: str, step: int, total: int) -> bool:
        """Record a step; True when some front asked to cancel the job."""
        con = self._conn()
        con.execute("UPDATE render_job SET state = 'running', step = ?, total = ?, updated = ? WHERE id = ?",
                    (step, total, time.time(), job_id))
        row = con.execute("SELECT cancel_requested FROM render_job WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def set_state(self, job_id: str, state: str, *, error: str | None = None, result: str | None = None) -> None:
        now = time.time()
        finished = now if state in ("done", "failed", "cancelled") else None
        self._conn().execute("UPDATE render_job SET state = ?, error = ?, result = ?, updated = ?, finished = ?"
                             " WHERE id = ?", (state, error, result, now, finished, job_id))

    def request_cancel(self, job_id: str) -> None:
        self._conn().execute("UPDATE render_job SET cancel_requested = 1, updated = ? WHERE id = ?",
                             (time.time(), job_id))

    def get(self, job_id: str) -> JobRow | None:
        row = self._conn().execute("SELECT id, state, step, total, error, result, cancel_requested, finished"
                                   " FROM render_job WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobRow(*row[:6], bool(row[6]), row[7])

    def purge(self, ttl_s: float) -> None:
        """Drop jobs that finished more than ``ttl_s`` seconds ago."""
        self._conn().execute("DELETE FROM render_job WHERE finished IS NOT NULL AND finished < ?",
                             (time.time() - ttl_s,))
