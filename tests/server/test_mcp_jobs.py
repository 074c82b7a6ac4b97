"""The render job queue: one worker, bounded, cancellable, with expiring handles."""

from __future__ import annotations

import threading
import time

import pytest

from diffagent.errors import NotFoundError, UserInputError
from diffagent.server.jobs import JobCancelled, JobManager
from diffagent.server.server import caller_message


def manager(**kw) -> JobManager:
    return JobManager(error_text=caller_message, **kw)


def steps_work(n: int, step_s: float = 0.0, gate: threading.Event | None = None):
    def work(progress, cancel):
        if gate is not None:
            gate.wait(5)
        for i in range(n):
            if cancel.is_set():
                raise JobCancelled
            time.sleep(step_s)
            progress(i + 1, n)
        return f"{n} steps"

    return work


def test_runs_in_order_one_at_a_time_with_every_step_recorded():
    jobs = manager()
    a, b = jobs.submit(steps_work(3)), jobs.submit(steps_work(2))
    assert b.done_event.wait(5) and a.done_event.is_set()
    assert (a.state, a.result, [e.step for e in a.events]) == ("done", "3 steps", [1, 2, 3])
    assert (b.step, b.total) == (2, 2) and a.finished <= b.finished
    jobs.close()


def test_queue_is_bounded_and_says_what_to_do():
    gate = threading.Event()
    jobs = manager(max_pending=2)
    first = jobs.submit(steps_work(1, gate=gate))
    jobs.submit(steps_work(1))
    with pytest.raises(UserInputError, match="queue is full.*retry"):
        jobs.submit(steps_work(1))
    gate.set()
    assert first.done_event.wait(5)
    jobs.close()


def test_cancel_queued_and_running():
    gate = threading.Event()
    jobs = manager()
    running = jobs.submit(steps_work(200, step_s=0.01, gate=gate))
    queued = jobs.submit(steps_work(1))
    assert jobs.cancel(queued.id).state == "cancelled"
    gate.set()
    time.sleep(0.05)
    jobs.cancel(running.id)
    assert running.done_event.wait(5) and running.state == "cancelled" and running.step < 200
    assert jobs.pending() == 0
    jobs.close()


def test_failures_are_reported_but_internal_details_are_masked():
    jobs = manager()

    def user_error(progress, cancel):
        raise UserInputError("unknown model id 5; call search_models")

    def crash(progress, cancel):
        raise RuntimeError("CUDA error at /secret/path.py")

    a, b = jobs.submit(user_error), jobs.submit(crash)
    assert b.done_event.wait(5)
    assert a.state == "failed" and a.error == "unknown model id 5; call search_models"
    assert b.state == "failed" and "internal error" in b.error and "/secret" not in b.error
    ok = jobs.submit(steps_work(1))  # the worker survived
    assert ok.done_event.wait(5) and ok.state == "done"
    jobs.close()


def test_finished_jobs_expire():
    jobs = manager(ttl_s=0.05)
    job = jobs.submit(steps_work(1))
    assert job.done_event.wait(5)
    assert jobs.get(job.id) is job
    time.sleep(0.1)
    with pytest.raises(NotFoundError, match="unknown or expired job id"):
        jobs.get(job.id)
    jobs.close()


def test_close_refuses_new_work():
    jobs = manager()
    jobs.close()
    with pytest.raises(UserInputError, match="shutting down"):
        jobs.submit(steps_work(1))
