"""Config-only skeletons of the SD 1.5 and SDXL diffusers layouts, so Civitai single files load offline.

``from_single_file`` needs the diffusers configs of every component. Without ``config=`` it looks them up on
the Hugging Face hub (``stable-diffusion-v1-5/...``, ``stabilityai/stable-diffusion-xl-base-1.0``), which fails
offline and costs a network round trip online. A skeleton folder (model_index.json, */config.json, scheduler
config, tokenizer files, no weights) is all it reads, so we write one per ecosystem on first use.

The configs are those of the reference repositories. The CLIP tokenizer files (49408-token OpenAI BPE) are
rebuilt from the BPE merges file that ``open_clip_torch`` ships; this gives the same token ids as the hub's
``openai/clip-vit-large-patch14`` tokenizer.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from diffagent.errors import MissingDependency, UserInputError

SKELETON_VERSION = 1

_BETAS = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "timestep_spacing": "leading",
}

_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
}

_CLIP_L = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    # ids 0/2/1 are the reference repos' values; eos_token_id=2 selects transformers' legacy pooling
    # (argmax of the input ids = the end-of-text token), which is what SD was trained with
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "projection_dim": 768,
}

_UNET_COMMON = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
}

SD15: dict[str, dict[str, Any]] = {
    "model_index.json": {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "scheduler/scheduler_config.json": {"_class_name": "PNDMScheduler", **_BETAS},
    "text_encoder/config.json": _CLIP_L,
    "unet/config.json": {
        **_UNET_COMMON,
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "cross_attention_dim": 768,
        "sample_size": 64,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    },
    "vae/config.json": {**_VAE, "sample_size": 512, "scaling_factor": 0.18215},
}

SDXL: dict[str, dict[str, Any]] = {
    "model_index.json": {
        "_class_name": "StableDiffusionXLPipeline",
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "scheduler/scheduler_config.json": {
        "_class_name": "EulerDiscreteScheduler",
        **_BETAS,
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
    },
    "text_encoder/config.json": _CLIP_L,
    "text_encoder_2/config.json": {
        **_CLIP_L,
        "architectures": ["CLIPTextModelWithProjection"],
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "hidden_act": "gelu",
        "projection_dim": 1280,
    },
    "unet/config.json": {
        **_UNET_COMMON,
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "cross_attention_dim": 2048,
        "projection_class_embeddings_input_dim": 2816,
        "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "use_linear_projection": True,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    },
    # the SDXL VAE overflows in fp16; force_upcast makes the pipeline decode in fp32
    "vae/config.json": {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
}

SKELETONS = {"sd1": SD15, "sdxl": SDXL}
#: tokenizer folders per ecosystem and their pad token (SDXL's second tokenizer pads with "!")
TOKENIZERS = {"sd1": {"tokenizer": "<|endoftext|>"}, "sdxl": {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}}


def bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte -> printable-unicode table, in CLIP's vocabulary order (tests' tiny tokenizer too)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_bpe_merges() -> list[str]:
    """The 48894 OpenAI CLIP BPE merges, from the file open_clip_torch ships."""
    try:
        import open_clip.tokenizer as oct  # noqa: PLC0415 - optional, only needed once per skeleton
    except ImportError as e:
        raise MissingDependency("open_clip_torch", "render") from e
    path = Path(oct.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    # same slice as CLIP's SimpleTokenizer: skip the version line, keep 49152 - 256 - 2 merges
    return lines[1 : 49152 - 256 - 2 + 1]


def write_clip_tokenizer(dirpath: Path, merges: list[str], pad_token: str) -> None:
    chars = bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != 49408:
        raise RuntimeError(f"rebuilt CLIP vocabulary has {len(vocab)} tokens, expected 49408")
    dirpath.mkdir(parents=True, exist_ok=True)
    (dirpath / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (dirpath / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    (dirpath / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": pad_token,
                "do_lower_case": True,
                "add_prefix_space": False,
                "errors": "replace",
            }
        )
    )


def write_skeleton(ecosystem: str, dest: Path) -> Path:
    """Write the skeleton for ``ecosystem`` ('sd1' | 'sdxl') at ``dest`` (must not exist)."""
    if ecosystem not in SKELETONS:
        raise UserInputError(f"no pipeline skeleton for {ecosystem!r}; renderable: {', '.join(SKELETONS)}")
    dest = Path(dest)
    merges = clip_bpe_merges()
    for rel, cfg in SKELETONS[ecosystem].items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cfg, indent=1))
    for folder, pad in TOKENIZERS[ecosystem].items():
        write_clip_tokenizer(dest / folder, merges, pad)
    return dest


def ensure_skeleton(ecosystem: str, cache_dir: Path) -> Path:
    """The skeleton folder for ``ecosystem`` under ``cache_dir``, written once (atomically) on first use."""
    final = Path(cache_dir) / "skeletons" / f"{ecosystem}-v{SKELETON_VERSION}"
    if (final / "model_index.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ecosystem}-", dir=final.parent))
    try:
        write_skeleton(ecosystem, tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process won the race; its copy is identical
            if not (final / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
