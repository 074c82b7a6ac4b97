"""LoRA files in the layouts diffusers does not read for FLUX.1 / SD 3, turned into ones it does.

diffusers reads kohya's, ComfyUI's kohya-style and ai-toolkit's / PEFT's FLUX.1 LoRAs, and only PEFT's SD 3 ones.
Two layouts people publish fall outside that:

- FLUX.1 LoRAs with Black Forest Labs' module names and PEFT's ``lora_A`` / ``lora_B``
  (``diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight``, ComfyUI-format exports): renamed to kohya's
  ``lora_down`` / ``lora_up``, which diffusers then converts;
- SD 3 / 3.5 LoRAs in Stability AI's module names, kohya's (``lora_unet_joint_blocks_0_x_block_attn_qkv``) or
  ComfyUI's (``diffusion_model.joint_blocks.0.x_block.attn.qkv``), with ``lora_down`` / ``lora_up`` or ``lora_A`` /
  ``lora_B``: converted here to diffusers' names. A fused qkv update ``up @ down`` splits exactly into q, k and v
  updates that share ``down`` and take a third of ``up`` each; kohya's ``alpha / rank`` scale goes into ``up``; the
  last block's context modulation is in (shift, scale) order there and (scale, shift) in diffusers, as in the
  checkpoint converter.
"""

from __future__ import annotations

import re
from pathlib import Path

from diffagent.errors import UserInputError


def _keys(path: Path) -> list[str]:
    if Path(path).suffix != ".safetensors":
        return []
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _bfl_lora_a_names(keys: list[str]) -> bool:
    return any(
        k.startswith("diffusion_model.")
        and k.endswith((".lora_A.weight", ".lora_B.weight"))
        and ("double_blocks." in k or "single_blocks." in k)
        for k in keys
    )


#: Stability AI's joint-block modules -> diffusers' (fused ones list their parts in order)
_SD3_MODULES = {
    ("x_block", "attn.qkv"): ("attn.to_q", "attn.to_k", "attn.to_v"),
    ("x_block", "attn.proj"): ("attn.to_out.0",),
    ("x_block", "attn2.qkv"): ("attn2.to_q", "attn2.to_k", "attn2.to_v"),  # MMDiT-X (SD 3.5 Medium)
    ("x_block", "attn2.proj"): ("attn2.to_out.0",),
    ("x_block", "mlp.fc1"): ("ff.net.0.proj",),
    ("x_block", "mlp.fc2"): ("ff.net.2",),
    ("x_block", "adaLN_modulation.1"): ("norm1.linear",),
    ("context_block", "attn.qkv"): ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    ("context_block", "attn.proj"): ("attn.to_add_out",),
    ("context_block", "mlp.fc1"): ("ff_context.net.0.proj",),
    ("context_block", "mlp.fc2"): ("ff_context.net.2",),
    ("context_block", "adaLN_modulation.1"): ("norm1_context.linear",),
}
_SD3_NAME = re.compile(
    r"^(?:lora_unet_|diffusion_model\.|model\.diffusion_model\.)?joint_blocks[._](\d+)[._]"
    r"(x_block|context_block)[._](attn2?[._](?:qkv|proj)|mlp[._]fc[12]|adaLN_modulation[._]1)"
    r"\.(lora_down|lora_up|lora_A|lora_B|alpha)(?:\.weight)?$"
)


def sd3_from_original(state: dict, last_block: int) -> dict:
    """A Stability AI-named SD 3 LoRA (kohya or ComfyUI) -> diffusers' ``transformer.*.lora_A/B.weight``."""
    import torch

    parts: dict[tuple, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = _SD3_NAME.match(key)
        if m is None:
            encoder = key.startswith(("lora_te", "text_encoders."))
            what = "a text-encoder layer" if encoder else "not a joint-block layer"
            raise UserInputError(
                f"SD 3 LoRA tensor {key!r} is {what}; diffagent loads SD 3 LoRAs of the transformer "
                "(attn/attn2 qkv and proj, mlp fc1/fc2, adaLN modulation): use a transformer-only "
                "version of the LoRA"
            )
        block, part, module, what = int(m[1]), m[2], m[3], m[4]
        module = re.sub(r"[._]", ".", module).replace("adaLN.modulation", "adaLN_modulation")
        parts.setdefault((block, part, module), {})[{"lora_A": "lora_down", "lora_B": "lora_up"}.get(what, what)] = (
            tensor
        )
    out = {}
    for (block, part, module), t in parts.items():
        if "lora_down" not in t or "lora_up" not in t:
            raise UserInputError(f"SD 3 LoRA layer joint_blocks.{block}.{part}.{module} lacks its down or up matrix")
        down, up = t["lora_down"].float(), t["lora_up"].float()
        rank = down.shape[0]
        scale = float(t["alpha"]) / rank if "alpha" in t else 1.0
        up = up * scale
        if part == "context_block" and module == "adaLN_modulation.1" and block == last_block:
            shift, scale_rows = up.chunk(2, dim=0)
            up = torch.cat([scale_rows, shift], dim=0)
        targets = _SD3_MODULES[(part, module)]
        for target, up_part in zip(targets, up.chunk(len(targets), dim=0), strict=True):
            out[f"transformer.transformer_blocks.{block}.{target}.lora_A.weight"] = down.contiguous()
            out[f"transformer.transformer_blocks.{block}.{target}.lora_B.weight"] = up_part.contiguous()
    return out


def lora_source(path: Path, pipe) -> str | dict:
    """What ``load_lora_weights`` is given for ``path``: the file itself, or its tensors in a layout diffusers reads
    (module docstring)."""
    kind = type(pipe).__name__
    if kind not in ("FluxPipeline", "StableDiffusion3Pipeline"):
        return str(path)
    keys = _keys(path)
    if kind == "FluxPipeline" and _bfl_lora_a_names(keys):
        from safetensors.torch import load_file

        return {
            k.replace(".lora_A.weight", ".lora_down.weight").replace(".lora_B.weight", ".lora_up.weight"): v
            for k, v in load_file(str(path)).items()
        }
    if kind == "StableDiffusion3Pipeline" and any("joint_blocks" in k for k in keys):
        from safetensors.torch import load_file

        return sd3_from_original(load_file(str(path)), len(pipe.transformer.transformer_blocks) - 1)
    return str(path)
