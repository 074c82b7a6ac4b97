"""Render jobs: one worker thread owns the GPU, everything else waits in a bounded queue.

A render that outlasts a client's ~60 s tool timeout must not be lost, so every render runs as
a job with an opaque, high-entropy id. The MCP tool waits for it up to a deadline and hands back
the id when the deadline passes; ``get_render`` polls it later. Finished jobs live for ``ttl_s``
seconds, after which their id is refused with an error that says what to do.

The manager is protocol-free (plain threads), so the server, the CLI and tests can share it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from diffagent.errors import NotFoundError, UserInputError
from diffagent.server.job_store import JobStore

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})

#: ``work(progress, cancel)``: call ``progress(step, total)`` after each step and stop soon after
#: ``cancel`` is set (by raising ``JobCancelled`` or the renderer's own cancellation error).
Work = Callable[[Callable[[int, int], None], threading.Event], Any]


class JobCancelled(Exception):
    """Raised by work that noticed its cancel event."""


@dataclass
class ProgressEvent:
    step: int
    total: int


@dataclass
class Job:
    id: str
    state: JobState = "queued"
    result: Any = None
    error: str | None = None
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)
    #: every step reported so far, so a waiter can relay each one even if it polls slowly
    events: list[ProgressEvent] = field(default_factory=list)
    #: a snapshot of a job another front runs, read from the shared job table (``job_store.py``)
    remote: bool = False

    @property
    def step(self) -> int:
        return self.events[-1].step if self.events else 0

    @property
    def total(self) -> int:
        return self.events[-1].total if self.events else 0

    @property
    def finished_state(self) -> bool:
        return self.state in FINISHED


class JobManager:
    """A FIFO of render jobs run by ``workers`` threads: one for a local renderer (the GPU runs one denoising
    loop at a time), one per render replica for Ray Serve (``Settings.render_backend``)."""

    def __init__(
        self,
        *,
        max_pending: int = 8,
        ttl_s: float = 3600.0,
        error_text: Callable[[BaseException], str],
        workers: int = 1,
        store: JobStore | None = None,
        encode: Callable[[Any], str] = str,
        decode: Callable[[str], Any] = str,
    ):
        """``error_text`` turns a failed job's exception into the message a caller sees (it decides
        what may be shown: user-fixable errors verbatim, anything else masked). ``store``: the job table shared
        with other fronts, where results go as ``encode(result)`` and come back as ``decode(text)``."""
        self.max_pending = max_pending
        self.workers = max(int(workers), 1)
        self.store, self._encode, self._decode = store, encode, decode
        self.ttl_s = ttl_s
        self._error_text = error_text
        self._jobs: dict[str, Job] = {}
        self._work: dict[str, Work] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    # --- submitting and looking up -----------------------------------------------------------
    def submit(self, work: Work) -> Job:
        with self._lock:
            if self._closed:
                raise UserInputError("the server is shutting down; retry against a running server")
            self._purge_expired()
            pending = sum(1 for j in self._jobs.values() if not j.finished_state)
            if pending >= self.max_pending:
                raise UserInputError(
                    f"the render queue is full ({pending} jobs waiting or running); wait for one to finish "
                    "(poll get_render) and retry"
                )
            job = Job(id=uuid.uuid4().hex)
            self._jobs[job.id] = job
            self._work[job.id] = work
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._run, name=f"diffagent-render-{i}", daemon=True)
                    for i in range(self.workers)
                ]
                for thread in self._threads:
                    thread.start()
        if self.store is not None:
            self.store.add(job.id)
        self._queue.put(job.id)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            self._purge_expired()
            job = self._jobs.get(job_id)
        if job is None and self.store is not None:
            job = self._remote(job_id)
        if job is None:
            raise NotFoundError(
                f"unknown or expired job id {job_id!r} (finished jobs are kept {self.ttl_s / 60:g} minutes); "
                "call render_image again"
            )
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.remote:  # another front runs it: it stops at its next step there
            if not job.finished_state:
                self.store.request_cancel(job_id)
            return job
        job.cancel_event.set()
        with self._lock:
            if job.state == "queued":  # never started: finish it here, the worker will skip it
                self._finish(job, "cancelled")
        return job

    def pending(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if not j.finished_state)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel everything and stop the worker (the running job stops at its next step)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            if not job.finished_state:
                self.cancel(job.id)
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

    # --- the worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        while (job_id := self._queue.get()) is not None:
            with self._lock:
                job = self._jobs.get(job_id)
                work = self._work.pop(job_id, None)
                if job is None or work is None or job.state != "queued":
                    continue
                job.state = "running"

            if self.store is not None:
                self.store.set_state(job.id, "running")

            def progress(step: int, total: int, _job: Job = job) -> None:
                _job.events.append(ProgressEvent(int(step), int(total)))
                if self.store is not None:
                    try:
                        if self.store.progress(_job.id, int(step), int(total)):
                            _job.cancel_event.set()  # cancelled through another front
                    except Exception:  # noqa: BLE001 - a busy shared table must not fail the render
                        log.warning("could not record job %s's progress in the shared job table", _job.id)

            try:
                result = work(progress, job.cancel_event)
            except BaseException as exc:  # noqa: BLE001 - a job failure must never kill the worker
                if job.cancel_event.is_set():
                    state, error = "cancelled", None
                else:
                    state, error = "failed", self._error_text(exc)
                    log.log(
                        logging.INFO if isinstance(exc, UserInputError) else logging.ERROR,
                        "job %s failed",
                        job.id,
                        exc_info=not isinstance(exc, UserInputError),
                    )
                with self._lock:
                    self._finish(job, state, error=error)
                if not isinstance(exc, Exception):
                    raise
            else:
                with self._lock:
                    self._finish(job, "done", result=result)

    def _finish(self, job: Job, state: JobState, *, result: Any = None, error: str | None = None) -> None:
        job.state, job.result, job.error = state, result, error
        job.finished = time.monotonic()
        self._work.pop(job.id, None)
        if self.store is not None:
            try:
                self.store.set_state(
                    job.id, state, error=error, result=self._encode(result) if state == "done" else None
                )
            except Exception:  # noqa: BLE001 - the local job is finished either way; other fronts see it stale
                log.exception("could not record job %s in the shared job table", job.id)
        job.done_event.set()

    def _remote(self, job_id: str) -> Job | None:
        """A snapshot of a job another front took, from the shared table (None: no such job there either)."""
        row = self.store.get(job_id)
        if row is None:
            return None
        job = Job(
            id=row.id,
            state=row.state,
            error=row.error,
            remote=True,
            events=[ProgressEvent(row.step, row.total)] if row.total else [],
        )
        if row.state == "done" and row.result is not None:
            job.result = self._decode(row.result)
        if job.finished_state:
            job.finished = time.monotonic()
            job.done_event.set()
        return job

    def _purge_expired(self) -> None:
        if self.store is not None:
            self.store.purge(self.ttl_s)
        now = time.monotonic()
        for job_id in [j.id for j in self._jobs.values() if j.finished and now - j.finished > self.ttl_s]:
            del self._jobs[job_id]
