"""``diffagent bench images``: does the selected call beat the family's base model on the unified metric?

For every prompt: the selector picks a call (optionally best-of-n), a *baseline* call is made
with the same seed on the base model of the selected family (SD 1.5 or SDXL base) with default
settings, no LoRAs, no embeddings, no negative prompt and the user's prompt as typed; both are
rendered and scored against the user's prompt. The report gives, per dataset (prompt file):

- mean unified score (z units) of selected and baseline, their difference, and the win rate;
- **gain %**: the relative gain on the unified metric mapped to (0, 1) by the normal CDF,
  ``100 * (mean Φ(u_sel) - mean Φ(u_base)) / mean Φ(u_base)``. z-scores can be negative or near
  zero, which makes a ratio of raw means meaningless; Φ(u) reads as the percentile of the image
  among the reference renders and is positive, so a relative gain is well defined. This is the
  figure to compare with the DiffAgent paper's ">40% for SD 1.5 models"; the paper's own
  normalization is not published in enough detail to reproduce exactly;
- per metric: mean raw score of selected and baseline.

On CPU with tiny random models the numbers are meaningless; the plumbing is the real one.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, Field

from diffagent.apicall import ApiCall, ModelRef
from diffagent.atomic import write_atomic, write_text_atomic
from diffagent.errors import NotFoundError, UserInputError
from diffagent.families import ecosystem_of
from diffagent.scoring.best_of import SKIPPABLE, best_of_n, candidate_calls, scoring_prompt
from diffagent.scoring.normalization import ReferenceStats
from diffagent.scoring.types import Scorer, ScoreResult

#: registry slugs of each renderable ecosystem's base checkpoint (diffagent/registry/default_models.toml)
BASELINE_SLUGS = {"sd1": "sd15-base", "sdxl": "sdxl-base-1.0"}
#: the base models' native resolution (ApiCall defaults are SD 1.5's 512x512)
BASELINE_SIZE = {"sd1": 512, "sdxl": 1024}
PROMPT_COLUMNS = ("prompt", "prompts", "text", "caption")


class PromptItem(BaseModel):
    dataset: str
    prompt: str


class PairResult(BaseModel):
    dataset: str
    prompt: str
    selected_call: ApiCall | None = None
    baseline_call: ApiCall | None = None
    selected_path: str | None = None
    baseline_path: str | None = None
    selected: ScoreResult | None = None
    baseline: ScoreResult | None = None
    error: str | None = None


class DatasetSummary(BaseModel):
    dataset: str
    n: int = Field(description="prompts scored (failures excluded)")
    failed: int = 0
    selected_unified: float
    baseline_unified: float
    delta_unified: float = Field(description="mean difference, z units")
    win_rate: float = Field(description="share of prompts where the selected image scores higher")
    gain_pct: float = Field(description="relative gain of mean Φ(unified), percent")
    metrics: dict[str, dict[str, float]] = Field(description="metric -> {selected, baseline} mean raw score")


class BenchReport(BaseModel):
    created: str
    best_of: int
    weights: dict[str, float]
    pairs: list[PairResult]
    datasets: list[DatasetSummary]
    overall: DatasetSummary | None
    seconds: float


# --- prompts ----------------------------------------------------------------------------------


def load_prompts(paths: Iterable[Path], n: int | None = None) -> list[PromptItem]:
    """Prompts from .txt (one a line), .csv (a prompt column), .json or .jsonl files.

    The dataset of a prompt is its record's ``dataset`` field when it has one, else the file's
    stem. ``n`` keeps the first n prompts of each dataset.
    """
    items: list[PromptItem] = []
    for path in paths:
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserInputError(f"prompt file {str(path)!r} does not exist")
        items.extend(_read_prompt_file(path))
    if n is not None:
        if n < 1:
            raise UserInputError(f"--n must be at least 1, got {n}")
        kept: dict[str, int] = {}
        out = []
        for it in items:
            if kept.get(it.dataset, 0) < n:
                kept[it.dataset] = kept.get(it.dataset, 0) + 1
                out.append(it)
        items = out
    if not items:
        raise UserInputError("the prompt files hold no prompts")
    return items


def _record(rec: Any, default: str, where: str) -> PromptItem:
    if isinstance(rec, str):
        return PromptItem(dataset=default, prompt=rec.strip())
    if isinstance(rec, dict):
        lower = {str(k).lower(): v for k, v in rec.items()}
        for col in PROMPT_COLUMNS:
            if isinstance(lower.get(col), str) and lower[col].strip():
                return PromptItem(dataset=str(lower.get("dataset") or default), prompt=lower[col].strip())
    raise UserInputError(f"{where}: expected a prompt string or an object with a 'prompt' field, got {rec!r:.80}")


def _read_prompt_file(path: Path) -> list[PromptItem]:
    stem, suffix = path.stem, path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".txt":
        return [PromptItem(dataset=stem, prompt=line.strip()) for line in text.splitlines() if line.strip()]
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows:
            return []
        cols = {c.lower(): c for c in rows[0]}
        col = next((cols[c] for c in PROMPT_COLUMNS if c in cols), None)
        if col is None:
            raise UserInputError(f"{str(path)!r} has no prompt column (looked for {', '.join(PROMPT_COLUMNS)})")
        dcol = cols.get("dataset")
        return [
            PromptItem(dataset=(r.get(dcol) if dcol else None) or stem, prompt=r[col].strip())
            for r in rows
            if (r.get(col) or "").strip()
        ]
    if suffix == ".jsonl":
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(_record(json.loads(line), stem, f"{path}:{i}"))
                except json.JSONDecodeError as e:
                    raise UserInputError(f"{path}:{i} is not JSON: {e}") from e
        return out
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserInputError(f"{str(path)!r} is not JSON: {e}") from e
        if isinstance(data, dict):  # {"dataset": [prompts...]}
            return [
                _record(r, str(ds), str(path)).model_copy(update={"dataset": str(ds)})
                for ds, rs in data.items()
                for r in rs
            ]
        if isinstance(data, list):
            return [_record(r, stem, str(path)) for r in data]
        raise UserInputError(f"{str(path)!r}: expected a list of prompts or an object of dataset -> prompts")
    raise UserInputError(f"unsupported prompt file {str(path)!r}; use .txt, .csv, .json or .jsonl")


# --- baseline ---------------------------------------------------------------------------------


def baseline_call(selected: ApiCall, base_checkpoint: ModelRef, prompt: str) -> ApiCall:
    """The base model with default settings and the user's prompt; same seed for a paired comparison."""
    size = BASELINE_SIZE.get(ecosystem_of(base_checkpoint.family), 512)
    return ApiCall(checkpoint=base_checkpoint, prompt=prompt, seed=selected.seed, width=size, height=size)


