"""CLIP score (Hessel et al. 2021) with open_clip, in torchmetrics' convention: 100 * max(cos, 0)."""

from __future__ import annotations

from PIL import Image

from diffagent.scoring.config import ScoringConfig
from diffagent.scoring.openclip_scorer import OpenClipScorer
from diffagent.scoring.types import CLIP_SCORE


class ClipScorer(OpenClipScorer):
    """Text-image alignment. ``pretrained`` is an open_clip tag ('openai'), a local file or an hf: file."""

    metric = CLIP_SCORE
    weights_what = "CLIP weights for {name}"
    accepts_tags = True

    def __init__(self, model: str = "ViT-L-14", pretrained: str = "openai", **options):
        """``options``: see ``ModelScorer`` (device, batch_size, half_precision, downloads, trust_pickles)."""
        super().__init__(model, **options)
        self.pretrained = pretrained

    @property
    def weights_ref(self) -> str:
        return self.pretrained

    @classmethod
    def from_config(cls, cfg: ScoringConfig) -> ClipScorer:
        return cls(cfg.clip_model, cfg.clip_pretrained, **cls.options(cfg))

    def score(self, prompt: str, images: list[Image.Image]) -> list[float]:
        return [100.0 * max(c, 0.0) for c in super().score(prompt, images)]
