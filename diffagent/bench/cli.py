"""``diffagent bench ...``: build (pairs), select (agreement with creators), latency, prompts, images."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import get_args

from diffagent.agent.options import Base
from diffagent.cli import add_command, add_group
from diffagent.registry.location import display
from diffagent.settings import Settings


def cmd_build(args, settings: Settings) -> int:
    from diffagent.bench.pairs import build_pairs

    counts = build_pairs(args.rows, args.out, sfw_only=not args.include_nsfw)
    print(
        f"wrote {sum(counts.values())} pairs to {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    return 0


def _sample(pairs: list, limit: int | None, seed: int) -> list:
    if limit and len(pairs) > limit:
        rng = random.Random(seed)
        pairs = rng.sample(pairs, limit)
    return pairs


def cmd_select(args, settings: Settings) -> int:
    from diffagent.bench.pairs import load_pairs
    from diffagent.bench.select import compare, markdown_table, plot
    from diffagent.registry.store import Registry

    registry = Registry.from_settings(settings)
    pairs = _sample(list(load_pairs(args.pairs, splits={args.split})), args.limit, args.seed)
    if not pairs:
        print(f"no {args.split} pairs in {args.pairs}", file=sys.stderr)
        return 2
    results = compare(
        args.methods,
        pairs,
        registry,
        settings,
        max_loras=args.max_loras,
        train_pairs=args.train_pairs or args.pairs,
        progress=not args.json,
    )
    report = {
        "pairs": str(args.pairs),
        "split": args.split,
        "n": len(pairs),
        "registry": display(settings.registry),
        "selector_model": settings.llm_model and str(settings.llm_model),
        "lora": settings.llm_lora and str(settings.llm_lora),
        "ranker": settings.ranker,
        "results": results,
    }
    if args.plot:
        plot(results, args.plot)
    if args.json:
        print(json.dumps(report))
    else:
        print(markdown_table(results))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


def _read_prompts(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        items = data.values() if isinstance(data, dict) else data
        out = []
        for it in items:
            out.append(it if isinstance(it, str) else (it.get("prompt") or it.get("text") or ""))
        return [p for p in out if p]
    if path.suffix == ".csv":
        import csv

        rows = list(csv.DictReader(text.splitlines()))
        key = next((k for k in rows[0] if k.lower() in ("prompt", "prompts", "text")), list(rows[0])[0])
        return [r[key] for r in rows if r.get(key)]
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def cmd_prompts(args, settings: Settings) -> int:
    """Natural-language prompt sets (no ground truth): validity, hallucination, latency, diversity."""
    from collections import Counter

    from diffagent.tools import SelectOptions, get_runtime

    selector = get_runtime(settings).selector
    selector.warm()
    registry = selector.registry
    rows = {}
    for path in args.prompts:
        prompts = _read_prompts(path)[: args.n]
        lat, chosen, valid, halluc = [], Counter(), 0, 0
        for i, prompt in enumerate(prompts):
            t = time.perf_counter()
            try:
                call = selector.select(prompt, SelectOptions(seed=i, n_candidates=1))
            except Exception as e:  # counted, reported
                print(f"  invalid: {prompt[:60]!r}: {e}", file=sys.stderr)
                continue
            lat.append(time.perf_counter() - t)
            valid += 1
            ids = [call.checkpoint.id, *(lo.id for lo in call.loras), *(e.id for e in call.embeddings)]
            halluc += len(ids) - len(registry.versions(ids))
            chosen[call.checkpoint.name] += 1
        lat.sort()
        rows[path.name] = {
            "prompts": len(prompts),
            "valid": valid,
            "hallucinated_ids": halluc,
            "distinct_checkpoints": len(chosen),
            "top_checkpoint_share": round(chosen.most_common(1)[0][1] / valid, 3) if valid else None,
            "p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
            "p95_ms": round(1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1) if lat else None,
        }
    if args.json:
        print(json.dumps(rows))
    else:
        cols = [
            "prompts",
            "valid",
            "hallucinated_ids",
            "distinct_checkpoints",
            "top_checkpoint_share",
            "p50_ms",
            "p95_ms",
        ]
        print("| set | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
        for name, r in rows.items():
            print(f"| {name} | " + " | ".join(str(r[c]) for c in cols) + " |")
    return 0


def _default_prompts_root() -> Path:
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "prompts"


def cmd_fit(args, settings: Settings) -> int:
    """Natural-request fit: wrong-kind rate, mean fit, harmful-LoRA rate (``bench/fit.py``)."""
    from diffagent.agent.options import SelectOptions
    from diffagent.agent.selector import Selector
    from diffagent.bench.fit import evaluate_fit, load_fit_set, load_model_labels, markdown_table
    from diffagent.registry.store import Registry

    items = load_fit_set(args.prompts_root or _default_prompts_root(), args.split)
    registry = Registry.from_settings(settings)
    selector = Selector(registry, settings)
    selector.warm()
    options = SelectOptions(base=args.base, max_loras=args.max_loras, n_candidates=1, seed=0)
    t0 = time.perf_counter()
    labels = load_model_labels(args.model_labels) if args.model_labels else {}
    scores = evaluate_fit(items, lambda p: selector.select(p, options), registry, labels)
    row = scores.row() | {"wall_s": round(time.perf_counter() - t0, 1)}
    name = f"{display(settings.registry).rsplit('/', 1)[-1]} / {settings.selector} / {args.split}"
    report = {
        "registry": display(settings.registry),
        "selector": settings.selector,
        "split": args.split,
        "base": args.base,
        "results": {name: row},
        "failures": scores.failures,
    }
    from diffagent.atomic import write_atomic

    if args.out:
        text = json.dumps(report, indent=2)
        write_atomic(args.out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    if args.to_judge:
        from diffagent.bench.fit import judge_input

        lines = "".join(json.dumps(judge_input(info), ensure_ascii=False) + "\n" for info in scores.to_judge.values())
        write_atomic(args.to_judge, lambda tmp: tmp.write_text(lines, encoding="utf-8"))
        print(f"{len(scores.to_judge)} chosen models without a judged label -> {args.to_judge}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    else:
        print(markdown_table({name: row}))
        print("chosen kinds: " + ", ".join(f"{k} {v}" for k, v in row["chosen_kinds"].items()))
        for f in scores.failures[: args.show]:
            print(f"- {f}")
    return 0


def register(subparsers) -> None:
    bench = add_group(subparsers, "bench", "benchmarks: selector agreement with creators, latency, images")

    p = add_command(bench, "build", help="Civitai image rows -> instruction-to-API pairs with page-level splits")
    p.add_argument("rows", type=Path, help="image_meta rows (.jsonl or .jsonl.gz)")
    p.add_argument("--out", type=Path, required=True, help="pairs file (.jsonl or .jsonl.gz)")
    p.add_argument("--include-nsfw", action="store_true", help="keep rows whose image is flagged NSFW")
    p.set_defaults(func=cmd_build)

    p = add_command(bench, "select", help="checkpoint/LoRA/argument agreement with creators, per method")
    p.add_argument("--pairs", type=Path, required=True, help="built pairs or raw image_meta rows")
    p.add_argument("--train-pairs", type=Path, default=None, help="pairs for the kNN baseline (default: --pairs)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--limit", type=int, default=500, help="evaluate a seeded random sample of this many pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-loras", type=int, default=2)
    p.add_argument(
        "--methods",
        nargs="+",
        default=["popularity", "knn", "retrieval", "llm"],
        choices=["popularity", "knn", "retrieval", "llm"],
    )
    p.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_select)

    p = add_command(bench, "fit", help="natural requests: right kind of model, no LoRA nobody asked for")
    p.add_argument(
        "--split",
        default="heldout",
        choices=["dev", "heldout", "all"],
        help="labelled third kept aside (heldout, never tuned on), the rest (dev), or all",
    )
    p.add_argument(
        "--prompts-root",
        type=Path,
        default=None,
        help="the shared prompt sets folder (default: ../shared/data/prompts beside the checkout)",
    )
    p.add_argument("--base", default="any", choices=list(get_args(Base)))
    p.add_argument("--max-loras", type=int, default=2)
    p.add_argument(
        "--model-labels",
        type=Path,
        default=None,
        help="judges' labels of registry models (JSONL by version id); default: the registry's own",
    )
    p.add_argument(
        "--to-judge",
        type=Path,
        default=None,
        help="write the chosen models that no judge labelled here, one judge-input line each "
        "(docs/fit-judging.md, part 2; the pages' text, so keep it outside the repo)",
    )
    p.add_argument("--show", type=int, default=0, help="print this many misfits")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report (with every misfit) here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fit)

    p = add_command(bench, "prompts", help="natural-language prompt sets: validity, hallucination, latency")
    p.add_argument("prompts", type=Path, nargs="+", help=".txt (one per line), .csv, .json files")
    p.add_argument("--n", type=int, default=50, help="first N prompts of each file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prompts)

    try:
        from diffagent.scoring.cli import register_bench
    except ImportError:  # the scoring extra is optional
        return
    register_bench(bench)
