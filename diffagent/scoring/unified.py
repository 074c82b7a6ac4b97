"""The unified human-preference metric: CLIP score, ImageReward and HPS v2, normalized and averaged.

It is both diffagent's evaluation metric and the reward of the RRHF training stage (as in the
DiffAgent paper). See ``normalization`` for the scale and ``config`` for weight locations.
"""

from __future__ import annotations

from collections.abc import Mapping

from PIL import Image

from diffagent.errors import UserInputError
from diffagent.scoring.config import ScoringConfig
from diffagent.scoring.normalization import ReferenceStats, unified_mean, validate_weights
from diffagent.scoring.types import CLIP_SCORE, HPS_V2, IMAGE_REWARD, MetricScore, MetricScorer, ScoreResult


def metric_scorer(metric: str, cfg: ScoringConfig) -> MetricScorer:
    if metric == CLIP_SCORE:
        from diffagent.scoring.clip import ClipScorer

        return ClipScorer.from_config(cfg)
    if metric == IMAGE_REWARD:
        from diffagent.scoring.imagereward import ImageRewardScorer

        return ImageRewardScorer.from_config(cfg)
    if metric == HPS_V2:
        from diffagent.scoring.hps import HpsV2Scorer

        return HpsV2Scorer.from_config(cfg)
    raise UserInputError(f"unknown metric {metric!r}; known metrics: {CLIP_SCORE}, {IMAGE_REWARD}, {HPS_V2}")


class UnifiedScorer:
    """``score(prompt, images) -> [ScoreResult]``: raw and normalized per metric, plus the unified mean.

    Only metrics with a positive weight are computed (a weight of 0 skips loading that model).
    """

    def __init__(
        self,
        scorers: Mapping[str, MetricScorer],
        *,
        weights: Mapping[str, float],
        stats: ReferenceStats | None = None,
    ):
        self.weights = validate_weights(weights)
        self.stats = stats or ReferenceStats.shipped()
        self.scorers = {m: s for m, s in scorers.items() if self.weights.get(m, 0) > 0}
        for metric, w in self.weights.items():
            if w > 0:
                if metric not in self.scorers:
                    raise UserInputError(f"metric {metric!r} has weight {w} but no scorer; give it weight 0")
                self.stats.require(metric)

    @classmethod
    def from_config(cls, cfg: ScoringConfig | None = None) -> UnifiedScorer:
        cfg = cfg or ScoringConfig.from_settings()
        weights = validate_weights(cfg.weights)
        scorers = {m: metric_scorer(m, cfg) for m, w in weights.items() if w > 0}
        return cls(scorers, weights=weights, stats=ReferenceStats.load(cfg.reference_stats))

    @property
    def metrics(self) -> list[str]:
        return list(self.scorers)

    def score(self, prompt: str, images: list[Image.Image]) -> list[ScoreResult]:
        if not prompt or not prompt.strip():
            raise UserInputError("prompt is empty; the scores measure how well an image matches a prompt")
        images = list(images)
        if not images:
            return []
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise UserInputError(f"image {i} is a {type(im).__name__}, not a PIL image")
        raw: dict[str, list[float]] = {}
        for metric, scorer in self.scorers.items():
            values = scorer.score(prompt, images)
            if len(values) != len(images):
                raise RuntimeError(f"{metric} scorer returned {len(values)} scores for {len(images)} images")
            raw[metric] = values
        return [self.combine({m: raw[m][i] for m in raw}) for i in range(len(images))]

    def combine(self, raw: Mapping[str, float]) -> ScoreResult:
        """Normalize one image's raw scores and take the weighted mean."""
        metrics = {
            m: MetricScore(raw=float(r), normalized=self.stats.require(m).normalize(float(r)), weight=self.weights[m])
            for m, r in raw.items()
        }
        unified = unified_mean({m: s.normalized for m, s in metrics.items()}, self.weights)
        return ScoreResult(metrics=metrics, unified=unified)
