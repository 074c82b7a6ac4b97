"""FLUX.1 and SD 3.5 single files: the transformer alone, in its makers' layout (``flux1-dev.safetensors``,
``sd3.5_large.safetensors`` and the fine-tunes people publish the same way, bare or under ComfyUI's
``model.diffusion_model.`` prefix).

Such a file holds no text encoders, tokenizers, VAE or scheduler: those come from the diffusers folder of the
reference model of its kind (FLUX.1 [dev] when the file has the guidance embedder, else [schnell]; SD 3.5 Medium when
it has the second attention of MMDiT-X, else Large), whose transformer config the file must match. SD 3 files go
through diffusers' converter (it reads the sizes from the tensors). FLUX.1's conversion is written here, because
diffusers' assumes the reference width (3,072) and so cannot read a file of any other size; every tensor of the file
must land on exactly one parameter of the model, or loading fails naming what did not.
"""

from __future__ import annotations

from pathlib import Path

from diffagent.errors import UserInputError
from diffagent.families import COMFY_PREFIX, FLOW_REFERENCES, flow_family_of_keys

#: the reference model whose folder completes a FLUX.1 transformer file, by "has the guidance embedder"
FLUX_REFERENCES = {True: FLOW_REFERENCES["flux"]["dev"], False: FLOW_REFERENCES["flux"]["schnell"]}
#: ... and an SD 3 one, by "has MMDiT-X's second attention"
SD3_REFERENCES = {True: FLOW_REFERENCES["sd3"]["medium"], False: FLOW_REFERENCES["sd3"]["large"]}


def reference_slug(path: Path) -> str:
    """The curated reference model whose folder completes this FLUX.1 or SD 3 transformer file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = [k.removeprefix(COMFY_PREFIX) for k in f.keys()]
    family = flow_family_of_keys(keys)
    if family == "flux":
        return FLUX_REFERENCES[any(k.startswith("guidance_in.") for k in keys)]
    if family == "sd3":
        return SD3_REFERENCES[any(".x_block.attn2." in k for k in keys)]
    raise UserInputError(
        f"{Path(path).name} is not a FLUX.1 or SD 3 transformer file (no double_blocks or joint_blocks)"
    )


def flux_from_original(sd: dict) -> dict:
    """Black Forest Labs' FLUX.1 transformer keys -> ``FluxTransformer2DModel``'s, widths read from the tensors."""
    import torch

    sd = {k.removeprefix(COMFY_PREFIX): v for k, v in sd.items() if k.removeprefix(COMFY_PREFIX).split(".")[0] in _TOP}
    out = {}

    def take(src: str, dst: str) -> None:
        for part in ("weight", "bias"):
            if f"{src}.{part}" in sd:
                out[f"{dst}.{part}"] = sd.pop(f"{src}.{part}")

    for dst, src in _RENAMED.items():
        take(src, dst)
    for part in ("weight", "bias"):  # BFL's final norm is (shift, scale); diffusers' is (scale, shift)
        shift, scale = sd.pop(f"final_layer.adaLN_modulation.1.{part}").chunk(2, dim=0)
        out[f"norm_out.linear.{part}"] = torch.cat([scale, shift], dim=0)
    width = out["x_embedder.weight"].shape[0]
    for i in sorted({int(k.split(".")[1]) for k in sd if k.startswith("double_blocks.")}):
        o, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for dst, src in _DOUBLE.items():
            take(b + src, o + dst)
        for part in ("weight", "bias"):
            for stream, names in _QKV.items():
                for name, t in zip(names, sd.pop(f"{b}{stream}_attn.qkv.{part}").chunk(3, dim=0), strict=True):
                    out[f"{o}attn.{name}.{part}"] = t
        for dst, src in (
            ("norm_q", "img_attn.norm.query_norm"),
            ("norm_k", "img_attn.norm.key_norm"),
            ("norm_added_q", "txt_attn.norm.query_norm"),
            ("norm_added_k", "txt_attn.norm.key_norm"),
        ):
            out[f"{o}attn.{dst}.weight"] = sd.pop(f"{b}{src}.scale")
    for i in sorted({int(k.split(".")[1]) for k in sd if k.startswith("single_blocks.")}):
        o, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        take(b + "modulation.lin", o + "norm.linear")
        take(b + "linear2", o + "proj_out")
        for part in ("weight", "bias"):
            fused = sd.pop(f"{b}linear1.{part}")
            q, k, v, mlp = fused.split([width, width, width, fused.shape[0] - 3 * width], dim=0)
            for name, t in (("attn.to_q", q), ("attn.to_k", k), ("attn.to_v", v), ("proj_mlp", mlp)):
                out[f"{o}{name}.{part}"] = t
        out[f"{o}attn.norm_q.weight"] = sd.pop(f"{b}norm.query_norm.scale")
        out[f"{o}attn.norm_k.weight"] = sd.pop(f"{b}norm.key_norm.scale")
    if sd:
        raise UserInputError(f"FLUX.1 file has tensors diffagent cannot place: {sorted(sd)[:5]}")
    return out


#: top-level transformer modules of a BFL file (an all-in-one file's text encoders and VAE are left out)
_TOP = {"img_in", "txt_in", "time_in", "vector_in", "guidance_in", "double_blocks", "single_blocks", "final_layer"}
_RENAMED = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
_QKV = {"img": ("to_q", "to_k", "to_v"), "txt": ("add_q_proj", "add_k_proj", "add_v_proj")}
_DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
}


def load_sd3_transformer(path: Path, reference: Path, dtype):
    """The transformer of an SD 3 single file, with the reference folder's transformer config."""
    from diffusers import SD3Transformer2DModel

    from diffagent.render.pipelines import dtype_kwarg

    try:
        return SD3Transformer2DModel.from_single_file(
            str(path), config=str(reference), subfolder="transformer", local_files_only=True, **{dtype_kwarg(): dtype}
        )
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserInputError(
            f"{Path(path).name} does not fit the SD 3 transformer of {Path(reference).name} ({e}); "
            "is it an SD 3.5 transformer of the same size?"
        ) from e


def load_flux_transformer(path: Path, reference: Path, dtype):
    """The transformer of a FLUX.1 single file, built from the reference folder's transformer config."""
    import torch
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    config = FluxTransformer2DModel.load_config(Path(reference) / "transformer", local_files_only=True)
    state = flux_from_original(load_file(str(path)))
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise UserInputError(
            f"{Path(path).name} does not fit the FLUX.1 transformer of {Path(reference).name} "
            f"(missing {missing[:3]}, unexpected {extra[:3]}, other shapes {wrong[:3]}); "
            "is it a FLUX.1 transformer of the same size?"
        )
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.eval()
