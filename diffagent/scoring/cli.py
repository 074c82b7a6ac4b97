"""CLI: ``diffagent score PROMPT IMAGE...`` and ``diffagent bench images`` (via ``register_bench``)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, get_args

from diffagent.agent.options import Base
from diffagent.errors import UserInputError
from diffagent.settings import Settings


def _add(subparsers, name: str, **kw) -> argparse.ArgumentParser:
    from diffagent.cli import add_command

    return add_command(subparsers, name, **kw)


def _scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="METRIC=W",
        help="metric weight in the unified mean (clip_score, image_reward, hps_v2); 0 skips the metric",
    )
    p.add_argument("--reference-stats", type=Path, default=None, help="normalization statistics JSON")
    p.add_argument("--device", default=None, help="scoring device (default: the settings' device)")


def register(subparsers) -> None:
    p = _add(subparsers, "score", help="score images for a prompt (CLIP score, ImageReward, HPS v2, unified)")
    p.add_argument("prompt")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _scoring_args(p)
    p.set_defaults(func=cmd_score)


def register_bench(bench_subparsers) -> None:
    p = _add(
        bench_subparsers,
        "images",
        help="selected calls vs the base model on the unified metric, per dataset",
        description="Render the selected call and a baseline (the family's base model, default settings) "
        "for each prompt, score both, and report the unified-metric gain per dataset (table + plots).",
    )
    p.add_argument(
        "--prompts",
        type=Path,
        action="append",
        required=True,
        help="prompt file (.txt, .csv, .json, .jsonl); repeat for several datasets",
    )
    p.add_argument("--n", type=int, default=None, help="first N prompts of each dataset")
    p.add_argument("--best-of", type=int, default=1, help="render the top-k candidates and keep the best")
    p.add_argument("--base", default="any", choices=list(get_args(Base)), help="restrict the selector")
    p.add_argument("--seed", type=int, default=None, help="image seed for every prompt (default: selector's)")
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="ECO=VERSION_ID",
        help="baseline checkpoint per ecosystem, e.g. sd1=123 (default: the curated base models)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: DATA_DIR/bench/images-<time>)")
    p.add_argument(
        "--save-reference-stats",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write normalization statistics measured on every rendered image",
    )
    _scoring_args(p)
    p.set_defaults(func=cmd_bench_images)


def parse_weights(items: list[str]) -> dict[str, float] | None:
    if not items:
        return None
    from diffagent.scoring.config import default_weights

    weights = default_weights()
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in weights:
            raise UserInputError(f"--weight {item!r}: write METRIC=W with METRIC one of {', '.join(weights)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise UserInputError(f"--weight {item!r}: {value!r} is not a number") from None
    return weights


def scoring_config(args: argparse.Namespace, settings: Settings):
    from diffagent.scoring.config import ScoringConfig

    over: dict[str, Any] = {}
    weights = parse_weights(getattr(args, "weight", []))
    if weights is not None:
        over["weights"] = weights
    if getattr(args, "reference_stats", None) is not None:
        over["reference_stats"] = args.reference_stats
    if getattr(args, "device", None):
        over["device"] = args.device
    return ScoringConfig.from_settings(settings, **over)


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from PIL import Image, UnidentifiedImageError

    from diffagent.scoring.unified import UnifiedScorer

    images = []
    for path in args.images:
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except (FileNotFoundError, UnidentifiedImageError) as e:
            raise UserInputError(f"cannot read image {str(path)!r}: {e}") from e
    results = UnifiedScorer.from_config(scoring_config(args, settings)).score(args.prompt, images)
    if args.json:
        print(
            json.dumps(
                [{"image": str(p), **r.model_dump()} for p, r in zip(args.images, results, strict=True)], indent=2
            )
        )
        return 0
    metrics = list(results[0].metrics) if results else []
    print("| image | " + " | ".join(metrics) + " | unified |")
    print("|---|" + "---|" * (len(metrics) + 1))
    for path, r in zip(args.images, results, strict=True):
        cells = [f"{r.metrics[m].raw:.4g} ({r.metrics[m].normalized:+.2f})" for m in metrics]
        print(f"| {path} | " + " | ".join(cells) + f" | {r.unified:+.3f} |")
    return 0


@dataclass
class BenchDeps:
    """What ``bench images`` calls; tests inject tiny ones."""

    select_fn: Any
    render_fn: Any
    scorer: Any
    baseline_fn: Any


def parse_baselines(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        eco, sep, vid = item.partition("=")
        if not sep or eco not in ("sd1", "sdxl") or not vid.isdigit():
            raise UserInputError(f"--baseline {item!r}: write ECO=VERSION_ID with ECO sd1 or sdxl, e.g. sd1=4201")
        out[eco] = int(vid)
    return out


def default_bench_deps(args: argparse.Namespace, settings: Settings, image_dir: Path) -> BenchDeps:
    from diffagent.bench.images import registry_baselines
    from diffagent.render import render
    from diffagent.scoring.unified import UnifiedScorer
    from diffagent.tools import SelectOptions, get_runtime, select_t2i_api

    rt = get_runtime(settings)
    options = SelectOptions(base=args.base, seed=args.seed, n_candidates=max(3, args.best_of))
    return BenchDeps(
        select_fn=lambda prompt: select_t2i_api(prompt, options, runtime=rt),
        render_fn=functools.partial(render, settings=settings, registry=rt.registry, output_dir=image_dir),
        scorer=UnifiedScorer.from_config(scoring_config(args, settings)),
        baseline_fn=registry_baselines(rt.registry, parse_baselines(args.baseline)),
    )


def cmd_bench_images(args: argparse.Namespace, settings: Settings, deps: BenchDeps | None = None) -> int:
    from diffagent.bench import images as bench

    if not 1 <= args.best_of <= 16:
        raise UserInputError(f"--best-of must be between 1 and 16, got {args.best_of}")
    items = bench.load_prompts(args.prompts, args.n)
    out = args.out or settings.data_dir / "bench" / f"images-{datetime.now():%Y%m%d-%H%M%S}"
    deps = deps or default_bench_deps(args, settings, out / "images")
    report = bench.run(
        items,
        select_fn=deps.select_fn,
        render_fn=deps.render_fn,
        scorer=deps.scorer,
        baseline_fn=deps.baseline_fn,
        best_of=args.best_of,
        weights=getattr(deps.scorer, "weights", None),
        log=lambda line: print(line, file=sys.stderr),
    )
    paths = bench.write_report(report, out)
    print(bench.markdown_table(report))
    if args.save_reference_stats is not None and report.datasets:
        stats = bench.measured_stats(report)
        print(f"reference statistics: {stats.save(args.save_reference_stats)}", file=sys.stderr)
    for kind, path in paths.items():
        print(f"{kind}: {path}", file=sys.stderr)
    return 0 if report.datasets else 1
