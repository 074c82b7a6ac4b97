"""Base-model families and which LoRAs/embeddings work with which checkpoints.

Civitai labels every model version with a ``baseModel`` string ("SD 1.5", "SDXL 1.0", "Pony", ...).
We keep that string and map it to a ``family`` (what it is) and an ``ecosystem`` (what its
weights are compatible with: a Pony LoRA loads into any SDXL-architecture UNet).
"""

from __future__ import annotations

from enum import StrEnum


class Family(StrEnum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    PONY = "pony"
    ILLUSTRIOUS = "illustrious"
    SD3 = "sd3"
    FLUX = "flux"
    OTHER = "other"


#: family -> architecture ecosystem (weights are interchangeable inside one ecosystem)
ECOSYSTEM: dict[Family, str] = {
    Family.SD1: "sd1",
    Family.SD2: "sd2",
    Family.SDXL: "sdxl",
    Family.PONY: "sdxl",
    Family.ILLUSTRIOUS: "sdxl",
    Family.SD3: "sd3",
    Family.FLUX: "flux",
    Family.OTHER: "other",
}

#: ecosystems diffagent selects and renders, from every file layout (diffusers folders and single files)
RENDERABLE = {"sd1", "sdxl"}
#: flow-matching transformer ecosystems (FLUX.1, Stable Diffusion 3 / 3.5): the renderer runs their diffusers folders
#: and their transformer files (completed by a reference folder); selection offers a file only where the registry
#: holds every reference folder of its family (``registry/search_index._renders``)
FLOW = {"flux", "sd3"}
#: ecosystems the renderer accepts, and selection can offer (flow ones for base "any" only where
#: ``Settings.large_families`` allows: they need a GPU with 16-24 GB)
RENDERER_ECOSYSTEMS = RENDERABLE | FLOW

#: user-facing constraint names (select --base) -> ecosystems
BASE_CONSTRAINTS: dict[str, set[str] | None] = {
    "any": None,
    "sd15": {"sd1"},
    "sdxl": {"sdxl"},
    "flux": {"flux"},
    "sd3": {"sd3"},
}


#: ComfyUI's prefix on a checkpoint's denoiser tensors
COMFY_PREFIX = "model.diffusion_model."
#: the curated registry models (slugs) whose diffusers folders complete a FLUX.1 / SD 3 transformer file (its text
#: encoders, tokenizers and VAE); which one a file needs is read from its tensors (``render/flow_files.reference_slug``)
FLOW_REFERENCES: dict[str, dict[str, str]] = {
    "flux": {"dev": "flux1-dev", "schnell": "flux1-schnell"},
    "sd3": {"medium": "sd35-medium", "large": "sd35-large"},
}
#: transformer block names that only FLUX.1 / SD 3 weights carry (Black Forest Labs', Stability AI's, and diffusers'
#: name for FLUX.1's single blocks)
_FLOW_BLOCKS = (("flux", "double.blocks."), ("flux", "single.transformer.blocks."), ("sd3", "joint.blocks."))


def flat_tensor_names(keys) -> list[str]:
    """Tensor names in one spelling: ComfyUI's prefix and kohya's ``lora_unet_`` dropped, ``_`` read as ``.``
    (kohya writes ``lora_unet_double_blocks_0_img_attn_qkv`` for ``double_blocks.0.img_attn.qkv``)."""
    return [k.removeprefix(COMFY_PREFIX).replace("lora_unet_", "").replace("_", ".") for k in keys]


def flow_family_of_keys(keys) -> str | None:
    """'flux' | 'sd3' when tensor names carry those families' transformer blocks: bare, under ComfyUI's prefix, in a
    kohya LoRA (``lora_unet_double_blocks_0_...``) or a diffusers LoRA (``transformer.single_transformer_blocks...``);
    None otherwise."""
    flat = flat_tensor_names(keys)
    for family, marker in _FLOW_BLOCKS:
        if any(k.startswith(marker) or f".{marker}" in k for k in flat):
            return family
    return None


def family_of(base_model: str | None) -> Family:
    """Map a Civitai ``baseModel`` string to a family ("SD 1.5" -> sd1, "Pony" -> pony)."""
    b = (base_model or "").lower().replace(" ", "")
    if not b:
        return Family.OTHER
    if b.startswith("pony"):
        return Family.PONY
    if b.startswith(("illustrious", "noobai")):
        return Family.ILLUSTRIOUS
    if b.startswith("sdxl") or b in {"playgroundv2", "playgroundv2.5"}:
        return Family.SDXL
    if b.startswith("sd1"):
        return Family.SD1
    if b.startswith("sd2"):
        return Family.SD2
    if b.startswith("sd3"):
        return Family.SD3
    if b.startswith("flux"):
        return Family.FLUX
    return Family.OTHER


def ecosystem_of(family: Family | str) -> str:
    return ECOSYSTEM[Family(family)]


def compatible(checkpoint_family: Family | str, addon_family: Family | str) -> bool:
    """Can an add-on (LoRA, embedding) trained on ``addon_family`` load into the checkpoint?"""
    a, b = ecosystem_of(checkpoint_family), ecosystem_of(addon_family)
    return a == b and a != "other"


def parse_base_constraint(value: str | None) -> set[str] | None:
    key = (value or "any").lower().replace(".", "").replace("-", "")
    key = {"sd1": "sd15", "sd15": "sd15", "15": "sd15", "xl": "sdxl", "flux1": "flux", "sd35": "sd3"}.get(key, key)
    if key not in BASE_CONSTRAINTS:
        from diffagent.errors import UserInputError

        raise UserInputError(f"unknown base constraint {value!r}; use one of: any, sd15, sdxl, flux, sd3")
    return BASE_CONSTRAINTS[key]
