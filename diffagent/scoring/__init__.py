"""Scoring: CLIP score, ImageReward and HPS v2, and the unified human-preference metric.

``UnifiedScorer.from_config(ScoringConfig.from_settings(settings)).score(prompt, images)`` gives
one ``ScoreResult`` per image. Models load lazily, once per process; importing this package
loads nothing heavy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from diffagent.scoring.config import ScoringConfig
from diffagent.scoring.normalization import MetricStats, ReferenceStats
from diffagent.scoring.types import METRICS, MetricScore, MetricScorer, Scorer, ScoreResult

if TYPE_CHECKING:
    from diffagent.scoring.best_of import BestOfResult, best_of_n, candidate_calls, render_best_of
    from diffagent.scoring.clip import ClipScorer
    from diffagent.scoring.hps import HpsV2Scorer
    from diffagent.scoring.imagereward import ImageRewardScorer
    from diffagent.scoring.unified import UnifiedScorer

_LAZY = {
    "ClipScorer": "diffagent.scoring.clip",
    "HpsV2Scorer": "diffagent.scoring.hps",
    "ImageRewardScorer": "diffagent.scoring.imagereward",
    "UnifiedScorer": "diffagent.scoring.unified",
    "best_of_n": "diffagent.scoring.best_of",
    "candidate_calls": "diffagent.scoring.best_of",
    "render_best_of": "diffagent.scoring.best_of",
    "BestOfResult": "diffagent.scoring.best_of",
}

__all__ = [
    "METRICS",
    "MetricScore",
    "MetricScorer",
    "MetricStats",
    "ReferenceStats",
    "ScoreResult",
    "Scorer",
    "ScoringConfig",
    # _LAZY's names, spelled out so that linters and type checkers see the re-exports
    # (tests/scoring/test_scoring_unified.py checks that the two lists agree)
    "ClipScorer",
    "HpsV2Scorer",
    "ImageRewardScorer",
    "UnifiedScorer",
    "best_of_n",
    "candidate_calls",
    "render_best_of",
    "BestOfResult",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffagent.scoring' has no attribute {name!r}")
