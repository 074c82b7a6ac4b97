"""Best-of-n at serve time: render several candidate calls, keep the one the unified metric likes best.

``best_of_n`` is the core and knows nothing about the selector or the renderer: it takes the
calls, a ``render_fn(call) -> RenderResult`` and a ``Scorer``. ``render_best_of`` is the serve-time
entry: it expands one selected call into n candidates (``candidate_calls``), renders them with
``diffagent.render.render`` and writes every candidate's scores into the winning PNG.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image, PngImagePlugin
from pydantic import BaseModel, ConfigDict, Field

from diffagent.apicall import MAX_SEED, ApiCall
from diffagent.atomic import write_atomic
from diffagent.errors import MissingDependency, UserInputError
from diffagent.families import compatible
from diffagent.scoring.types import Scorer, ScoreResult

#: PNG text chunk holding the scores of every candidate (beside A1111's ``parameters`` chunk)
PNG_SCORES_KEY = "diffagent_scores"
#: candidate failures that skip the candidate instead of failing the request: weights that are
#: missing or cannot be fetched for an alternative checkpoint. Cancellation is not among them.
SKIPPABLE = (UserInputError, MissingDependency)


class CandidateScore(BaseModel):
    index: int = Field(description="position in the candidate list (0 = the selector's choice)")
    source: Literal["selected", "alternative", "seed", "given"] = "given"
    call: ApiCall
    path: str | None = None
    seconds: float | None = None
    score: ScoreResult | None = None
    error: str | None = Field(None, description="why the candidate could not be rendered")
    chosen: bool = Field(False, description="this candidate won")


class BestOfResult(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    best: Any = Field(description="the winning diffagent.render.RenderResult")
    best_index: int
    prompt: str = Field(description="the prompt the images were scored against")
    candidates: list[CandidateScore]

    @property
    def scores(self) -> list[float]:
        """Unified score of each rendered candidate, in candidate order."""
        return [c.score.unified for c in self.candidates if c.score is not None]


def scoring_prompt(prompt: str) -> str:
    """The words of an A1111 prompt: resource tags, ``(word:1.2)`` weights and brackets removed.

    Scorers compare images with what the user asked for; ``<lora:x:0.8>`` or ``:1.2`` are
    instructions to the renderer, and only add noise tokens to CLIP/BLIP text encoders.
    """
    from diffagent.prompttext import strip_resource_tags

    text = strip_resource_tags(prompt)
    text = re.sub(r":\s*[-+]?\d*\.?\d+\s*(?=[)\]])", "", text)  # (word:1.2) -> (word)
    text = re.sub(r"[()\[\]{}]", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text or prompt.strip()


def candidate_calls(call: ApiCall, n: int) -> list[tuple[str, ApiCall]]:
    """The selected call, then its ranked alternative checkpoints, then other seeds, n in all.

    An alternative keeps the call's settings and the add-ons that can load into it (a Pony LoRA
    is dropped for an SD 1.5 alternative). When the selector offered fewer than n - 1 distinct
    alternatives, the remaining candidates are the selected call with the next seeds.
    """
    if not 1 <= n <= 16:
        raise UserInputError(f"best_of must be between 1 and 16, got {n}")
    base = call.model_dump()
    base["alternatives"] = []
    out: list[tuple[str, ApiCall]] = [("selected", ApiCall.model_validate(base))]
    seen = {call.checkpoint.id}
    for alt in call.alternatives:
        if len(out) >= n:
            break
        ckpt = alt.checkpoint
        if ckpt.id in seen:
            continue
        seen.add(ckpt.id)
        data = dict(base)
        data["checkpoint"] = ckpt.model_dump()
        data["loras"] = [lo for lo in base["loras"] if compatible(ckpt.family, lo["family"])]
        data["embeddings"] = [e for e in base["embeddings"] if compatible(ckpt.family, e["family"])]
        out.append(("alternative", ApiCall.model_validate(data)))
    seed = call.seed
    while len(out) < n:
        seed = (seed + 1) % (MAX_SEED + 1)
        out.append(("seed", ApiCall.model_validate({**base, "seed": seed})))
    return out


def best_of_n(
    calls: Sequence[ApiCall],
    render_fn: Callable[[ApiCall], Any],
    scorer: Scorer,
    prompt: str,
    *,
    sources: Sequence[str] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[Any, list[CandidateScore]]:
    """Render every call, score the images against ``prompt``, return (best RenderResult, all scores).

    Ties go to the earlier call (the selector's ranking). A candidate whose weights are missing
    is recorded with its error and skipped; if none renders, the first error is raised.
    """
    calls = list(calls)
    if not calls:
        raise UserInputError("best_of_n needs at least one call")
    candidates: list[CandidateScore] = []
    rendered: list[tuple[int, Any]] = []
    first_error: Exception | None = None
    for i, call in enumerate(calls):
        if cancel is not None and cancel.is_set():
            from diffagent.render import RenderCancelled

            raise RenderCancelled("render cancelled")
        source = sources[i] if sources else "given"
        try:
            result = render_fn(call)
        except SKIPPABLE as e:
            first_error = first_error or e
            candidates.append(CandidateScore(index=i, source=source, call=call, error=str(e)))
            continue
        candidates.append(
            CandidateScore(index=i, source=source, call=call, path=str(result.path), seconds=result.seconds)
        )
        rendered.append((i, result))
    if not rendered:
        raise first_error  # type: ignore[misc]
    images = []
    for _, result in rendered:
        with Image.open(result.path) as im:
            images.append(im.convert("RGB"))
    scores = scorer.score(prompt, images)
    for (i, _), score in zip(rendered, scores, strict=True):
        candidates[i].score = score
    # highest unified score; on a tie the earlier candidate (the selector's ranking) wins
    k = max(range(len(rendered)), key=lambda j: (scores[j].unified, -rendered[j][0]))
    best_index, best = rendered[k]
    candidates[best_index].chosen = True
    return best, candidates


def write_scores_into_png(path: Path, candidates: list[CandidateScore], best_index: int, prompt: str) -> None:
    """Add a ``diffagent_scores`` text chunk to the PNG, keeping its other chunks (A1111 parameters)."""
    payload = {
        "prompt": prompt,
        "best_index": best_index,
        "candidates": [
            {
                "index": c.index,
                "source": c.source,
                "checkpoint": c.call.checkpoint.name,
                "seed": c.call.seed,
                "error": c.error,
                **({"scores": c.score.model_dump()} if c.score else {}),
            }
            for c in candidates
        ],
    }
    with Image.open(path) as im:
        im.load()
        info = PngImagePlugin.PngInfo()
        for key, value in (im.text or {}).items():
            if key != PNG_SCORES_KEY:
                info.add_text(key, value)
        info.add_text(PNG_SCORES_KEY, json.dumps(payload))
        write_atomic(Path(path), lambda tmp: im.save(tmp, format="PNG", pnginfo=info))


def render_best_of(
    call: ApiCall,
    n: int,
    *,
    prompt: str | None = None,
    settings=None,
    registry=None,
    scorer: Scorer | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    output_dir: Path | None = None,
    render_fn: Callable[..., Any] | None = None,
) -> BestOfResult:
    """Serve-time best-of-n: candidates from ``call`` (see ``candidate_calls``), rendered and scored.

    ``prompt`` is what the user asked for (the selector may have added trigger words and quality
    tags to ``call.prompt``); without it, the call's prompt minus A1111 syntax is used.
    ``progress(step, total)`` counts steps over all candidates.
    """
    if render_fn is None:
        from diffagent.render import render as render_fn
    if scorer is None:
        from diffagent.scoring.config import ScoringConfig
        from diffagent.scoring.unified import UnifiedScorer

        scorer = UnifiedScorer.from_config(ScoringConfig.from_settings(settings))
    pairs = candidate_calls(call, n)
    total = sum(c.steps for _, c in pairs)
    done = 0

    def render_one(c: ApiCall):
        nonlocal done
        offset = done
        on_step = (lambda step, _total: progress(offset + step, total)) if progress else None
        try:
            return render_fn(
                c, settings=settings, registry=registry, progress=on_step, cancel=cancel, output_dir=output_dir
            )
        finally:
            done = offset + c.steps

    score_prompt = (prompt or "").strip() or scoring_prompt(call.prompt)
    best, candidates = best_of_n(
        [c for _, c in pairs], render_one, scorer, score_prompt, sources=[s for s, _ in pairs], cancel=cancel
    )
    best_index = next(c.index for c in candidates if c.chosen)
    write_scores_into_png(Path(best.path), candidates, best_index, score_prompt)
    return BestOfResult(best=best, best_index=best_index, prompt=score_prompt, candidates=candidates)
