"""The options every model-backed scorer takes, defined once.

CLIP score, HPS v2 and ImageReward all run a model on a device, in batches, from weights that may
have to be fetched; these options mean the same for each, so they are stored (and read from a
``ScoringConfig``) in one place rather than three that could drift apart.
"""

from __future__ import annotations

from typing import Any

from diffagent.scoring.config import ScoringConfig


class ModelScorer:
    """Base of the metric scorers: device, batching and weight-access options (``ScoringConfig``'s defaults)."""

    def __init__(
        self,
        *,
        device: str = "auto",
        batch_size: int = 16,
        half_precision: bool = True,
        allow_downloads: bool = True,
        hub_cache_dir=None,
        trust_pickles: bool = False,
    ):
        self.device = device
        self.batch_size = batch_size
        self.half_precision = half_precision
        self.allow_downloads = allow_downloads
        self.hub_cache_dir = hub_cache_dir
        self.trust_pickles = trust_pickles

    @staticmethod
    def options(cfg: ScoringConfig) -> dict[str, Any]:
        """The keyword arguments of ``__init__`` taken from ``cfg`` (for the subclasses' ``from_config``)."""
        return {
            "device": cfg.device,
            "batch_size": cfg.batch_size,
            "half_precision": cfg.half_precision,
            "allow_downloads": cfg.allow_downloads,
            "hub_cache_dir": cfg.hub_cache_dir,
            "trust_pickles": cfg.trust_pickles,
        }
