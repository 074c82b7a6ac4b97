"""The Ray Serve render backend on a local Ray instance started here (loopback, 2 CPUs, no dashboard): two replicas
with tiny pipelines, routing by checkpoint, progress, cancellation, a killed replica, errors as the caller's, and the
job table running renders on both replicas at once."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.serve", reason="the Ray Serve backend needs the 'ray' extra")
pytestmark = pytest.mark.slow

from diffagent.errors import NotFoundError  # noqa: E402
from diffagent.render.renderer import RenderCancelled  # noqa: E402
from diffagent.render.weights import ResolvedWeights, TableResolver  # noqa: E402
from diffagent.settings import Settings  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tiny, tmp_path_factory):
    import ray
    from ray import serve

    from diffagent.render.ray_serve import RayRenderer

    data = tmp_path_factory.mktemp("ray-render")
    table = {
        vid: ResolvedWeights(path=path, sha256=f"{vid:064x}", family=family, type=kind, name=name)
        for vid, (path, family, kind, name) in tiny.files.items()
    }
    settings = Settings(
        data_dir=data,
        device="cpu",
        allow_downloads=False,
        registry=data / "none.db",
        pipeline_cache_gb=1.0,
        render_backend="ray",
        ray_replicas=2,
        ray_max_replicas=2,
        ray_cpus_per_replica=0.5,
    )
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _node_ip_address="127.0.0.1"
    )
    try:
        renderer = RayRenderer(settings, resolver=TableResolver(table), skeletons=tiny.skeletons)
        yield renderer
        renderer.close()
    finally:
        serve.shutdown()
        ray.shutdown()


def test_replicas_ask_for_a_gpu_where_the_cluster_has_one():
    from diffagent.render.ray_serve import gpus_per_replica

    assert gpus_per_replica(None, {"CPU": 16.0, "GPU": 4.0}) == 1.0
    assert gpus_per_replica(None, {"CPU": 2.0}) == 0.0
    assert gpus_per_replica(0.5, {"CPU": 16.0, "GPU": 4.0}) == 0.5  # a fraction shares one
    assert gpus_per_replica(0.0, {"GPU": 1.0}) == 0.0


def pixels(result) -> np.ndarray:
    return np.asarray(Image.open(result.path), dtype=np.int16)


#: a replica reports the checkpoints it holds to the routers every few hundred milliseconds (Serve's multiplexing)
REPORT_S = 2.0


def test_a_replica_renders_what_the_local_renderer_renders(cluster, tiny, shared_renderer, tmp_path):
    call = tiny.call(1, steps=2)
    remote = cluster.render(call, output_dir=tmp_path)
    assert remote.worker.startswith("ray:") and remote.path.parent == tmp_path
    assert np.array_equal(pixels(remote), pixels(shared_renderer.render(call, output_dir=tmp_path)))


def test_a_checkpoint_goes_to_the_replica_that_holds_it(cluster, tiny):
    """Once a replica has reported what it loaded, every request for that checkpoint goes there (random routing
    would put six in a row on one of two replicas once in 32 runs)."""
    sd15, sdxl = tiny.call(1, steps=1), tiny.call(10, steps=1)
    first = cluster.render(sd15).worker
    time.sleep(REPORT_S)
    assert [cluster.render(sd15).worker for _ in range(6)] == [first] * 6
    other = cluster.render(sdxl).worker
    time.sleep(REPORT_S)
    routed = [(c.checkpoint.id, cluster.render(c).worker) for c in (sd15, sdxl) * 3]
    assert routed == [(1, first), (10, other)] * 3


def test_progress_reaches_the_caller_and_cancel_stops_the_replica(cluster, tiny):
    steps: list[tuple[int, int]] = []
    assert cluster.render(tiny.call(1, steps=3), progress=lambda s, t: steps.append((s, t))).path.exists()
    assert steps == [(1, 3), (2, 3), (3, 3)]
    cancel = threading.Event()

    seen: list[int] = []

    def on_progress(step, total):
        seen.append(step)
        cancel.set()  # cancel after the first step of many

    t0 = time.perf_counter()
    with pytest.raises(RenderCancelled):
        cluster.render(tiny.call(1, steps=150, width=128, height=128), progress=on_progress, cancel=cancel)
    # stopped within a few steps of the cancel, however busy the box (the time bound only guards against a hang)
    assert seen and max(seen) < 30, seen
    assert time.perf_counter() - t0 < 120
    assert cluster.render(tiny.call(1, steps=1)).path.exists()  # the replica is free again


def test_the_renderers_errors_reach_the_caller_as_they_are(cluster, tiny):
    missing = tiny.call(1).model_copy(update={"checkpoint": tiny.ref(1).model_copy(update={"id": 999})})
    with pytest.raises(NotFoundError, match=r"no weights for .* \(version 999\)") as err:
        cluster.render(missing)
    assert "Traceback" not in str(err.value)


def test_the_job_table_runs_renders_on_both_replicas_at_once(cluster, tiny):
    from diffagent.server.jobs import JobManager

    jobs = JobManager(error_text=str, workers=2)
    try:
        submitted = [
            jobs.submit(lambda progress, cancel, c=c: cluster.render(c, progress=progress, cancel=cancel))
            for c in (tiny.call(1, steps=4), tiny.call(10, steps=4), tiny.call(1, steps=4, seed=3))
        ]
        for job in submitted:
            assert job.done_event.wait(120), job.state
        assert [j.state for j in submitted] == ["done"] * 3
        assert all(j.events and j.events[-1].step == 4 for j in submitted)  # progress events, as get_render shows
    finally:
        jobs.close()


def test_a_replica_killed_mid_render_fails_the_job_with_a_clear_error(cluster, tiny):
    from diffagent.render.ray_serve import RenderFailed

    killed: list[int] = []

    def kill(worker: str) -> None:  # the replica that took the job, as soon as it reports its first step
        killed.append(int(worker.rsplit(":", 1)[1]))
        os.kill(killed[0], signal.SIGKILL)

    t0 = time.perf_counter()
    with pytest.raises(RenderFailed, match="stopped before it finished.*render_image again"):
        cluster.render(tiny.call(1, steps=150, width=128, height=128), on_worker=kill)
    assert killed and time.perf_counter() - t0 < 60  # an error, not a hung job
    deadline = time.monotonic() + 120  # Serve replaces the replica; renders go on
    while True:
        try:
            assert cluster.render(tiny.call(1, steps=1)).worker != f"ray:{os.uname().nodename}:{killed[0]}"
            break
        except RenderFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
