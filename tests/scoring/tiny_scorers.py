"""Tiny random scorer weights, written to disk so tests exercise the real loading paths.

Everything builds offline in well under a second per model: an open_clip model config + checkpoint
(CLIP score and HPS v2 share the architecture), and an ImageReward checkpoint with a BERT vocab and
med_config.json (text hidden size stays 768: ImageReward's MLP head hard-codes it).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_VIT = {"width": 64, "depth": 1, "heads": 2, "patch": 16}


@dataclass(frozen=True)
class TinyWeights:
    clip_config: Path  # open_clip model-config JSON (shared by CLIP and HPS)
    clip_checkpoint: Path  # plain state dict (.safetensors)
    hps_checkpoint: Path  # {"state_dict": ...} like HPS_v2.1_compressed.pt
    ir_checkpoint: Path
    ir_med_config: Path
    ir_tokenizer: Path


def write_clip_config(folder: Path, name: str = "diffagent-tiny-clip") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(TINY_CLIP_CFG))
    return path


def build_open_clip(config: Path, seed: int, shared_direction: float = 0.0):
    """A random open_clip model; ``shared_direction`` > 0 gives image and text features a common
    component, so cosines come out positive (about 0.38 at 0.3) like a real CLIP's on matching
    pairs; a random model's cosines are negative as often as not, and CLIP score clamps them to 0."""
    from diffagent.scoring import openclip_models

    torch.manual_seed(seed)
    model = openclip_models.load(str(config)).model
    if shared_direction:
        with torch.no_grad():
            model.visual.ln_post.bias.fill_(0.5)
            model.ln_final.bias.fill_(0.5)
            model.visual.proj[:, 0] += shared_direction
            model.text_projection[:, 0] += shared_direction
    return model


def write_bert_vocab(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    words = ["a", "an", "the", "photo", "of", "cat", "dog", "red", "blue", "car", "painting", "fox"]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *string.digits]
    tokens += ["##" + c for c in string.ascii_lowercase] + list(".,!?'-") + words
    tokens = list(dict.fromkeys(tokens))
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "model_max_length": 512, "tokenizer_class": "BertTokenizer"})
    )
    return len(tokens)


def write_med_config(path: Path, vocab_size: int, *, layers: int = 1, intermediate: int = 64) -> Path:
    # the real med_config.json is BERT-base (12 layers, 3072) + cross-attention; only sizes shrink here
    cfg = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": 12,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "encoder_width": 768,
        "add_cross_attention": True,
    }
    path.write_text(json.dumps(cfg))
    return path


def build_image_reward(med_config: Path, tokenizer_dir: Path, seed: int, vit=TINY_VIT):
    from diffagent.scoring import imagereward_compat

    torch.manual_seed(seed)
    tok = imagereward_compat.load_tokenizer(tokenizer_dir)
    model = imagereward_compat.build(med_config, tok, imagereward_compat.VitSpec(**vit))
    # upstream's MLP init (std 1/769 over 5 layers) makes every reward the same constant; widen it
    # so different images get different rewards and "picks the best" tests mean something
    for name, p in model.mlp.named_parameters():
        if name.endswith("weight"):
            torch.nn.init.normal_(p, std=p.shape[1] ** -0.5)
    return model


def write_all(folder: Path, seed: int = 0) -> TinyWeights:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = write_clip_config(folder)
    clip = build_open_clip(config, seed, shared_direction=0.3)
    clip_ckpt = folder / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, clip_ckpt)
    hps = build_open_clip(config, seed + 1)
    hps_ckpt = folder / "tiny-hps.pt"
    torch.save({"state_dict": hps.state_dict()}, hps_ckpt)

    tok_dir = folder / "bert"
    n = write_bert_vocab(tok_dir)
    med = write_med_config(folder / "med_config.json", n + 2)  # + [DEC] and [ENC]
    ir = build_image_reward(med, tok_dir, seed + 2)
    ir_ckpt = folder / "tiny-imagereward.pt"
    torch.save(ir.state_dict(), ir_ckpt)
    return TinyWeights(config, clip_ckpt, hps_ckpt, ir_ckpt, med, tok_dir)


def scoring_config(w: TinyWeights, **over):
    from diffagent.scoring.config import ScoringConfig

    cfg = dict(
        device="cpu",
        allow_downloads=False,
        clip_model=str(w.clip_config),
        clip_pretrained=str(w.clip_checkpoint),
        hps_model=str(w.clip_config),
        hps_checkpoint=str(w.hps_checkpoint),
        imagereward_checkpoint=str(w.ir_checkpoint),
        imagereward_med_config=str(w.ir_med_config),
        imagereward_tokenizer=str(w.ir_tokenizer),
        batch_size=4,
    )
    cfg.update(over)
    return ScoringConfig(**cfg)


def images(n: int, size: int = 64, seed: int = 0) -> list[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        out.append(Image.fromarray(arr, "RGB"))
    return out


def render_tiny_models():
    """``tests/render/tiny_models.py`` (tiny SD pipelines), or skip when the renderer is not present.

    Loaded from its file, not imported as ``render.tiny_models``: this folder's tests do not put
    ``tests/`` on ``sys.path``.
    """
    import importlib.util

    import pytest

    path = Path(__file__).resolve().parents[1] / "render" / "tiny_models.py"
    if not path.is_file() or importlib.util.find_spec("diffagent.render") is None:
        pytest.skip("the renderer (diffagent.render, tests/render/tiny_models.py) is not present")
    spec = importlib.util.spec_from_file_location("render_tiny_models_for_scoring", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
