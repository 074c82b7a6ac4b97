"""The Ray Serve render backend against the local renderer, with tiny random pipelines on this machine.

Reports, each a median over ``--runs`` runs:

- **latency** of one render at a time (warm): local, and through one Serve replica; their ratio is the Ray path's
  overhead (handle call, streaming progress, result pickling);
- **throughput** (jobs/s) of ``--jobs`` renders submitted at once through the MCP job table (one worker thread per
  replica) with 1 and with 2 replicas, and the ratio;
- **routing hit rate**: with 2 replicas and two checkpoints requested alternately, the share of renders that found
  their checkpoint already loaded in the replica they reached (Serve's multiplexing keyed by checkpoint id).

    OMP_NUM_THREADS=1 python benchmarks/ray_render.py            # about 3 minutes on two cores
    python benchmarks/ray_render.py --json out.json

On two cores each replica gets one; the tiny pipelines make the renders short, so the overhead ratio is an upper
bound of what a real model (seconds a render) sees.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_size import tiny_models  # noqa: E402  (the render tests' tiny model builders, loaded by path)


def build(root: Path):
    """Two tiny checkpoints (SD 1.5, SDXL) as folders, their table resolver and calls."""
    from diffagent.apicall import ApiCall, ModelRef
    from diffagent.families import Family
    from diffagent.render.weights import ResolvedWeights, TableResolver

    tm = tiny_models()
    tm.build_sd15(root / "sd15")
    tm.build_sdxl(root / "sdxl")
    table = {
        1: ResolvedWeights(path=root / "sd15", family=Family.SD1, type="checkpoint", name="tiny-sd15"),
        2: ResolvedWeights(path=root / "sdxl", family=Family.SDXL, type="checkpoint", name="tiny-sdxl"),
    }

    def call(vid: int, seed: int = 1, steps: int = 8) -> ApiCall:
        w = table[vid]
        return ApiCall(
            checkpoint=ModelRef(id=vid, air=f"bench:{vid}", name=w.name, family=w.family),
            prompt="a lighthouse on a cliff",
            sampler="Euler",
            steps=steps,
            width=64,
            height=64,
            seed=seed,
        )

    return TableResolver(table), call


def latency(renderer, call, n: int) -> float:
    renderer.render(call(1))  # warm
    times = []
    for i in range(n):
        t = time.perf_counter()
        renderer.render(call(1, seed=i))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def throughput(renderer, call, jobs: int, workers: int) -> float:
    from diffagent.server.jobs import JobManager

    manager = JobManager(error_text=str, workers=workers, max_pending=jobs)
    try:
        t = time.perf_counter()
        submitted = [
            manager.submit(
                lambda progress, cancel, c=call(1 + i % 2, seed=i): renderer.render(c, progress=progress, cancel=cancel)
            )
            for i in range(jobs)
        ]
        for job in submitted:
            job.done_event.wait(600)
        bad = [j.error for j in submitted if j.state != "done"]
        if bad:
            raise RuntimeError(f"jobs failed: {bad[:3]}")
        return jobs / (time.perf_counter() - t)
    finally:
        manager.close()


def routing(renderer, call, n: int) -> float:
    for vid in (1, 2):
        renderer.render(call(vid))
    time.sleep(2.0)  # replicas report what they hold every few hundred milliseconds
    hits = [renderer.render(call(1 + i % 2, seed=i)).cache_hit for i in range(n)]
    return sum(hits) / len(hits)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import ray
    from ray import serve

    from diffagent.render.ray_serve import RayRenderer
    from diffagent.render.renderer import Renderer
    from diffagent.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="diffagent-ray-bench-"))
    resolver, call = build(tmp / "models")
    base = dict(
        data_dir=tmp / "data", device="cpu", allow_downloads=False, registry=tmp / "none.db", pipeline_cache_gb=1.0
    )
    local = Renderer(Settings(**base), resolver=resolver)
    rows: dict[str, list[float]] = {"local_latency_s": [], "local_jobs_s": []}
    for _ in range(args.runs):
        rows["local_latency_s"].append(latency(local, call, 6))
        rows["local_jobs_s"].append(throughput(local, call, args.jobs, workers=1))
    local.close()

    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    try:
        for replicas in (1, 2):
            settings = Settings(
                **base,
                render_backend="ray",
                ray_replicas=replicas,
                ray_max_replicas=replicas,
                ray_cpus_per_replica=min(1.0, (os.cpu_count() or 2) / (replicas + 1)),
            )
            remote = RayRenderer(settings, resolver=resolver)
            for _ in range(args.runs):
                if replicas == 1:
                    rows.setdefault("ray1_latency_s", []).append(latency(remote, call, 6))
                rows.setdefault(f"ray{replicas}_jobs_s", []).append(throughput(remote, call, args.jobs, replicas))
                if replicas == 2:
                    rows.setdefault("ray2_routing_hit_rate", []).append(routing(remote, call, 12))
            remote.close()
    finally:
        serve.shutdown()
        ray.shutdown()

    med = {k: round(statistics.median(v), 4) for k, v in rows.items()}
    report = {
        **med,
        "ray_latency_overhead_ratio": round(med["ray1_latency_s"] / med["local_latency_s"], 3),
        "ray_2_vs_1_replica_jobs_ratio": round(med["ray2_jobs_s"] / med["ray1_jobs_s"], 3),
        "ray1_vs_local_jobs_ratio": round(med["ray1_jobs_s"] / med["local_jobs_s"], 3),
        "runs": args.runs,
        "jobs": args.jobs,
        "cpus": os.cpu_count(),
        "all": rows,
    }
    for k, v in report.items():
        if k != "all":
            print(f"{k:32s} {v}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
