"""Latency of ``select_t2i_api`` (warm, in-process) on two registries, and their ratio.

    python benchmarks/select_latency.py --prompts ../shared/data/prompts/drawbench/DrawBench.csv \
        --registry registry.db --large big.db --n 50 [--selector llm|retrieval] [--design listed|direct]

Prints p50/p95 per registry, the per-stage medians (retrieve, LLM prompt evaluation, decoding, rebuild),
the large/default p50 ratio (goal <= 1.2) and the machine's load average, since llama.cpp's threads
slow down sharply when other processes compete for the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from diffagent.agent.selector import Selector
from diffagent.bench.cli import _read_prompts
from diffagent.registry.store import Registry
from diffagent.settings import Settings
from diffagent.tools import SelectOptions


def measure(db: Path, prompts: list[str], settings: Settings) -> dict:
    reg = Registry.open(db, allow_nsfw=settings.allow_nsfw)
    sel = Selector(reg, settings.model_copy(update={"registry": db}))
    t = time.perf_counter()
    sel.warm()
    warm = time.perf_counter() - t
    totals, stages = [], {}
    for i, prompt in enumerate(prompts):
        s = sel.select_many(prompt, SelectOptions(seed=i, n_candidates=3))
        totals.append(s.timings["total"])
        for k, v in s.timings.items():
            stages.setdefault(k, []).append(v)
    totals.sort()
    return {
        "registry": str(db),
        "n": len(totals),
        "warm_s": round(warm, 2),
        "p50_ms": round(1000 * statistics.median(totals), 1),
        "p95_ms": round(1000 * totals[min(len(totals) - 1, int(0.95 * len(totals)))], 1),
        "stage_p50_ms": {k: round(1000 * statistics.median(v), 1) for k, v in stages.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--registry", type=Path, default=Path("registry.db"))
    ap.add_argument("--large", type=Path, default=None, help="a second, larger registry to compare")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--selector", default="llm", choices=["llm", "retrieval"])
    ap.add_argument("--design", default="listed", choices=["listed", "direct"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    prompts = _read_prompts(args.prompts)[: args.n]
    settings = Settings(selector=args.selector, llm_design=args.design, llm_threads=args.threads, allow_nsfw=True)
    out = {
        "load_before": os.getloadavg(),
        "selector": args.selector,
        "design": args.design,
        "default": measure(args.registry, prompts, settings),
    }
    if args.large:
        out["large"] = measure(args.large, prompts, settings)
        out["large_over_default_p50"] = round(out["large"]["p50_ms"] / out["default"]["p50_ms"], 2)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
