"""A render-job table shared by several MCP fronts (``DIFFAGENT_JOB_TABLE``): a client may poll or cancel a job
through any front, not only the one that took it (no sticky sessions behind a load balancer).

The front that takes a job runs it (its own worker threads, or Ray Serve replicas) and writes every state change and
progress step here; the others read the row. A cancel through another front sets ``cancel_requested``, which the
owner's worker sees at the job's next step. The table is a SQLite file in WAL mode (fronts on one machine) or, given a
``postgresql://`` URL, a table in a PostgreSQL database (fronts on several machines; the ``postgres`` extra).

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
    updated DOUBLE PRECISION NOT NULL,
    finished DOUBLE PRECISION
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
    """The shared table in a SQLite file; every method is one short statement, safe from several threads and
    processes. ``PostgresJobStore`` runs the same statements on a database server."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._exec("PRAGMA journal_mode=WAL")
        self._exec(_SCHEMA)

    def _connect(self):
        con = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        con.execute("PRAGMA busy_timeout=10000")
        return con

    def _exec(self, sql: str, params: tuple = ()):
        """Run one statement on this thread's connection (autocommit); the cursor."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._connect()
        return con.execute(sql, params)

    def add(self, job_id: str) -> None:
        self._exec("INSERT INTO render_job (id, state, updated) VALUES (?, 'queued', ?)", (job_id, time.time()))

    def progress(self, job_id: str, step: int, total: int) -> bool:
        """Record a step; True when some front asked to cancel the job."""
        self._exec(
            "UPDATE render_job SET state = 'running', step = ?, total = ?, updated = ? WHERE id = ?",
            (step, total, time.time(), job_id),
        )
        row = self._exec("SELECT cancel_requested FROM render_job WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def set_state(self, job_id: str, state: str, *, error: str | None = None, result: str | None = None) -> None:
        now = time.time()
        finished = now if state in ("done", "failed", "cancelled") else None
        self._exec(
            "UPDATE render_job SET state = ?, error = ?, result = ?, updated = ?, finished = ? WHERE id = ?",
            (state, error, result, now, finished, job_id),
        )

    def request_cancel(self, job_id: str) -> None:
        self._exec("UPDATE render_job SET cancel_requested = 1, updated = ? WHERE id = ?", (time.time(), job_id))

    def get(self, job_id: str) -> JobRow | None:
        row = self._exec(
            "SELECT id, state, step, total, error, result, cancel_requested, finished FROM render_job WHERE id = ?",
            (job_id,),
        ).fetchone()
        return None if row is None else JobRow(*row[:6], bool(row[6]), row[7])

    def purge(self, ttl_s: float) -> None:
        """Drop jobs that finished more than ``ttl_s`` seconds ago."""
        self._exec("DELETE FROM render_job WHERE finished IS NOT NULL AND finished < ?", (time.time() - ttl_s,))


class PostgresJobStore(JobStore):
    """The shared table in a PostgreSQL database (``postgresql://`` URL), for fronts on several machines."""

    def __init__(self, url: str):
        try:
            import psycopg  # noqa: F401
        except ImportError as e:
            from diffagent.errors import MissingDependency

            raise MissingDependency("psycopg", "postgres") from e
        self.url = url
        self._local = threading.local()
        self._exec(_SCHEMA)

    def _connect(self):
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    def _exec(self, sql: str, params: tuple = ()):
        return super()._exec(sql.replace("?", "%s"), params)


def open_job_store(where: str | Path) -> JobStore:
    """``DIFFAGENT_JOB_TABLE``: a ``postgresql://`` URL, or the path of a SQLite file."""
    text = str(where)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresJobStore(text)
    return JobStore(Path(text).expanduser())
