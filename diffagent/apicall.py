"""``ApiCall``: a complete, executable text-to-image call. Defined once, used everywhere.

The selector produces it, the renderer executes it, the MCP server and the LangChain adapter
return it, and ``diffagent render --call call.json`` reads it. Field names follow diffusers where
one exists (``prompt``, ``negative_prompt``, ``width``, ``height``), and A1111/Civitai for the rest
(``sampler``, ``cfg_scale``, ``clip_skip`` in A1111's 1-based convention).

The JSON schema is versioned by ``schema_version``; ``diffagent schema`` prints it. Version 2 added ``shift`` (the
flow-matching schedule of FLUX.1 / SD 3); a version-1 call validates unchanged and renders as before.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from diffagent.families import FLOW, Family, compatible, ecosystem_of
from diffagent.samplers import A1111_SAMPLERS, FLUX_SAMPLERS, canonical_sampler

SCHEMA_VERSION = "2"
MAX_SEED = 2**32 - 1
#: registry ids are SQLite integers
MAX_ID = 2**63 - 1
#: most LoRAs and embeddings one call may carry (A1111 users stack a handful; a caller must not send thousands)
MAX_LORAS = 8
MAX_EMBEDDINGS = 16
MAX_ALTERNATIVES = 16
#: the LoRA strengths a call accepts (A1111 users use 0.3 to 1.2)
LORA_WEIGHT_MIN, LORA_WEIGHT_MAX = -4.0, 4.0


class ModelRef(BaseModel):
    """A model version in the registry."""

    model_config = ConfigDict(frozen=True)

    id: int = Field(ge=0, le=MAX_ID, description="registry id of the model version")
    air: str = Field(description="AIR, e.g. urn:air:sd1:checkpoint:civitai:4384@128713")
    name: str
    family: Family = Field(description="base-model family of the weights")


class LoraRef(ModelRef):
    weight: float = Field(1.0, ge=LORA_WEIGHT_MIN, le=LORA_WEIGHT_MAX, description="strength, as in <lora:name:weight>")


class EmbeddingRef(ModelRef):
    token: str = Field(description="word that activates the embedding")
    negative: bool = Field(False, description="used in the negative prompt")


class Alternative(BaseModel):
    """A ranked alternative checkpoint the selector considered."""

    checkpoint: ModelRef
    score: float = Field(description="selector score, higher is better within one call")


class ApiCall(BaseModel):
    """A complete text-to-image call, ready for ``diffagent.render``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal["1", "2"] = SCHEMA_VERSION
    checkpoint: ModelRef
    loras: list[LoraRef] = Field(default_factory=list, max_length=MAX_LORAS)
    embeddings: list[EmbeddingRef] = Field(default_factory=list, max_length=MAX_EMBEDDINGS)
    vae: ModelRef | None = Field(None, description="standalone VAE (A1111's 'SD VAE'); null: the checkpoint's own")
    prompt: str = Field(min_length=1, max_length=8000, description="final prompt, A1111 weighting kept")
    negative_prompt: str = Field("", max_length=8000)
    sampler: str = Field("DPM++ 2M Karras", description="A1111/Civitai sampler name")
    steps: int = Field(25, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=1.0, le=30.0)
    width: int = Field(512, ge=64, le=2048, multiple_of=8)
    height: int = Field(512, ge=64, le=2048, multiple_of=8)
    clip_skip: int = Field(1, ge=1, le=12, description="A1111 Clip skip (1 = last layer)")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # hosts show this schema to their model on every turn: the description stays short (README has the rest)
    shift: float | None = Field(None, ge=0.1, le=20.0, description="FLUX.1/SD 3: flow-matching shift; null: model's")
    rationale: str = Field("", max_length=2000)
    alternatives: list[Alternative] = Field(default_factory=list, max_length=MAX_ALTERNATIVES)

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v: str) -> str:
        canon = canonical_sampler(v)
        if canon is None:
            raise ValueError(f"unknown sampler {v!r}; known samplers: {', '.join(A1111_SAMPLERS)}")
        return canon

    @model_validator(mode="after")
    def _addons_match_checkpoint(self) -> ApiCall:
        ids = [lo.id for lo in self.loras]
        if len(set(ids)) != len(ids):
            raise ValueError("the same LoRA is listed twice; list each LoRA once, with the weight you want")
        for addon in [*self.loras, *self.embeddings, *([self.vae] if self.vae else [])]:
            if not compatible(self.checkpoint.family, addon.family):
                raise ValueError(
                    f"{addon.name!r} is a {addon.family.value} add-on and cannot load into the "
                    f"{self.checkpoint.family.value} checkpoint {self.checkpoint.name!r}; "
                    "drop it or pick a checkpoint of the same family"
                )
        eco = ecosystem_of(self.checkpoint.family)
        if self.shift is not None and eco not in FLOW:
            raise ValueError(
                f"'shift' is a parameter of flow-matching models (FLUX.1, SD 3); the "
                f"{self.checkpoint.family.value} checkpoint {self.checkpoint.name!r} samples on a fixed "
                "noise schedule: drop 'shift'"
            )
        if self.shift is not None and self.schema_version == "1":
            raise ValueError("'shift' came with schema_version 2; set schema_version to \"2\" (or drop 'shift')")
        if eco in FLOW:
            what = {"flux": "FLUX.1", "sd3": "Stable Diffusion 3"}[eco]
            if self.embeddings:
                raise ValueError(
                    f"{what} checkpoints take no textual-inversion embeddings (SD 1.x / SDXL only); drop 'embeddings'"
                )
            if self.vae is not None:
                raise ValueError(f"{what} checkpoints decode with their own VAE; drop 'vae'")
            if eco == "flux" and self.sampler not in FLUX_SAMPLERS:
                raise ValueError(
                    f"FLUX.1 renders with sampler {' or '.join(FLUX_SAMPLERS)} (its pipeline sets its own "
                    f"noise levels, which the {self.sampler} scheduler does not take); use 'Euler'"
                )
            if eco == "flux" and self.negative_prompt.strip():
                raise ValueError(
                    "FLUX.1 takes no negative prompt (it is guidance-distilled: cfg_scale is its "
                    "distilled guidance, about 3.5 for [dev]); leave 'negative_prompt' empty"
                )
        return self

    def a1111_parameters(self) -> str:
        """The generation parameters as A1111 writes them in a PNG ``parameters`` text chunk."""
        prompt = self.prompt
        for lora in self.loras:
            tag = f"<lora:{lora.name}:{lora.weight:g}>"
            if tag not in prompt:
                prompt = f"{prompt}, {tag}"
        # FLUX.1's guidance is distilled into the model: Forge writes it apart, with the true CFG at 1
        guidance = f"CFG scale: {self.cfg_scale:g}"
        if ecosystem_of(self.checkpoint.family) == "flux":
            guidance = f"CFG scale: 1, Distilled CFG Scale: {self.cfg_scale:g}"
        fields = [
            f"Steps: {self.steps}",
            f"Sampler: {self.sampler}",
            guidance,
            f"Seed: {self.seed}",
            f"Size: {self.width}x{self.height}",
            f"Model: {self.checkpoint.name}",
        ]
        if self.shift is not None:
            fields.append(f"Shift: {self.shift:g}")
        if self.clip_skip > 1:
            fields.append(f"Clip skip: {self.clip_skip}")
        if self.vae is not None:
            fields.append(f"VAE: {self.vae.name}")
        return f"{prompt}\nNegative prompt: {self.negative_prompt}\n" + ", ".join(fields)


def api_call_json_schema() -> dict:
    return ApiCall.model_json_schema()
