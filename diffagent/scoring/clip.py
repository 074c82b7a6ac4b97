"""CLIP score (Hessel et al. 2021) with open_clip, in torchmetrics' convention: 100 * max(cos, 0)."""

from __future__ import annotations

from PIL import Image

from diffagent.scoring import cache, openclip_models, weights
from diffagent.scoring.config import ScoringConfig, resolve_device
from diffagent.scoring.types import CLIP_SCORE


class ClipScorer:
    """Text-image alignment. ``pretrained`` is an open_clip tag ('openai'), a local file or an hf: file."""

    metric = CLIP_SCORE

    def __init__(
        self,
        model: str = "ViT-L-14",
        pretrained: str = "openai",
        *,
        device: str = "auto",
        batch_size: int = 16,
        half_precision: bool = True,
        allow_downloads: bool = True,
        hub_cache_dir=None,
        trust_pickles: bool = False,
    ):
        self.model_spec = model
        self.pretrained = pretrained
        self.device = device
        self.batch_size = batch_size
        self.half_precision = half_precision
        self.allow_downloads = allow_downloads
        self.hub_cache_dir = hub_cache_dir
        self.trust_pickles = trust_pickles

    @classmethod
    def from_config(cls, cfg: ScoringConfig) -> ClipScorer:
        return cls(
            cfg.clip_model,
            cfg.clip_pretrained,
            device=cfg.device,
            batch_size=cfg.batch_size,
            half_precision=cfg.half_precision,
            allow_downloads=cfg.allow_downloads,
            hub_cache_dir=cfg.hub_cache_dir,
            trust_pickles=cfg.trust_pickles,
        )

    def loaded(self) -> openclip_models.OpenClipModel:
        """The model, loaded on first use and shared by every scorer with the same weights."""
        device = resolve_device(self.device)
        name = openclip_models.model_name(self.model_spec)
        if not weights.is_hub_ref(self.pretrained) and self.pretrained in openclip_models.pretrained_tags(name):
            key = ("open_clip", name, "tag", self.pretrained, device)
            return cache.load_once(
                key, lambda: openclip_models.load(self.model_spec, pretrained_tag=self.pretrained, device=device)
            )
        path = weights.resolve(
            self.pretrained,
            what=f"CLIP weights for {name}",
            allow_downloads=self.allow_downloads,
            cache_dir=self.hub_cache_dir,
        ).resolve()
        key = ("open_clip", name, "file", str(path), device)
        return cache.load_once(
            key,
            lambda: openclip_models.load(
                self.model_spec, checkpoint=path, device=device, trust_pickles=self.trust_pickles
            ),
        )

    def score(self, prompt: str, images: list[Image.Image]) -> list[float]:
        cos = openclip_models.cosines(
            self.loaded(), prompt, images, batch_size=self.batch_size, half=self.half_precision
        )
        return [100.0 * max(c, 0.0) for c in cos]
