"""Tiny random SD 1.5 / SDXL pipelines for tests, built offline in well under a second.

Everything a renderer test needs and nothing from a model hub:
- a byte-level CLIP tokenizer (514 tokens, no merges) written as hub-style ``vocab.json`` + ``merges.txt``;
- tiny UNet / VAE / CLIP text encoders in the real SD 1.5 and SDXL block patterns, so that the LDM
  (A1111/Civitai single-file) key layout and diffusers' single-file converter apply unchanged;
- writers for the single-file layout (``to_ldm_sd15``, ``to_ldm_sdxl``), config-only skeletons,
  LoRAs in diffusers and kohya/Civitai formats, and textual-inversion embeddings.

Reusable outside ``tests/render`` (the scorer's tests use these pipelines too).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

# the same table the real skeleton tokenizer is built from, so tiny and real tokenizers agree on bytes
from diffagent.render.skeletons import bytes_to_unicode

# --- tokenizer ----------------------------------------------------------------------------------


def write_byte_tokenizer(dirpath: Path, pad_token: str = "<|endoftext|>") -> int:
    """A CLIPTokenizer whose every byte is one token (514 tokens). Returns the vocabulary size."""
    dirpath = Path(dirpath)
    dirpath.mkdir(parents=True, exist_ok=True)
    chars = bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (dirpath / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (dirpath / "merges.txt").write_text("#version: 0.2\n")
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
            }
        )
    )
    return len(vocab)


# --- components ---------------------------------------------------------------------------------


def tiny_unet(**over):
    from diffusers import UNet2DConditionModel

    cfg = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    cfg.update(over)
    return UNet2DConditionModel(**cfg)


def tiny_vae(**over):
    from diffusers import AutoencoderKL

    cfg = dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=64,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    cfg.update(over)
    return AutoencoderKL(**cfg)


def tiny_text_encoder(vocab_size: int, hidden: int = 32, projection: int | None = None, layers: int = 3):
    """3 layers so that clip skip 2 and 3 select different hidden states."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        projection_dim=projection or hidden,
        hidden_act="quick_gelu",
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def build_sd15(outdir: Path, seed: int = 0):
    """Tiny SD 1.5 pipeline saved as a diffusers folder at ``outdir``; returns the pipeline."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    outdir = Path(outdir)
    torch.manual_seed(seed)
    n = write_byte_tokenizer(outdir / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(outdir / "tokenizer")
    assert len(tokenizer) == n, "tokenizer did not load from the local files"
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
        num_train_timesteps=1000,
    )
    pipe = StableDiffusionPipeline(
        unet=tiny_unet(),
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(n),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(outdir, safe_serialization=True)
    write_byte_tokenizer(outdir / "tokenizer")  # keep hub-style vocab.json/merges.txt, as real repos have
    return pipe


#: tiny SDXL text widths; they must differ, diffusers' single-file loader tells the encoders apart by width
SDXL_TE1, SDXL_TE2 = 32, 48


def build_sdxl(outdir: Path, seed: int = 0):
    """Tiny SDXL pipeline (two text encoders, text_time conditioning) saved as a diffusers folder."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    outdir = Path(outdir)
    torch.manual_seed(seed)
    n = write_byte_tokenizer(outdir / "tokenizer")
    write_byte_tokenizer(outdir / "tokenizer_2", pad_token="!")
    unet = tiny_unet(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + SDXL_TE2,
        cross_attention_dim=SDXL_TE1 + SDXL_TE2,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(n, SDXL_TE1),
        text_encoder_2=tiny_text_encoder(n, SDXL_TE2, projection=SDXL_TE2),
        tokenizer=CLIPTokenizer.from_pretrained(outdir / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(outdir / "tokenizer_2"),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(outdir, safe_serialization=True)
    write_byte_tokenizer(outdir / "tokenizer")
    write_byte_tokenizer(outdir / "tokenizer_2", pad_token="!")
    return pipe


def config_skeleton(diffusers_dir: Path, dest: Path) -> Path:
    """Copy a diffusers folder without its weights: the config-only skeleton single files load against."""
    diffusers_dir, dest = Path(diffusers_dir), Path(dest)
    for src in diffusers_dir.rglob("*"):
        if src.is_file() and src.suffix in {".json", ".txt"}:
            target = dest / src.relative_to(diffusers_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, target)
    return dest


# --- diffusers -> single-file (original LDM / A1111 / Civitai key layout) --------------------------


def _unet_to_ldm(sd: dict, n_levels: int, per_block: int, attn_down: list[bool], attn_up: list[bool]) -> dict:
    conv = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ]
    res = [
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
        ("emb_layers.1", "time_emb_proj"),
        ("skip_connection", "conv_shortcut"),
    ]
    layer = []
    L = per_block
    for i in range(n_levels):
        for j in range(L):
            layer.append((f"input_blocks.{(L + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if attn_down[i]:
                layer.append((f"input_blocks.{(L + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(L + 1):
            layer.append((f"output_blocks.{(L + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if attn_up[i]:
                layer.append((f"output_blocks.{(L + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < n_levels - 1:
            layer.append((f"input_blocks.{(L + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            layer.append((f"output_blocks.{(L + 1) * i + L}.{2 if attn_up[i] else 1}.", f"up_blocks.{i}.upsamplers.0."))
    layer.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        layer.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    out = {}
    for k, v in sd.items():
        nk = k
        for s, h in conv:
            if nk.startswith(h):
                nk = s + nk[len(h) :]
        if "resnets" in nk:
            for s, h in res:
                nk = nk.replace(h, s)
        for s, h in layer:
            nk = nk.replace(h, s)
        out["model.diffusion_model." + nk] = v
    return out


def _vae_to_ldm(sd: dict, n_levels: int, per_block: int) -> dict:
    m = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0.")]
    for i in range(n_levels):
        for j in range(per_block):
            m.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < n_levels - 1:
            m.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            m.append((f"up.{n_levels - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        for j in range(per_block + 1):
            m.append((f"decoder.up.{n_levels - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
    for i in range(2):
        m.append((f"mid.block_{i + 1}.", f"mid_block.resnets.{i}."))
    attn = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
    out = {}
    for k, v in sd.items():
        nk = k
        for s, h in m:
            nk = nk.replace(h, s)
        if "attn_1" in nk:
            for s, h in attn:
                nk = nk.replace(h, s)
            if nk.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")) and v.ndim == 2:
                v = v.reshape(*v.shape, 1, 1)  # the LDM VAE uses 1x1 convs where diffusers uses linears
        out["first_stage_model." + nk] = v
    return out


def _clip_l(te) -> dict:
    # transformers >= 5.6 dropped the "text_model." prefix; A1111/Civitai files always carry it
    return {(k if k.startswith("text_model.") else "text_model." + k): t for k, t in te.state_dict().items()}


def _clip_to_openclip(sd: dict, prefix: str) -> dict:
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    out = {
        prefix + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        prefix + "positional_embedding": sd["embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": sd["final_layer_norm.weight"],
        prefix + "ln_final.bias": sd["final_layer_norm.bias"],
        prefix + "text_projection": sd["text_projection.weight"].T.contiguous(),
    }
    n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    for i in range(n):
        s, d = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        out[d + "attn.in_proj_weight"] = torch.cat([sd[s + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        out[d + "attn.in_proj_bias"] = torch.cat([sd[s + f"self_attn.{x}_proj.bias"] for x in "qkv"])
        for a, b in [
            ("self_attn.out_proj", "attn.out_proj"),
            ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
        ]:
            for w in ("weight", "bias"):
                out[d + f"{b}.{w}"] = sd[s + f"{a}.{w}"]
    return out


def _unet_vae_ldm(pipe, unet_sd: dict) -> dict:
    u = pipe.unet.config
    sd = _unet_to_ldm(
        unet_sd,
        len(u.block_out_channels),
        u.layers_per_block,
        ["CrossAttn" in t for t in u.down_block_types],
        ["CrossAttn" in t for t in u.up_block_types],
    )
    v = pipe.vae.config
    sd.update(_vae_to_ldm(pipe.vae.state_dict(), len(v.block_out_channels), v.layers_per_block))
    return sd


def to_ldm_sd15(pipe) -> dict:
    sd = _unet_vae_ldm(pipe, pipe.unet.state_dict())
    sd.update({"cond_stage_model.transformer." + k: t for k, t in _clip_l(pipe.text_encoder).items()})
    return {k: t.contiguous() for k, t in sd.items()}


def to_ldm_sdxl(pipe) -> dict:
    usd = {
        k.replace("add_embedding.linear_1.", "label_emb.0.0.").replace("add_embedding.linear_2.", "label_emb.0.2."): v
        for k, v in pipe.unet.state_dict().items()
    }
    sd = _unet_vae_ldm(pipe, usd)
    sd.update({"conditioner.embedders.0.transformer." + k: t for k, t in _clip_l(pipe.text_encoder).items()})
    sd.update(_clip_to_openclip(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    return {k: t.contiguous() for k, t in sd.items()}


def save_single_file(pipe, path: Path) -> Path:
    """The pipeline as one Civitai-style ``.safetensors`` (or ``.ckpt``: a pickled ``{"state_dict": ...}``)."""
    from safetensors.torch import save_file

    sd = to_ldm_sdxl(pipe) if hasattr(pipe, "text_encoder_2") else to_ldm_sd15(pipe)
    path = Path(path)
    if path.suffix == ".ckpt":
        torch.save({"state_dict": sd}, path)
    else:
        save_file(sd, str(path))
    return path


# --- LoRAs and embeddings -------------------------------------------------------------------------


def make_unet_lora(pipe, seed: int = 1, rank: int = 4, scale: float = 0.3) -> dict:
    """A random UNet LoRA in diffusers/peft key layout (``<module>.lora.down.weight``)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, mod in pipe.unet.named_modules():
        if name.endswith(
            ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "attn2.to_k", "attn2.to_v")
        ) or name.endswith(("attn1.to_out.0", "attn2.to_out.0")):
            out[f"{name}.lora.down.weight"] = torch.randn(rank, mod.in_features, generator=g) * scale
            out[f"{name}.lora.up.weight"] = torch.randn(mod.out_features, rank, generator=g) * scale
    return out


def save_diffusers_lora(pipe, path: Path, seed: int = 1) -> Path:
    """Diffusers-format LoRA file (``unet.<module>.lora.down.weight``), as ``save_lora_weights`` writes."""
    from safetensors.torch import save_file

    sd = {"unet." + k: v.contiguous() for k, v in make_unet_lora(pipe, seed).items()}
    save_file(sd, str(path))
    return Path(path)


def save_kohya_lora(pipe, path: Path, seed: int = 1, with_text_encoder: bool = True) -> Path:
    """kohya-ss / Civitai LoRA (``lora_unet_*``, ``lora_te*_*``, ``.alpha``), the format most Civitai LoRAs use."""
    from safetensors.torch import save_file

    rank = 4
    out = {}
    for k, v in make_unet_lora(pipe, seed, rank).items():
        module, rest = k.split(".lora.")
        name = "lora_unet_" + module.replace(".", "_")
        out[name + (".lora_down.weight" if rest.startswith("down") else ".lora_up.weight")] = v.contiguous()
        out[name + ".alpha"] = torch.tensor(float(rank))
    if with_text_encoder:
        g = torch.Generator().manual_seed(seed + 100)
        encoders = (
            [("lora_te1", pipe.text_encoder), ("lora_te2", pipe.text_encoder_2)]
            if hasattr(pipe, "text_encoder_2")
            else [("lora_te", pipe.text_encoder)]
        )
        for prefix, te in encoders:
            hidden = te.config.hidden_size
            for layer in range(te.config.num_hidden_layers):
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    n = f"{prefix}_text_model_encoder_layers_{layer}_self_attn_{proj}"
                    out[n + ".lora_down.weight"] = torch.randn(rank, hidden, generator=g) * 0.1
                    out[n + ".lora_up.weight"] = torch.randn(hidden, rank, generator=g) * 0.1
                    out[n + ".alpha"] = torch.tensor(float(rank))
    save_file(out, str(path))
    return Path(path)


def save_embedding(pipe, path: Path, vectors: int = 2, seed: int = 3) -> Path:
    """Textual inversion as Civitai ships it: SD 1.5 ``emb_params`` [n, 768-ish]; SDXL ``clip_l``/``clip_g``."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    if hasattr(pipe, "text_encoder_2"):
        sd = {
            "clip_l": torch.randn(vectors, pipe.text_encoder.config.hidden_size, generator=g),
            "clip_g": torch.randn(vectors, pipe.text_encoder_2.config.hidden_size, generator=g),
        }
    else:
        sd = {"emb_params": torch.randn(vectors, pipe.text_encoder.config.hidden_size, generator=g)}
    save_file(sd, str(path))
    return Path(path)


def save_vae(pipe, path: Path, seed: int = 5) -> Path:
    """A standalone VAE as Civitai and the reference repos ship it (vae-ft-mse, sdxl_vae): the pipeline's VAE
    architecture with other random weights, in the LDM key layout without the checkpoint's ``first_stage_model.``."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(pipe.vae.config)
    v = vae.config
    sd = _vae_to_ldm(vae.state_dict(), len(v.block_out_channels), v.layers_per_block)
    save_file({k.removeprefix("first_stage_model."): t.contiguous() for k, t in sd.items()}, str(path))
    return Path(path)


def quiet_diffusers() -> None:
    """Hide progress bars and the benign LoRA 'missing keys' notices in test output."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()


# --- FLUX.1 and SD 3 (flow-matching transformers, T5) ---------------------------------------------


def write_t5_tokenizer(dirpath: Path) -> int:
    """A T5 tokenizer (sentencepiece-style Unigram) whose pieces are the printable characters. Returns its size."""
    import string

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in string.printable if not c.isspace()]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", model_max_length=512, extra_ids=0
    ).save_pretrained(dirpath)
    return len(pieces)


def tiny_t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def tiny_flow_vae(latent_channels: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def build_flux(outdir: Path, seed: int = 0):
    """A FLUX.1-architecture pipeline (CLIP + T5, a 1+1-block transformer, 1-channel VAE) saved as a folder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTokenizer, T5TokenizerFast

    torch.manual_seed(seed)
    vocab = write_byte_tokenizer(outdir / "_tokenizer")
    t5_vocab = write_t5_tokenizer(outdir / "_t5")
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_flow_vae(1),
        text_encoder=tiny_text_encoder(vocab),
        tokenizer=CLIPTokenizer.from_pretrained(outdir / "_tokenizer"),
        text_encoder_2=tiny_t5(t5_vocab),
        tokenizer_2=T5TokenizerFast.from_pretrained(outdir / "_t5"),
        transformer=FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=[4, 4, 8],
        ),
    )
    pipe.save_pretrained(outdir)
    return pipe


def build_sd3(outdir: Path, seed: int = 0):
    """A Stable Diffusion 3-architecture pipeline (two CLIPs + T5, a 1-block MMDiT) saved as a folder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer, T5TokenizerFast

    torch.manual_seed(seed)
    vocab = write_byte_tokenizer(outdir / "_tokenizer")
    t5_vocab = write_t5_tokenizer(outdir / "_t5")
    clip = CLIPTokenizer.from_pretrained(outdir / "_tokenizer")
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_flow_vae(4),
        text_encoder=tiny_text_encoder(vocab, projection=32),
        tokenizer=clip,
        text_encoder_2=tiny_text_encoder(vocab, projection=32),
        tokenizer_2=clip,
        text_encoder_3=tiny_t5(t5_vocab),
        tokenizer_3=T5TokenizerFast.from_pretrained(outdir / "_t5"),
        transformer=SD3Transformer2DModel(
            sample_size=32,
            patch_size=1,
            in_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=32,
            pooled_projection_dim=64,
            out_channels=4,
        ),
    )
    pipe.save_pretrained(outdir)
    return pipe


def save_transformer_lora(pipe, path: Path, seed: int = 1, rank: int = 4) -> Path:
    """A diffusers/PEFT-format LoRA on every attention projection of the pipeline's transformer
    (``transformer.<module>.lora_A.weight`` / ``lora_B.weight``), as ``save_lora_weights`` writes for FLUX.1 / SD 3."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in pipe.transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v"):
            out[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.5
            out[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.5
    save_file(out, str(path))
    return Path(path)


#: FLUX.1 double-block modules by their names in Black Forest Labs' layout (kohya / ComfyUI LoRAs) and in diffusers'
#: (ai-toolkit / PEFT LoRAs); the fused ones (qkv) list their parts in order
_FLUX_DOUBLE_LORA = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "txt_mod.lin": ("norm1_context.linear",),
}
#: single blocks: linear1 (q, k, v and the MLP fused at FLUX.1's 3,072 width, which diffusers' kohya converter
#: assumes) is left out of the tiny LoRA
_FLUX_SINGLE_LORA = {"linear2": ("proj_out",), "modulation.lin": ("norm.linear",)}


def save_flux_lora_layouts(pipe, root: Path, seed: int = 3, rank: int = 2) -> dict[str, Path]:
    """One random LoRA over a FLUX.1 transformer's double- and single-block linears, saved in each layout people
    publish: ``ai-toolkit`` (diffusers names, ``transformer.`` prefix, lora_A / lora_B, every linear as ai-toolkit
    trains them), ``kohya`` (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`` with alpha, q / k / v fused:
    the down matrices stacked, the up matrices block-diagonal), ``comfyui-kohya`` (the same with ComfyUI's
    ``diffusion_model.`` prefix and dotted names) and ``comfyui-peft`` (those names with lora_A / lora_B). All four
    are the same weight update, so they must render the same image."""
    layers = [
        (f"double_blocks.{i}.{bfl}", f"transformer_blocks.{i}", parts, False)
        for i in range(len(pipe.transformer.transformer_blocks))
        for bfl, parts in _FLUX_DOUBLE_LORA.items()
    ]
    layers += [
        (f"single_blocks.{i}.{bfl}", f"single_transformer_blocks.{i}", parts, False)
        for i in range(len(pipe.transformer.single_transformer_blocks))
        for bfl, parts in _FLUX_SINGLE_LORA.items()
    ]
    return _save_lora_layouts(pipe, Path(root) / "flux-lora", layers, "ai-toolkit", seed, rank)


#: SD 3 joint-block modules in Stability AI's names -> diffusers' (fused qkv lists its parts in order)
_SD3_LORA = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "x_block.attn.proj": ("attn.to_out.0",),
    "x_block.mlp.fc1": ("ff.net.0.proj",),
    "x_block.mlp.fc2": ("ff.net.2",),
    "x_block.adaLN_modulation.1": ("norm1.linear",),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "context_block.adaLN_modulation.1": ("norm1_context.linear",),
}


def save_sd3_lora_layouts(pipe, root: Path, seed: int = 4, rank: int = 2) -> dict[str, Path]:
    """One random LoRA over an SD 3 transformer's joint blocks in the layouts people publish: ``peft`` (diffusers
    names, ``transformer.`` prefix), ``kohya`` (``lora_unet_joint_blocks_0_x_block_attn_qkv``, alpha; q / k / v fused
    as stacked down and block-diagonal up matrices), ``comfyui-kohya`` (``diffusion_model.joint_blocks.0...`` with
    lora_down / lora_up) and ``comfyui-peft`` (those names with lora_A / lora_B). In Stability AI's layout the last
    block's context modulation is (shift, scale), in diffusers' (scale, shift): its up matrix is written swapped."""
    blocks = pipe.transformer.transformer_blocks
    modules = dict(pipe.transformer.named_modules())
    layers = [
        (
            f"joint_blocks.{i}.{bfl}",
            f"transformer_blocks.{i}",
            parts,
            bfl == "context_block.adaLN_modulation.1" and i == len(blocks) - 1,
        )
        for i in range(len(blocks))
        for bfl, parts in _SD3_LORA.items()
        if all(f"transformer_blocks.{i}.{part}" in modules for part in parts)
    ]
    return _save_lora_layouts(pipe, Path(root) / "sd3-lora", layers, "peft", seed, rank)


def _save_lora_layouts(pipe, stem: Path, layers, diffusers_layout: str, seed: int, rank: int) -> dict[str, Path]:
    """``layers``: (the module's name in its makers' layout, its diffusers block, the diffusers modules it fuses, swap
    the halves of its output: (shift, scale) there, (scale, shift) in diffusers). Files ``<stem>-<layout>``."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    modules = dict(pipe.transformer.named_modules())
    layouts: dict[str, dict] = {diffusers_layout: {}, "kohya": {}, "comfyui-kohya": {}, "comfyui-peft": {}}
    for original, block, parts, swap in layers:
        downs, ups = [], []
        for part in parts:
            module = modules[f"{block}.{part}"]
            a = torch.randn(rank, module.in_features, generator=g) * 0.3
            b = torch.randn(module.out_features, rank, generator=g) * 0.3
            layouts[diffusers_layout][f"transformer.{block}.{part}.lora_A.weight"] = a
            layouts[diffusers_layout][f"transformer.{block}.{part}.lora_B.weight"] = b
            downs.append(a)
            ups.append(b)
        down, up = torch.cat(downs), torch.block_diag(*ups)
        if swap:
            scale_rows, shift = up.chunk(2, dim=0)
            up = torch.cat([shift, scale_rows], dim=0)
        alpha = torch.tensor(float(down.shape[0]))  # alpha = rank: scale 1, as the PEFT layout has it
        for layout, name, (d, u) in (
            ("kohya", "lora_unet_" + original.replace(".", "_"), ("lora_down", "lora_up")),
            ("comfyui-kohya", f"diffusion_model.{original}", ("lora_down", "lora_up")),
            ("comfyui-peft", f"diffusion_model.{original}", ("lora_A", "lora_B")),
        ):
            layouts[layout][f"{name}.{d}.weight"] = down
            layouts[layout][f"{name}.{u}.weight"] = up
            layouts[layout][f"{name}.alpha"] = alpha
    paths = {}
    for layout, tensors in layouts.items():
        paths[layout] = stem.with_name(f"{stem.name}-{layout}.safetensors")
        save_file({key: v.contiguous() for key, v in tensors.items()}, str(paths[layout]))
    return paths


def flux_to_original(sd: dict) -> dict:
    """A diffusers ``FluxTransformer2DModel`` state dict in Black Forest Labs' single-file layout (what
    ``render/flow_files.flux_from_original`` reads back): fused qkv, single blocks' fused input, the final norm's
    (shift, scale) order."""
    sd = dict(sd)
    out = {}

    def take(src: str, dst: str) -> None:
        for part in ("weight", "bias"):
            if f"{src}.{part}" in sd:
                out[f"{dst}.{part}"] = sd.pop(f"{src}.{part}")

    for src, dst in (
        ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
        ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
        ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
        ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
        ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
        ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
        ("context_embedder", "txt_in"),
        ("x_embedder", "img_in"),
        ("proj_out", "final_layer.linear"),
    ):
        take(src, dst)
    for part in ("weight", "bias"):
        scale, shift = sd.pop(f"norm_out.linear.{part}").chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{part}"] = torch.cat([shift, scale], dim=0)
    for i in sorted({int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks.")}):
        b, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for src, dst in (
            ("norm1.linear", "img_mod.lin"),
            ("norm1_context.linear", "txt_mod.lin"),
            ("ff.net.0.proj", "img_mlp.0"),
            ("ff.net.2", "img_mlp.2"),
            ("ff_context.net.0.proj", "txt_mlp.0"),
            ("ff_context.net.2", "txt_mlp.2"),
            ("attn.to_out.0", "img_attn.proj"),
            ("attn.to_add_out", "txt_attn.proj"),
        ):
            take(b + src, o + dst)
        for part in ("weight", "bias"):
            out[f"{o}img_attn.qkv.{part}"] = torch.cat([sd.pop(f"{b}attn.to_{x}.{part}") for x in "qkv"])
            out[f"{o}txt_attn.qkv.{part}"] = torch.cat([sd.pop(f"{b}attn.add_{x}_proj.{part}") for x in "qkv"])
        for src, dst in (
            ("norm_q", "img_attn.norm.query_norm"),
            ("norm_k", "img_attn.norm.key_norm"),
            ("norm_added_q", "txt_attn.norm.query_norm"),
            ("norm_added_k", "txt_attn.norm.key_norm"),
        ):
            out[f"{o}{dst}.scale"] = sd.pop(f"{b}attn.{src}.weight")
    for i in sorted({int(k.split(".")[1]) for k in sd if k.startswith("single_transformer_blocks.")}):
        b, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        take(b + "norm.linear", o + "modulation.lin")
        take(b + "proj_out", o + "linear2")
        for part in ("weight", "bias"):
            out[f"{o}linear1.{part}"] = torch.cat(
                [sd.pop(f"{b}attn.to_{x}.{part}") for x in "qkv"] + [sd.pop(f"{b}proj_mlp.{part}")]
            )
        out[f"{o}norm.query_norm.scale"] = sd.pop(f"{b}attn.norm_q.weight")
        out[f"{o}norm.key_norm.scale"] = sd.pop(f"{b}attn.norm_k.weight")
    if sd:
        raise ValueError(f"unmapped FLUX.1 weights: {sorted(sd)[:5]}")
    return out


def save_flux_single_file(pipe, path: Path, prefix: str = "", drop: tuple[str, ...] = (), dtype=None) -> Path:
    """The pipeline's transformer alone, as Black Forest Labs publish ``flux1-dev.safetensors`` (``prefix``:
    ComfyUI's ``model.diffusion_model.``; ``drop``: keys to leave out, for a broken file; ``dtype``: e.g.
    ``torch.float8_e4m3fn``, as most fine-tunes are shared)."""
    from safetensors.torch import save_file

    state = {
        prefix + k: (v if dtype is None else v.to(dtype)).contiguous()
        for k, v in flux_to_original(pipe.transformer.state_dict()).items()
        if k not in drop
    }
    save_file(state, str(path))
    return Path(path)


def sd3_to_original(sd: dict) -> dict:
    """A diffusers ``SD3Transformer2DModel`` state dict in Stability AI's single-file layout (joint blocks with fused
    qkv; the last context block and the final norm in (shift, scale) order), the inverse of diffusers' converter."""
    sd = dict(sd)
    out = {"pos_embed": sd.pop("pos_embed.pos_embed")}

    def take(src: str, dst: str, swap: bool = False) -> None:
        for part in ("weight", "bias"):
            if f"{src}.{part}" in sd:
                t = sd.pop(f"{src}.{part}")
                if swap:
                    scale, shift = t.chunk(2, dim=0)
                    t = torch.cat([shift, scale], dim=0)
                out[f"{dst}.{part}"] = t

    for src, dst in (
        ("pos_embed.proj", "x_embedder.proj"),
        ("context_embedder", "context_embedder"),
        ("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0"),
        ("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2"),
        ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
        ("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2"),
        ("proj_out", "final_layer.linear"),
    ):
        take(src, dst)
    take("norm_out.linear", "final_layer.adaLN_modulation.1", swap=True)
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks.")})
    for i in blocks:
        b, x, c = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        last = i == blocks[-1]
        for part in ("weight", "bias"):
            out[f"{x}attn.qkv.{part}"] = torch.cat([sd.pop(f"{b}attn.to_{n}.{part}") for n in "qkv"])
            out[f"{c}attn.qkv.{part}"] = torch.cat([sd.pop(f"{b}attn.add_{n}_proj.{part}") for n in "qkv"])
            if f"{b}attn2.to_q.{part}" in sd:
                out[f"{x}attn2.qkv.{part}"] = torch.cat([sd.pop(f"{b}attn2.to_{n}.{part}") for n in "qkv"])
        for src, dst in (
            ("attn.norm_q", x + "attn.ln_q"),
            ("attn.norm_k", x + "attn.ln_k"),
            ("attn.norm_added_q", c + "attn.ln_q"),
            ("attn.norm_added_k", c + "attn.ln_k"),
            ("attn2.norm_q", x + "attn2.ln_q"),
            ("attn2.norm_k", x + "attn2.ln_k"),
        ):
            if f"{b}{src}.weight" in sd:
                out[f"{dst}.weight"] = sd.pop(f"{b}{src}.weight")
        for src, dst in (
            ("attn.to_out.0", x + "attn.proj"),
            ("attn.to_add_out", c + "attn.proj"),
            ("attn2.to_out.0", x + "attn2.proj"),
            ("norm1.linear", x + "adaLN_modulation.1"),
            ("ff.net.0.proj", x + "mlp.fc1"),
            ("ff.net.2", x + "mlp.fc2"),
            ("ff_context.net.0.proj", c + "mlp.fc1"),
            ("ff_context.net.2", c + "mlp.fc2"),
        ):
            take(b + src, dst)
        take(b + "norm1_context.linear", c + "adaLN_modulation.1", swap=last)
    if sd:
        raise ValueError(f"unmapped SD 3 weights: {sorted(sd)[:5]}")
    return out


def save_sd3_single_file(pipe, path: Path) -> Path:
    """The pipeline's transformer alone, in Stability AI's layout under ComfyUI's prefix."""
    from safetensors.torch import save_file

    save_file(
        {
            f"model.diffusion_model.{k}": v.contiguous()
            for k, v in sd3_to_original(pipe.transformer.state_dict()).items()
        },
        str(path),
    )
    return Path(path)