def registry_baselines(registry, overrides: dict[str, int] | None = None) -> Callable[[str], ModelRef]:
    """ecosystem -> base checkpoint: ``overrides`` (version ids), else the curated base models by slug."""
    from diffagent.registry.schema import synthetic_id

    found: dict[str, ModelRef] = {}

    def lookup(eco: str) -> ModelRef:
        if eco in found:
            return found[eco]
        if overrides and eco in overrides:
            ref = registry.model_ref(overrides[eco])
        else:
            slug = BASELINE_SLUGS.get(eco)
            if slug is None:
                raise NotFoundError(
                    f"no baseline model known for the {eco} ecosystem; pass --baseline {eco}=VERSION_ID"
                )
            try:
                ref = registry.model_ref(synthetic_id(slug + "@version"))
            except NotFoundError:
                hits = registry.search(slug.replace("-", " "), types=["checkpoint"], base={eco}, limit=50)
                match = [h.version for h in hits if h.version.slug == slug]
                if not match:
                    raise NotFoundError(
                        f"the registry has no {slug!r} base model for the {eco} baseline; "
                        f"pass --baseline {eco}=VERSION_ID"
                    ) from None
                ref = match[0].ref()
        found[eco] = ref
        return ref

    return lookup


# --- the run ----------------------------------------------------------------------------------


