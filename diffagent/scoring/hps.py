"""HPS v2 / v2.1 (Wu et al. 2023): an open_clip ViT-H-14 fine-tuned on human preferences.

Why not the ``hpsv2`` package (1.2.0): its wheel lacks the BPE vocabulary file, so
``import hpsv2.img_score`` fails; ``hpsv2.score`` always downloads the ~4 GB laion ViT-H-14
weights before it loads the HPS checkpoint (so it cannot run offline); and it declares
``pytest==7.2.0``, ``pytest-split==0.8.0`` and ``protobuf<4`` as runtime dependencies, which
would downgrade this project's test tools. Its model code is a vendored open_clip whose ViT-H-14
has the same state-dict keys and shapes as ``open_clip_torch``'s, and its score is
``diag(image_features @ text_features.T)`` with L2-normalized features, i.e. the cosine; this
module computes exactly that with ``open_clip_torch``. (The package runs the model under fp16
autocast ('amp'); scores agree to about 1e-4.)
"""

from __future__ import annotations

from PIL import Image

from diffagent.scoring import cache, openclip_models, weights
from diffagent.scoring.config import ScoringConfig, resolve_device
from diffagent.scoring.types import HPS_V2


class HpsV2Scorer:
    """Human preference score: cosine between open_clip ViT-H-14 (HPS weights) image and text features."""

    metric = HPS_V2

    def __init__(
        self,
        checkpoint: str = "hf:xswu/HPSv2/HPS_v2.1_compressed.pt",
        model: str = "ViT-H-14",
        *,
        device: str = "auto",
        batch_size: int = 16,
        half_precision: bool = True,
        allow_downloads: bool = True,
        hub_cache_dir=None,
        trust_pickles: bool = False,
    ):
        self.checkpoint = checkpoint
        self.model_spec = model
        self.device = device
        self.batch_size = batch_size
        self.half_precision = half_precision
        self.allow_downloads = allow_downloads
        self.hub_cache_dir = hub_cache_dir
        self.trust_pickles = trust_pickles

    @classmethod
    def from_config(cls, cfg: ScoringConfig) -> HpsV2Scorer:
        return cls(
            cfg.hps_checkpoint,
            cfg.hps_model,
            device=cfg.device,
            batch_size=cfg.batch_size,
            half_precision=cfg.half_precision,
            allow_downloads=cfg.allow_downloads,
            hub_cache_dir=cfg.hub_cache_dir,
            trust_pickles=cfg.trust_pickles,
        )

    def loaded(self) -> openclip_models.OpenClipModel:
        device = resolve_device(self.device)
        name = openclip_models.model_name(self.model_spec)
        path = weights.resolve(
            self.checkpoint,
            what="HPS v2 checkpoint",
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
        return openclip_models.cosines(
            self.loaded(), prompt, images, batch_size=self.batch_size, half=self.half_precision
        )
