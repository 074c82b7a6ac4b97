"""Putting CLIP score, ImageReward and HPS v2 on one scale, and the unified mean.

The three metrics live on unrelated scales: CLIP score is 100 * cosine (roughly 20-40 for real
renders), ImageReward is already a z-score, HPS v2 is a raw cosine (roughly 0.2-0.35). A plain
average would be dominated by CLIP score. Each raw score is therefore turned into a z-score
against *reference statistics* of that metric (mean and std of the metric over typical
renders), and the unified metric is the weighted mean of the z-scores::

    z_m     = (raw_m - mean_m) / std_m
    unified = sum_m(w_m * z_m) / sum_m(w_m)          (metrics with w_m > 0)

Why z-scores against fixed references and not, say, min-max over the current batch: the same
image must get the same score whether it is scored alone (best-of-2 at serve time) or among
thousands (a benchmark), and a reward for RRHF must not depend on which other samples share its
batch. A unit of the unified metric reads as "one typical spread of the metric".

Where the shipped numbers come from (``reference_stats.json``): ImageReward's mean 0 / std 1 is
exact (the package already standardizes with its authors' statistics). CLIP score and HPS v2
statistics are provisional priors from published score ranges, *not* measured by diffagent:
real weights cannot be downloaded where this was built. ``ReferenceStats.fit`` measures them on
any set of renders (``diffagent bench images --save-reference-stats``) and ``ScoringConfig``
takes a path to use them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator

from diffagent.atomic import write_text_atomic
from diffagent.errors import UserInputError

SHIPPED_STATS = "reference_stats.json"


class MetricStats(BaseModel):
    mean: float
    std: float = Field(gt=0, description="must be positive: it divides")
    model: str = Field("", description="the weights these statistics were measured with")
    measured: bool = Field(False, description="False for a provisional prior")
    source: str = ""
    n: int | None = Field(None, description="number of images measured, when measured by diffagent")

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    def normalize(self, raw: float) -> float:
        return (raw - self.mean) / self.std


class ReferenceStats(BaseModel):
    """Reference statistics per metric, as stored in JSON."""

    schema_: int = Field(1, alias="schema")
    normalization: str = "zscore"
    description: str = ""
    metrics: dict[str, MetricStats]

    model_config = {"populate_by_name": True}

    @field_validator("normalization")
    @classmethod
    def _zscore_only(cls, v: str) -> str:
        if v != "zscore":
            raise ValueError(f"unsupported normalization {v!r}; only 'zscore' is implemented")
        return v

    @classmethod
    def shipped(cls) -> ReferenceStats:
        text = resources.files("diffagent.scoring").joinpath(SHIPPED_STATS).read_text(encoding="utf-8")
        return cls.model_validate_json(text)

    @classmethod
    def load(cls, path: Path | str | None = None) -> ReferenceStats:
        """The statistics at ``path``, or the shipped ones when ``path`` is None."""
        if path is None:
            return cls.shipped()
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserInputError(
                f"reference statistics file {str(p)!r} does not exist; write one with "
                "`diffagent bench images --save-reference-stats FILE` or leave the setting empty "
                "to use the shipped statistics"
            )
        try:
            return cls.model_validate(json.loads(p.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, ValidationError) as e:
            raise UserInputError(f"reference statistics file {str(p)!r} is malformed: {e}") from e

    def save(self, path: Path | str) -> Path:
        text = json.dumps(self.model_dump(by_alias=True, exclude_none=True), indent=2) + "\n"
        return write_text_atomic(Path(path), text)

    def require(self, metric: str) -> MetricStats:
        try:
            return self.metrics[metric]
        except KeyError:
            raise UserInputError(
                f"no reference statistics for metric {metric!r} (have: {', '.join(sorted(self.metrics))}); "
                "add them to the statistics file or give the metric weight 0"
            ) from None

    @classmethod
    def fit(
        cls,
        samples: Mapping[str, Iterable[float]],
        *,
        models: Mapping[str, str] | None = None,
        source: str = "measured by diffagent",
    ) -> ReferenceStats:
        """Measure mean and (sample) standard deviation per metric from raw scores."""
        metrics = {}
        for name, values in samples.items():
            xs = [float(v) for v in values]
            if len(xs) < 2:
                raise UserInputError(f"need at least 2 {name} scores to measure a spread, got {len(xs)}")
            mean = math.fsum(xs) / len(xs)
            var = math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
            if var <= 0:
                raise UserInputError(f"all {len(xs)} {name} scores are equal ({mean}); cannot measure a spread")
            metrics[name] = MetricStats(
                mean=mean,
                std=math.sqrt(var),
                model=(models or {}).get(name, ""),
                measured=True,
                source=source,
                n=len(xs),
            )
        return cls(description="measured per-metric statistics (z-score normalization)", metrics=metrics)


def validate_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Weights must be finite, non-negative, and not all zero."""
    out = {}
    for name, w in weights.items():
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise UserInputError(f"weight of {name!r} must be a finite number >= 0, got {w}")
        out[name] = w
    if not any(w > 0 for w in out.values()):
        raise UserInputError("all metric weights are 0; give at least one metric a positive weight")
    return out


def unified_mean(normalized: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted mean of normalized scores over the metrics with positive weight."""
    total = 0.0
    wsum = 0.0
    for name, w in weights.items():
        if w <= 0:
            continue
        if name not in normalized:
            raise UserInputError(f"metric {name!r} has weight {w} but was not scored")
        total += w * normalized[name]
        wsum += w
    if wsum == 0:
        raise UserInputError("all metric weights are 0; give at least one metric a positive weight")
    return total / wsum