def run(
    items: list[PromptItem],
    *,
    select_fn: Callable[[str], ApiCall],
    render_fn: Callable[[ApiCall], Any],
    scorer: Scorer,
    baseline_fn: Callable[[str], ModelRef],
    best_of: int = 1,
    weights: dict[str, float] | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchReport:
    """Select, render and score the selected and baseline call for every prompt."""
    t0 = time.perf_counter()
    pairs: list[PairResult] = []
    for k, item in enumerate(items, 1):
        pair = PairResult(dataset=item.dataset, prompt=item.prompt)
        score_prompt = scoring_prompt(item.prompt)
        try:
            selected = select_fn(item.prompt)
            pair.selected_call = selected
            pair.baseline_call = baseline_call(
                selected, baseline_fn(ecosystem_of(selected.checkpoint.family)), item.prompt
            )
            if best_of > 1:
                cands = candidate_calls(selected, best_of)
                sel_result, _ = best_of_n([c for _, c in cands], render_fn, scorer, score_prompt)
            else:
                sel_result = render_fn(selected)
            base_result = render_fn(pair.baseline_call)
            pair.selected_call, pair.selected_path = sel_result.call, str(sel_result.path)
            pair.baseline_path = str(base_result.path)
            images = []
            for p in (sel_result.path, base_result.path):
                with Image.open(p) as im:
                    images.append(im.convert("RGB"))
            pair.selected, pair.baseline = scorer.score(score_prompt, images)
        except SKIPPABLE as e:
            pair.error = str(e)
        pairs.append(pair)
        if log:
            status = (
                f"error: {pair.error}"
                if pair.error
                else (f"selected {pair.selected.unified:+.3f} vs baseline {pair.baseline.unified:+.3f}")
            )
            log(f"[{k}/{len(items)}] {item.dataset}: {item.prompt[:60]!r} {status}")
    datasets = list(dict.fromkeys(p.dataset for p in pairs))
    summaries = [s for s in (summarize(d, [p for p in pairs if p.dataset == d]) for d in datasets) if s]
    return BenchReport(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        best_of=best_of,
        weights=dict(weights or {}),
        pairs=pairs,
        datasets=summaries,
        overall=summarize("all", pairs) if len(summaries) > 1 else (summaries[0] if summaries else None),
        seconds=round(time.perf_counter() - t0, 2),
    )


def phi(z: float) -> float:
    """Standard normal CDF: the unified score as a percentile of the reference renders."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def summarize(dataset: str, pairs: list[PairResult]) -> DatasetSummary | None:
    ok = [p for p in pairs if p.selected is not None and p.baseline is not None]
    if not ok:
        return None
    n = len(ok)
    sel = [p.selected.unified for p in ok]
    base = [p.baseline.unified for p in ok]
    base_pct = sum(phi(u) for u in base) / n
    sel_pct = sum(phi(u) for u in sel) / n
    metrics = {
        m: {
            "selected": sum(p.selected.metrics[m].raw for p in ok) / n,
            "baseline": sum(p.baseline.metrics[m].raw for p in ok) / n,
        }
        for m in ok[0].selected.metrics
    }
    return DatasetSummary(
        dataset=dataset,
        n=n,
        failed=len(pairs) - n,
        selected_unified=sum(sel) / n,
        baseline_unified=sum(base) / n,
        delta_unified=(sum(sel) - sum(base)) / n,
        win_rate=sum(s > b for s, b in zip(sel, base, strict=True)) / n,
        gain_pct=100.0 * (sel_pct - base_pct) / base_pct if base_pct > 0 else float("nan"),
        metrics=metrics,
    )


def measured_stats(report: BenchReport, models: dict[str, str] | None = None) -> ReferenceStats:
    """Reference statistics measured on every image of the run (selected and baseline)."""
    samples: dict[str, list[float]] = {}
    for p in report.pairs:
        for s in (p.selected, p.baseline):
            if s is not None:
                for m, v in s.metrics.items():
                    samples.setdefault(m, []).append(v.raw)
    if not samples:
        raise UserInputError("no image was scored; nothing to measure")
    return ReferenceStats.fit(samples, models=models, source=f"diffagent bench images, {report.created}")


# --- output -----------------------------------------------------------------------------------


def markdown_table(report: BenchReport) -> str:
    metric_names = list(report.datasets[0].metrics) if report.datasets else []
    head = ["dataset", "n", "selected", "baseline", "Δ unified (z)", "win rate", "gain %"]
    head += [f"{m} sel / base" for m in metric_names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = list(report.datasets)
    if report.overall is not None and len(report.datasets) > 1:
        rows.append(report.overall)
    for s in rows:
        cells = [
            f"**{s.dataset}**" if s is report.overall and len(report.datasets) > 1 else s.dataset,
            f"{s.n}" + (f" (+{s.failed} failed)" if s.failed else ""),
            f"{s.selected_unified:+.3f}",
            f"{s.baseline_unified:+.3f}",
            f"{s.delta_unified:+.3f}",
            f"{100 * s.win_rate:.0f}%",
            f"{s.gain_pct:+.1f}%",
        ]
        cells += [f"{s.metrics[m]['selected']:.4g} / {s.metrics[m]['baseline']:.4g}" for m in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    failed = sum(1 for p in report.pairs if p.error)
    note = f"\n{failed} prompt(s) failed; see report.json.\n" if failed else "\n"
    return "\n".join(lines) + "\n" + note


def write_plots(report: BenchReport, out_dir: Path) -> list[Path]:
    """gain_per_dataset.png (gain %) and unified_per_dataset.png (selected vs baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not report.datasets:
        return []
    names = [s.dataset for s in report.datasets]
    written = []

    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 3.5))
    gains = [s.gain_pct for s in report.datasets]
    bars = ax.bar(names, gains, color=["tab:green" if g >= 0 else "tab:red" for g in gains])
    for bar, s in zip(bars, report.datasets, strict=True):
        ax.annotate(
            f"{s.gain_pct:+.1f}%\nΔz {s.delta_unified:+.2f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom" if s.gain_pct >= 0 else "top",
            fontsize=8,
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("unified-metric gain over baseline (%)")
    ax.set_title(f"selected vs base model (best of {report.best_of})")
    fig.tight_layout()
    written.append(_save_fig(fig, out_dir / "gain_per_dataset.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 3.5))
    xs = range(len(names))
    w = 0.38
    ax.bar([x - w / 2 for x in xs], [s.selected_unified for s in report.datasets], w, label="selected")
    ax.bar([x + w / 2 for x in xs], [s.baseline_unified for s in report.datasets], w, label="baseline")
    ax.set_xticks(list(xs), names)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("mean unified score (z)")
    ax.legend()
    fig.tight_layout()
    written.append(_save_fig(fig, out_dir / "unified_per_dataset.png"))
    plt.close(fig)
    return written


def _save_fig(fig, path: Path) -> Path:
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def write_report(report: BenchReport, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {
        "json": write_text_atomic(out_dir / "report.json", report.model_dump_json(indent=2)),
        "markdown": write_text_atomic(out_dir / "report.md", markdown_table(report)),
    }
    for p in write_plots(report, out_dir):
        paths[p.stem] = p
    return paths
