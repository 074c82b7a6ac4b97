"""Progress callback, cancellation within one step, and the per-device lock."""

from __future__ import annotations

import threading

import pytest

from diffagent.render import RenderCancelled
from diffagent.render.renderer import device_lock


def test_progress_reports_every_step(shared_renderer, tiny, tmp_path):
    seen = []
    shared_renderer.render(tiny.call(1, steps=4), output_dir=tmp_path, progress=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cancel_stops_within_one_step_and_frees_the_lock(make_renderer, tiny, tmp_path):
    r = make_renderer()
    cancel = threading.Event()
    steps = []

    def progress(i, n):
        steps.append(i)
        if i == 2:
            cancel.set()

    with pytest.raises(RenderCancelled, match="after step 2"):
        r.render(tiny.call(1, steps=10), output_dir=tmp_path, progress=progress, cancel=cancel)
    assert steps == [1, 2]
    assert not list(tmp_path.glob("*.png"))
    lock = device_lock(r.device)
    assert lock.acquire(blocking=False), "the device lock was not released"
    lock.release()
    # the cached pipeline is still usable after a cancelled run
    assert r.render(tiny.call(1, steps=2), output_dir=tmp_path).cache_hit


def test_cancel_while_waiting_for_the_device(make_renderer, tiny, tmp_path):
    r = make_renderer()
    cancel = threading.Event()
    lock = device_lock(r.device)
    lock.acquire()
    try:
        timer = threading.Timer(0.2, cancel.set)
        timer.start()
        with pytest.raises(RenderCancelled, match="waiting"):
            r.render(tiny.call(1, steps=2), output_dir=tmp_path, cancel=cancel)
    finally:
        lock.release()


def test_concurrent_renders_are_serialised_and_correct(shared_renderer, tiny, tmp_path):
    import numpy as np
    from PIL import Image

    order: list[int] = []  # thread id per denoising step, in the order the steps ran
    results, errors = [], []

    def job(seed):
        try:
            res = shared_renderer.render(
                tiny.call(1, steps=3, seed=seed),
                output_dir=tmp_path,
                progress=lambda i, n: order.append(threading.get_ident()),
            )
            results.append((seed, res))
        except Exception as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=job, args=(s,)) for s in (1, 2, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    runs = [k for k, prev in zip(order, [None, *order]) if k != prev]
    assert len(runs) == 3, "denoising loops of two renders interleaved: the device lock did not hold"
    same = [np.asarray(Image.open(res.path)) for seed, res in results if seed == 1]
    assert np.array_equal(same[0], same[1])


def test_cancel_reaches_a_download_during_weight_resolution(make_renderer, tiny, tmp_path):
    """The render's cancel event is the one downloads check while its weights resolve (issue 14)."""
    import time

    from diffagent.render.weights import DownloadCancelled, _check_cancel

    def downloading(ref):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # stands in for a long download's block loop
            _check_cancel(ref.name)
            time.sleep(0.01)
        raise AssertionError("the download never saw the cancel")

    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(DownloadCancelled):
        make_renderer(resolver=downloading).render(tiny.call(1, steps=2), output_dir=tmp_path, cancel=cancel)
    assert time.monotonic() - t0 < 2
