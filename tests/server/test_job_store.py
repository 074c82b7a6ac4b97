"""The render-job table shared by several MCP fronts (``DIFFAGENT_JOB_TABLE``): a job taken by one front can be
followed, fetched and cancelled through another; every test runs on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import pytest
from mcp import Client

from diffagent.errors import NotFoundError
from diffagent.server import create_server
from diffagent.server.job_store import open_job_store
from diffagent.server.jobs import JobCancelled, JobManager


def slow_work(steps: int, step_s: float, started: threading.Event | None = None):
    def work(progress, cancel):
        for i in range(steps):
            if cancel.is_set():
                raise JobCancelled(f"cancelled at step {i}")
            time.sleep(step_s)
            progress(i + 1, steps)
            if started is not None:
                started.set()
        return f"image of {steps} steps"

    return work


@pytest.fixture(params=["sqlite", "postgres"])
def table(request, tmp_path):
    """Where the shared job table lives: a SQLite file, or a database of a throwaway PostgreSQL cluster."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    url = request.getfixturevalue("postgres_url")
    open_job_store(url)._exec("DELETE FROM render_job")  # one cluster serves the session
    return url


@pytest.fixture
def fronts(table):
    a = JobManager(error_text=str, store=open_job_store(table), encode=str, decode=lambda s: f"decoded: {s}")
    b = JobManager(error_text=str, store=open_job_store(table), encode=str, decode=lambda s: f"decoded: {s}")
    yield a, b
    a.close()
    b.close()


def test_another_front_follows_a_job_to_its_result(fronts):
    a, b = fronts
    started = threading.Event()
    job = a.submit(slow_work(20, 0.02, started))
    assert started.wait(10)
    seen = b.get(job.id)
    assert seen.remote and seen.state == "running" and 1 <= seen.step <= 20 and seen.total == 20
    assert job.done_event.wait(10)
    done = b.get(job.id)
    assert done.state == "done" and done.result == "decoded: image of 20 steps" and done.finished_state


def test_a_cancel_through_another_front_stops_the_job_where_it_runs(fronts):
    a, b = fronts
    started = threading.Event()
    job = a.submit(slow_work(500, 0.01, started))
    assert started.wait(10)
    b.cancel(job.id)
    assert job.done_event.wait(10) and job.state == "cancelled"
    assert b.get(job.id).state == "cancelled"


def test_unknown_and_expired_ids_are_refused_by_every_front(table):
    a = JobManager(error_text=str, store=open_job_store(table), ttl_s=0.2)
    b = JobManager(error_text=str, store=open_job_store(table), ttl_s=0.2)
    try:
        with pytest.raises(NotFoundError, match="unknown or expired job id"):
            b.get("no-such-job")
        job = a.submit(slow_work(1, 0.0))
        assert job.done_event.wait(10) and b.get(job.id).state == "done"
        time.sleep(0.3)
        with pytest.raises(NotFoundError):
            b.get(job.id)
    finally:
        a.close()
        b.close()


def test_a_failed_job_reads_the_same_through_another_front(fronts):
    a, b = fronts

    def broken(progress, cancel):
        raise ValueError("the LoRA does not fit the checkpoint")

    job = a.submit(broken)
    assert job.done_event.wait(10) and job.state == "failed"
    assert b.get(job.id).state == "failed" and "does not fit" in b.get(job.id).error


@pytest.mark.anyio
async def test_get_render_and_cancel_render_through_a_second_mcp_front(settings, runtime, renderer, table):
    """Two servers over one job table and one output folder, as two fronts behind a load balancer."""
    shared = settings.model_copy(update={"job_table": table})
    renderer.step_s = 0.02
    front_a, front_b = create_server(shared, runtime=runtime), create_server(shared, runtime=runtime)
    async with Client(front_a) as a, Client(front_b) as b:
        r = await a.call_tool("render_image", {"prompt": "a red fox", "wait": False})
        job_id = r.structured_content["job_id"]
        got = await b.call_tool("get_render", {"job_id": job_id, "wait_s": 10})
        assert got.structured_content["status"] == "done", got.structured_content
        assert base64.b64decode(got.content[0].data).startswith(b"\x89PNG")  # the preview, rebuilt from the file
        assert Path(got.structured_content["result"]["path"]).parent == shared.output_dir.resolve()

        renderer.step_s = 0.05
        call = (await a.call_tool("select_t2i_api", {"prompt": "x"})).structured_content
        long = await a.call_tool("render_image", {"call": {**call, "steps": 150}, "wait": False})
        long_id = long.structured_content["job_id"]
        for _ in range(100):
            if (await b.call_tool("get_render", {"job_id": long_id})).structured_content["step"] > 0:
                break
        c = await b.call_tool("cancel_render", {"job_id": long_id})
        assert c.structured_content["status"] == "cancelled", c.structured_content
        assert renderer.stopped_at is not None and renderer.stopped_at < 150
