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

from diffagent.scoring.config import ScoringConfig
from diffagent.scoring.openclip_scorer import OpenClipScorer
from diffagent.scoring.types import HPS_V2


class HpsV2Scorer(OpenClipScorer):
    """Human preference score: cosine between open_clip ViT-H-14 (HPS weights) image and text features."""

    metric = HPS_V2
    weights_what = "HPS v2 checkpoint"

    def __init__(self, checkpoint: str = "hf:xswu/HPSv2/HPS_v2.1_compressed.pt", model: str = "ViT-H-14", **options):
        """``options``: see ``ModelScorer`` (device, batch_size, half_precision, downloads, trust_pickles)."""
        super().__init__(model, **options)
        self.checkpoint = checkpoint

    @property
    def weights_ref(self) -> str:
        return self.checkpoint

    @classmethod
    def from_config(cls, cfg: ScoringConfig) -> HpsV2Scorer:
        return cls(cfg.hps_checkpoint, cfg.hps_model, **cls.options(cfg))
