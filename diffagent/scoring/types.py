"""The typed results of scoring, defined once: what every scorer returns and best-of/bench consume."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from PIL import Image
from pydantic import BaseModel, Field

#: metric keys, in the order the unified metric lists them
CLIP_SCORE = "clip_score"
IMAGE_REWARD = "image_reward"
HPS_V2 = "hps_v2"
METRICS = (CLIP_SCORE, IMAGE_REWARD, HPS_V2)


class MetricScore(BaseModel):
    """One metric for one image: the scorer's own number and its place on the common scale."""

    raw: float = Field(description="the metric as its authors define it (CLIP score 0-100, ImageReward, HPS cosine)")
    normalized: float = Field(description="z-score against the reference statistics: (raw - mean) / std")
    weight: float = Field(ge=0, description="weight of this metric in the unified mean")


class ScoreResult(BaseModel):
    """All scores of one image for one prompt."""

    metrics: dict[str, MetricScore]
    unified: float = Field(description="weighted mean of the normalized scores (z units; higher is better)")


@runtime_checkable
class MetricScorer(Protocol):
    """A single preference metric. ``score`` returns one raw value per image, in order."""

    metric: str

    def score(self, prompt: str, images: list[Image.Image]) -> list[float]: ...


@runtime_checkable
class Scorer(Protocol):
    """The scorer interface the rest of diffagent uses (best-of-n, bench, RRHF rewards)."""

    def score(self, prompt: str, images: list[Image.Image]) -> list[ScoreResult]: ...
