"""Where the scorer weights are and how the unified metric is weighted.

Weight locations are strings: a local path, or ``hf:<owner>/<repo>/<file>`` (a file in a Hugging
Face repo) or ``hf:<owner>/<repo>`` (the tokenizer files of a repo), fetched with
``huggingface_hub`` for users with network and read from its cache otherwise. The defaults are the
public weights each metric's authors publish:

=================  =========================================================================
CLIP score         open_clip ``ViT-L-14`` / ``openai`` (the OpenAI CLIP ViT-L/14 that
                   torchmetrics' CLIPScore defaults to; open_clip fetches it from the hub)
ImageReward        ``hf:THUDM/ImageReward/ImageReward.pt`` + ``hf:THUDM/ImageReward/med_config.json``
                   + BERT tokenizer ``hf:google-bert/bert-base-uncased`` (vocab.txt)
HPS v2             open_clip ``ViT-H-14`` + ``hf:xswu/HPSv2/HPS_v2.1_compressed.pt``
                   (HPS v2.0: ``hf:xswu/HPSv2/HPS_v2_compressed.pt``)
=================  =========================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from diffagent.scoring.types import CLIP_SCORE, HPS_V2, IMAGE_REWARD


def default_weights() -> dict[str, float]:
    # equal weights, as in the DiffAgent paper's unified metric
    return {CLIP_SCORE: 1.0, IMAGE_REWARD: 1.0, HPS_V2: 1.0}


class ScoringConfig(BaseModel):
    """Everything the scorers need; built from ``Settings`` by ``from_settings``."""

    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    allow_downloads: bool = Field(True, description="fetch hf: weights that are not in the local hub cache")
    hub_cache_dir: Path | None = Field(None, description="huggingface_hub cache; None = its default")
    batch_size: int = Field(16, ge=1, le=1024, description="images per forward pass")
    half_precision: bool = Field(True, description="fp16 autocast on CUDA (ignored on CPU)")
    weights: dict[str, float] = Field(default_factory=default_weights, description="metric -> weight")
    reference_stats: Path | None = Field(None, description="statistics JSON; None = the shipped file")

    clip_model: str = Field("ViT-L-14", description="open_clip model name, or path to a model-config JSON")
    clip_pretrained: str = Field("openai", description="open_clip pretrained tag, local file, or hf: file")
    hps_model: str = Field("ViT-H-14", description="open_clip model name, or path to a model-config JSON")
    hps_checkpoint: str = Field("hf:xswu/HPSv2/HPS_v2.1_compressed.pt", description="local file or hf: file")
    imagereward_checkpoint: str = Field("hf:THUDM/ImageReward/ImageReward.pt")
    imagereward_med_config: str = Field("hf:THUDM/ImageReward/med_config.json")
    imagereward_tokenizer: str = Field(
        "hf:google-bert/bert-base-uncased", description="folder with BERT vocab.txt, or hf: repo"
    )
    imagereward_vit_heads: int | None = Field(
        None, ge=1, description="BLIP ViT heads; None = width // 64 (16 for the released ViT-L)"
    )
    trust_pickles: bool = Field(
        False, description="allow torch.load(weights_only=False) for checkpoints that pickle objects"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda", "mps") and not v.startswith("cuda:"):
            raise ValueError(f"unknown device {v!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v

    @classmethod
    def from_settings(cls, settings: Any = None, **overrides: Any) -> ScoringConfig:
        """Scoring config from ``diffagent.settings.Settings`` (device, downloads) plus overrides.

        A ``settings.scoring`` attribute (a ``ScoringConfig`` or dict), when the settings object
        has one, provides the scorer-specific fields.
        """
        if settings is None:
            from diffagent.settings import get_settings

            settings = get_settings()
        base: dict[str, Any] = {}
        nested = getattr(settings, "scoring", None)
        if isinstance(nested, ScoringConfig):
            base.update(nested.model_dump(exclude_unset=True))
        elif isinstance(nested, dict):
            base.update(nested)
        base.setdefault("device", getattr(settings, "device", "auto"))
        base.setdefault("allow_downloads", getattr(settings, "allow_downloads", True))
        base.update(overrides)
        return cls.model_validate(base)


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; a ``MissingDependency`` without torch (the base
    install has none)."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        from diffagent.errors import MissingDependency

        raise MissingDependency("torch", "score") from e
    if name != "auto":
        if name.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                from diffagent.errors import UserInputError

                raise UserInputError(f"device {name!r} requested but CUDA is not available; use device 'cpu'")
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
