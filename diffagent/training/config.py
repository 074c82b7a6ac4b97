"""One training configuration: data, LoRA shape, SFT, RRHF and export settings, in one file.

``diffagent train ... --config train.toml`` reads it (TOML or JSON); every field has a default, so
an empty file (or none) trains the default DiffAgent model with the settings measured on a 2-core
CPU box. Paths left empty fall back to ``Settings`` (registry, data dir) at run time.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from diffagent.errors import UserInputError


class _Section(BaseModel):
    # a typo in a config file is an error, not a silently ignored key
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    pairs: Path | None = Field(None, description="pairs from `diffagent bench build` (.jsonl or .jsonl.gz)")
    split: Literal["train", "val", "test"] = Field("train", description="train only, except for debugging")
    limit: int = Field(400, ge=1, description="pairs to turn into examples (a seeded random sample)")
    dedupe_instructions: bool = Field(
        True, description="one example per distinct instruction (a page's images often share one prompt)"
    )
    max_loras: int = Field(2, ge=0, le=5, description="LoRAs in an answer (the selector's default max_loras)")
    leave_page_out: bool = Field(
        True,
        description="retrieve as a test pair would: the example's own model "
        "page's sample images do not vote (see training.data)",
    )


class LoraShape(_Section):
    r: int = Field(8, ge=1, le=256)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    layers: list[int] | None = Field(
        None,
        description="only these decoder layers (e.g. the top half: the "
        "backward pass then stops there, a cheaper step); None = all",
    )


class SFTConfig(_Section):
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(1, ge=1, description="sequences per forward pass")
    grad_accum: int = Field(4, ge=1, description="forward passes per optimizer step")
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(5, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_len: int = Field(1024, ge=16, description="longer examples are skipped (and counted), never truncated")
    checkpoint_every: int = Field(10, ge=1, description="optimizer steps between resumable checkpoints")
    bf16: bool = Field(False, description="bfloat16 autocast (fp32 weights); measured no faster on this CPU")
    shuffle_candidates: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of examples shown with their "
        "candidates in a random order (see training.data.shuffle_candidates)",
    )


class RRHFConfig(_Section):
    prompts: int = Field(60, ge=1, description="training examples to generate candidates for")
    n_sample: int = Field(4, ge=0, description="multinomial samples per prompt")
    temperature: float = Field(1.0, gt=0)
    n_beam: int = Field(3, ge=0, description="diverse beam search groups per prompt (1 beam each)")
    diversity_penalty: float = Field(1.0, ge=0)
    include_reference: bool = Field(True, description="add the creators' answer as a candidate (as RRHF does)")
    max_candidates: int = Field(6, ge=2, description="m: candidates per prompt (best-reward distinct ones kept)")
    reward: Literal["agreement", "image"] = Field(
        "agreement",
        description="agreement: agreement with creators (CPU); image: unified image metric "
        "of rendered candidates (GPU + real weights)",
    )
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    grad_accum: int = Field(2, ge=1, description="prompts per optimizer step")
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(2, ge=0)
    sft_weight: float = Field(1.0, ge=0, description="weight of the SFT loss on the best candidate")
    checkpoint_every: int = Field(5, ge=1)
    bf16: bool = False


class ExportConfig(_Section):
    outtype: Literal["f32", "f16", "bf16", "q8_0"] = Field("q8_0", description="GGUF tensor type of the adapter")
    llama_cpp_version: str = Field("0.3.36", description="llama-cpp-python sdist that ships the converter")


class TrainConfig(_Section):
    seed: int = 0
    threads: int = Field(
        1,
        ge=1,
        description="torch threads; 1 measured 6x faster than 2 on a shared 2-core box "
        "(3 s vs 19 s a step): extra threads spin-wait on busy cores",
    )
    device: str = Field(
        "cpu", description="where the LLM trains: 'cpu', or 'cuda' on a GPU machine (docs/training-gpu.md)"
    )
    work_dir: Path | None = Field(None, description="default: <data_dir>/training")
    base_model: Path | None = Field(None, description="GGUF of the base LLM; default: the bundled Gemma 3 270M")
    registry: Path | str | None = Field(
        None, description="a SQLite file or a postgresql:// URL; default: DIFFAGENT_REGISTRY / --registry"
    )
    candidates_k: int | None = Field(None, ge=1, le=12, description="default: Settings.candidates_k")
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraShape = Field(default_factory=LoraShape)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rrhf: RRHFConfig = Field(default_factory=RRHFConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)


def load_config(path: Path | None) -> TrainConfig:
    """Read a TOML or JSON config; ``None`` gives the defaults."""
    if path is None:
        return TrainConfig()
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"training config {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserInputError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}") from None
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise UserInputError(f"{path}: invalid training config:\n{e}") from None
