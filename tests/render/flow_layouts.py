"""The reference FLUX.1 and Stable Diffusion 3.5 transformers: their diffusers configs (from the models' Hugging Face
repositories) and the key layout of the single files their makers publish (Black Forest Labs' ``flux1-dev.safetensors``,
Stability AI's ``sd3.5_large.safetensors``), written from the architectures, as ``{key: shape}``. Tests check them
against diffusers' single-file converters on the meta device (no weights allocated)."""

from __future__ import annotations

FLUX_DEV = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_SCHNELL = {**FLUX_DEV, "guidance_embeds": False}
SD35_LARGE = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=38,
    attention_head_dim=64,
    num_attention_heads=38,
    joint_attention_dim=4096,
    caption_projection_dim=2432,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=192,
    qk_norm="rms_norm",
)
SD35_MEDIUM = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=384,
    qk_norm="rms_norm",
    dual_attention_layers=tuple(range(13)),
)


def _linear(layout: dict, name: str, out: int, inp: int) -> None:
    layout[f"{name}.weight"] = (out, inp)
    layout[f"{name}.bias"] = (out,)


def flux_original_layout(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Black Forest Labs' FLUX.1 transformer file: double blocks (image and text streams, fused qkv, RMS q/k norms,
    modulation) and single blocks (fused qkv + MLP input, fused output)."""
    h, d = cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["attention_head_dim"]
    mlp = 4 * h
    out: dict[str, tuple[int, ...]] = {}
    _linear(out, "img_in", h, cfg["in_channels"])
    _linear(out, "txt_in", h, cfg["joint_attention_dim"])
    for emb, width in (("time_in", 256), ("vector_in", cfg["pooled_projection_dim"])) + (
        (("guidance_in", 256),) if cfg.get("guidance_embeds") else ()
    ):
        _linear(out, f"{emb}.in_layer", h, width)
        _linear(out, f"{emb}.out_layer", h, h)
    for i in range(cfg["num_layers"]):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}_"
            _linear(out, p + "mod.lin", 6 * h, h)
            _linear(out, p + "attn.qkv", 3 * h, h)
            _linear(out, p + "attn.proj", h, h)
            out[p + "attn.norm.query_norm.scale"] = out[p + "attn.norm.key_norm.scale"] = (d,)
            _linear(out, p + "mlp.0", mlp, h)
            _linear(out, p + "mlp.2", h, mlp)
    for i in range(cfg["num_single_layers"]):
        p = f"single_blocks.{i}."
        _linear(out, p + "modulation.lin", 3 * h, h)
        _linear(out, p + "linear1", 3 * h + mlp, h)
        _linear(out, p + "linear2", h, h + mlp)
        out[p + "norm.query_norm.scale"] = out[p + "norm.key_norm.scale"] = (d,)
    _linear(out, "final_layer.linear", cfg["patch_size"] ** 2 * cfg["in_channels"], h)
    _linear(out, "final_layer.adaLN_modulation.1", 2 * h, h)
    return out


def sd3_original_layout(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Stability AI's SD 3 / 3.5 MMDiT file: joint blocks (x and context streams; the last context block only
    modulates and projects qkv), RMS q/k norms for 3.5, a second self-attention in 3.5 Medium's first blocks."""
    h, d, p = cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["attention_head_dim"], cfg["patch_size"]
    out: dict[str, tuple[int, ...]] = {
        "pos_embed": (1, cfg["pos_embed_max_size"] ** 2, h),
        "x_embedder.proj.weight": (h, cfg["in_channels"], p, p),
        "x_embedder.proj.bias": (h,),
    }
    _linear(out, "t_embedder.mlp.0", h, 256)
    _linear(out, "t_embedder.mlp.2", h, h)
    _linear(out, "y_embedder.mlp.0", h, cfg["pooled_projection_dim"])
    _linear(out, "y_embedder.mlp.2", h, h)
    _linear(out, "context_embedder", cfg["caption_projection_dim"], cfg["joint_attention_dim"])
    n, dual = cfg["num_layers"], set(cfg.get("dual_attention_layers", ()))
    for i in range(n):
        for block in ("x_block", "context_block"):
            b = f"joint_blocks.{i}.{block}."
            pre_only = block == "context_block" and i == n - 1
            chunks = 2 if pre_only else 9 if (block == "x_block" and i in dual) else 6
            _linear(out, b + "adaLN_modulation.1", chunks * h, h)
            _linear(out, b + "attn.qkv", 3 * h, h)
            if cfg.get("qk_norm"):
                out[b + "attn.ln_q.weight"] = out[b + "attn.ln_k.weight"] = (d,)
            if not pre_only:
                _linear(out, b + "attn.proj", h, h)
                _linear(out, b + "mlp.fc1", 4 * h, h)
                _linear(out, b + "mlp.fc2", h, 4 * h)
        if i in dual:
            b = f"joint_blocks.{i}.x_block.attn2."
            _linear(out, b + "qkv", 3 * h, h)
            _linear(out, b + "proj", h, h)
            if cfg.get("qk_norm"):
                out[b + "ln_q.weight"] = out[b + "ln_k.weight"] = (d,)
    _linear(out, "final_layer.linear", p * p * cfg["out_channels"], h)
    _linear(out, "final_layer.adaLN_modulation.1", 2 * h, h)
    return out
