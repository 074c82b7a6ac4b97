"""Wall time of a cold ``diffagent select`` (a fresh process each run, as a user's shell runs it).

    python benchmarks/cold_start.py [--runs 5] [--registry registry.db] [--prompt "..."]

Prints each run, the median, the machine's load average, and which heavy libraries the request path
imported (torch, transformers, sentence-transformers and scikit-learn should not be among them on the
default registry: the query is embedded by numpy, and a registry without sample images needs no
TF-IDF index).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROBE = """
import sys
from diffagent.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers", "sklearn") if m in sys.modules)
print("HEAVY " + ",".join(heavy), file=sys.stderr)
"""


def run_once(prompt: str, registry: str | None) -> tuple[float, str]:
    env = {**os.environ, **({"DIFFAGENT_REGISTRY": registry} if registry else {})}
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "select", prompt, "--json"], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - t
    if out.returncode:
        sys.exit(f"diffagent select failed:\n{out.stderr[-2000:]}")
    json.loads(out.stdout)  # the answer is there and is JSON
    heavy = next((line[6:] for line in out.stderr.splitlines() if line.startswith("HEAVY ")), "?")
    return wall, heavy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--registry", default=None, help="default: DIFFAGENT_REGISTRY or the checkout's registry.db")
    ap.add_argument("--prompt", default="a watercolor fox in a misty forest")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    walls, heavy = [], set()
    for i in range(args.runs):
        wall, imported = run_once(args.prompt, args.registry)
        walls.append(wall)
        heavy.add(imported or "none")
        print(f"run {i + 1}: {wall:.2f} s")
    print(
        json.dumps(
            {
                "runs": args.runs,
                "median_s": round(statistics.median(walls), 2),
                "min_s": round(min(walls), 2),
                "max_s": round(max(walls), 2),
                "heavy_imports": sorted(heavy),
                "load_avg_before": round(load, 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
