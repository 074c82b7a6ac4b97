"""Rewards for RRHF candidates: each candidate is a complete ``ApiCall`` (validated and rebuilt as at
inference), scored against what the creator of the example actually used.

Two rewards, chosen by ``rrhf.reward``:

* ``agreement`` -- the **agreement-with-creators reward**, used on CPU-only machines (no images):
      1.0 x checkpoint (1 for the creator's exact version, 0.5 for another version of the same model)
    + 0.5 x LoRA overlap (F1 between the call's LoRAs and the creator's known LoRAs; 1 when both
            are empty)
    + 0.25 x argument accuracy (share of sampler, steps +-5, CFG +-1, size, clip skip that match
            the creator's, as ``bench select`` counts them)
    - 0.5 x each chosen LoRA that validation dropped as incompatible with the checkpoint (mismatch)
    and -1 for a choice that does not rebuild into a valid call.
  It is a proxy for image quality, and every report names it as such (``AGREEMENT_REWARD``).
* ``image`` -- the unified image metric (``diffagent.scoring``) of each candidate rendered with the
  real weights; needs a GPU and the weights, as in the DiffAgent paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from diffagent.apicall import ApiCall
from diffagent.bench.pairs import Target

AGREEMENT_REWARD = (
    "agreement-with-creators reward (checkpoint match, LoRA overlap, argument accuracy; "
    "a CPU proxy, not the image metric)"
)
IMAGE_REWARD = "unified image metric (CLIP score, ImageReward, HPS v2) of rendered candidates"
INVALID = -1.0


class RewardParts(BaseModel):
    total: float
    checkpoint: float = 0.0
    lora_f1: float = 0.0
    args: float = 0.0
    mismatched: int = 0
    invalid: bool = False


def argument_accuracy(call: ApiCall, target: Target) -> float:
    checks = []
    if target.sampler is not None:
        checks.append(call.sampler == target.sampler)
    if target.steps is not None:
        checks.append(abs(call.steps - target.steps) <= 5)
    if target.cfg_scale is not None:
        checks.append(abs(call.cfg_scale - target.cfg_scale) <= 1)
    if target.width and target.height:
        checks.append((call.width, call.height) == (target.width, target.height))
    checks.append(call.clip_skip == (target.clip_skip or 1))
    return sum(checks) / len(checks)


def agreement_reward(
    call: ApiCall | None,
    target: Target,
    target_lora_ids: Sequence[int],
    *,
    checkpoint_model_id: int | None,
    mismatched: int = 0,
) -> RewardParts:
    """See the module docstring. ``mismatched``: chosen LoRAs that validation dropped."""
    if call is None:
        return RewardParts(total=INVALID, invalid=True)
    if call.checkpoint.id == target.checkpoint_version_id:
        ck = 1.0
    elif checkpoint_model_id is not None and checkpoint_model_id == target.checkpoint_model_id:
        ck = 0.5
    else:
        ck = 0.0
    pred, gt = {lo.id for lo in call.loras}, set(target_lora_ids)
    f1 = 1.0 if not pred and not gt else 2 * len(pred & gt) / (len(pred) + len(gt))
    args = argument_accuracy(call, target)
    total = ck + 0.5 * f1 + 0.25 * args - 0.5 * mismatched
    return RewardParts(
        total=round(total, 6), checkpoint=ck, lora_f1=round(f1, 4), args=round(args, 4), mismatched=mismatched
    )


class ImageMetricReward:
    """Renders every valid candidate call and scores the images with the unified metric.

    ``render_fn(call) -> object with .path`` (``diffagent.render.renderer.render``) and
    ``scorer.score(prompt, images) -> [ScoreResult]`` (``diffagent.scoring.unified.UnifiedScorer``).
    An invalid call gets ``INVALID``: the unified metric is in z units (a weighted mean of normalized
    scores), so -1 sits below most rendered images.
    """

    def __init__(self, render_fn: Callable[[ApiCall], Any], scorer):
        self.render_fn = render_fn
        self.scorer = scorer

    @classmethod
    def from_settings(cls, settings, registry) -> ImageMetricReward:
        from diffagent.render.renderer import render
        from diffagent.scoring.unified import UnifiedScorer

        return cls(lambda call: render(call, settings=settings, registry=registry), UnifiedScorer.from_config())

    def __call__(self, request: str, calls: Sequence[ApiCall | None]) -> list[RewardParts]:
        from PIL import Image

        from diffagent.scoring.best_of import scoring_prompt

        images, where = [], []
        for i, call in enumerate(calls):
            if call is None:
                continue
            with Image.open(self.render_fn(call).path) as im:
                images.append(im.convert("RGB"))
            where.append(i)
        out = [RewardParts(total=INVALID, invalid=True) for _ in calls]
        if images:
            for i, score in zip(where, self.scorer.score(scoring_prompt(request), images), strict=True):
                out[i] = RewardParts(total=round(float(score.unified), 6))
        return out
