"""ImageReward (Xu et al. 2023): BLIP image-text encoder + MLP head trained on human preferences.

Loading goes through the ``image-reward`` package's own model classes (``imagereward_compat``
makes them work on current transformers). The package's ``load`` is not used: it reads the
checkpoint with ``strict=False`` and would accept any file (a wrong checkpoint scores a constant
-0.16), it prints to stdout, and it fetches ``med_config.json`` from the hub. Here the missing
keys are checked and the ViT is built to match the checkpoint.

Scores are computed in batches with the same operations as ``ImageReward.score`` (one image at
a time upstream); ``tests/scoring/test_imagereward.py`` checks both agree.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from PIL import Image

from diffagent.errors import UserInputError
from diffagent.scoring import cache, imagereward_compat, weights
from diffagent.scoring.base import ModelScorer
from diffagent.scoring.config import ScoringConfig, resolve_device
from diffagent.scoring.openclip_models import autocast
from diffagent.scoring.types import IMAGE_REWARD

log = logging.getLogger(__name__)

#: parameters the reward depends on; a checkpoint missing any of them is refused
REQUIRED_PREFIXES = ("blip.visual_encoder.", "blip.text_encoder.", "mlp.")
#: buffers rebuilt at construction, harmless when absent from a checkpoint
OPTIONAL_SUFFIXES = ("position_ids",)


def check_keys(missing: list[str], unexpected: list[str], path: Path) -> None:
    """Refuse a checkpoint that leaves scoring parameters at their random init."""
    bad = [k for k in missing if k.startswith(REQUIRED_PREFIXES) and not k.endswith(OPTIONAL_SUFFIXES)]
    if bad:
        raise UserInputError(
            f"{str(path)!r} is not a complete ImageReward checkpoint: {len(bad)} parameters are missing "
            f"(e.g. {', '.join(bad[:3])}); use THUDM/ImageReward ImageReward.pt"
        )
    if unexpected:
        log.warning("ImageReward checkpoint %s has %d unused keys (e.g. %s)", path, len(unexpected), unexpected[:3])


def load_model(
    checkpoint: Path, med_config: Path, tokenizer_dir: Path, device: str, *, heads=None, trust_pickles=False
):
    import torch

    cfg = json.loads(Path(med_config).read_text(encoding="utf-8"))
    if cfg.get("hidden_size") != imagereward_compat.MLP_WIDTH:
        raise UserInputError(
            f"{str(med_config)!r} has hidden_size {cfg.get('hidden_size')}; ImageReward's head needs "
            f"{imagereward_compat.MLP_WIDTH} (use THUDM/ImageReward med_config.json)"
        )
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=not trust_pickles)
    except Exception as e:
        raise UserInputError(
            f"cannot read ImageReward checkpoint {str(checkpoint)!r}: {type(e).__name__}: {str(e)[:300]}"
            + ("" if trust_pickles else " (if you trust a file that pickles objects, enable trust_pickles)")
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserInputError(f"{str(checkpoint)!r} does not hold a state dict")
    vit = imagereward_compat.vit_spec(state, heads)
    tokenizer = imagereward_compat.load_tokenizer(tokenizer_dir)
    if len(tokenizer) > cfg.get("vocab_size", 0):
        raise UserInputError(
            f"tokenizer in {str(tokenizer_dir)!r} has {len(tokenizer)} tokens but the text encoder only "
            f"{cfg.get('vocab_size')}; tokenizer and med_config.json do not belong together"
        )
    model = imagereward_compat.build(med_config, tokenizer, vit)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        raise UserInputError(f"{str(checkpoint)!r} does not fit {str(med_config)!r}: {str(e)[:500]}") from e
    check_keys(list(result.missing_keys), list(result.unexpected_keys), checkpoint)
    model.device = device  # upstream forward passes read it
    return model.to(device).eval()


class ImageRewardScorer(ModelScorer):
    """Human preference reward; the package already standardizes it (mean 0, std 1 on its data)."""

    metric = IMAGE_REWARD

    def __init__(
        self,
        checkpoint: str = "hf:THUDM/ImageReward/ImageReward.pt",
        med_config: str = "hf:THUDM/ImageReward/med_config.json",
        tokenizer: str = "hf:google-bert/bert-base-uncased",
        *,
        vit_heads: int | None = None,
        **options,
    ):
        """``options``: see ``ModelScorer`` (device, batch_size, half_precision, downloads, trust_pickles)."""
        super().__init__(**options)
        self.checkpoint = checkpoint
        self.med_config = med_config
        self.tokenizer = tokenizer
        self.vit_heads = vit_heads

    @classmethod
    def from_config(cls, cfg: ScoringConfig) -> ImageRewardScorer:
        return cls(
            cfg.imagereward_checkpoint,
            cfg.imagereward_med_config,
            cfg.imagereward_tokenizer,
            vit_heads=cfg.imagereward_vit_heads,
            **cls.options(cfg),
        )

    def loaded(self):
        device = resolve_device(self.device)
        kw = {"allow_downloads": self.allow_downloads, "cache_dir": self.hub_cache_dir}
        ckpt = weights.resolve(self.checkpoint, what="ImageReward checkpoint", **kw).resolve()
        med = weights.resolve(self.med_config, what="ImageReward med_config.json", **kw).resolve()
        tok = weights.resolve(self.tokenizer, what="ImageReward BERT tokenizer", **kw).resolve()
        key = ("image_reward", str(ckpt), str(med), str(tok), self.vit_heads, device)
        return cache.load_once(
            key,
            lambda: load_model(ckpt, med, tok, device, heads=self.vit_heads, trust_pickles=self.trust_pickles),
        )

    def score(self, prompt: str, images: list[Image.Image]) -> list[float]:
        return reward(self.loaded(), prompt, images, batch_size=self.batch_size, half=self.half_precision)


def reward(model, prompt: str, images: list[Image.Image], *, batch_size: int, half: bool) -> list[float]:
    """``ImageReward.score`` for many images: BLIP ViT -> BERT with cross-attention -> [CLS] -> MLP."""
    import torch

    device = model.device
    text = model.blip.tokenizer(
        prompt,
        padding="max_length",
        truncation=True,
        max_length=imagereward_compat.TEXT_MAX_LENGTH,
        return_tensors="pt",
    ).to(device)
    out: list[float] = []
    with torch.inference_mode(), autocast(device, half):
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pixels = torch.stack([model.preprocess(im) for im in chunk]).to(device)
            image_embeds = model.blip.visual_encoder(pixels)
            image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device)
            n = len(chunk)
            hidden = model.blip.text_encoder(
                text.input_ids.expand(n, -1),
                attention_mask=text.attention_mask.expand(n, -1),
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_atts,
                return_dict=True,
            ).last_hidden_state[:, 0, :]
            rewards = (model.mlp(hidden.float()).squeeze(-1) - model.mean) / model.std
            out.extend(float(r) for r in rewards.float().cpu())
    return out
