"""The registry's tables (SQLModel). Schema changes go through ``migrations.py``, never ``create_all``.

Ids are stable across registries: a model or version from Civitai keeps its Civitai id, and a
curated model without one gets a deterministic synthetic id (``synthetic_id``), so an ``ApiCall``
made against one registry still names the same weights in another.
"""

from __future__ import annotations

import zlib
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

SYNTHETIC_ID_BASE = 2_000_000_000


def synthetic_id(key: str) -> int:
    """A stable id for a model/version that has no Civitai id (``key`` is e.g. its HF repo + file)."""
    return SYNTHETIC_ID_BASE + zlib.crc32(key.encode()) % 100_000_000


class Model(SQLModel, table=True):
    """A model page (Civitai "model"): a name, a type, a creator, licence flags, versions."""

    id: int = Field(primary_key=True)
    source: str = Field(default="civitai", index=True, description="civitai | curated")
    slug: str | None = Field(default=None, unique=True, description="short stable key of a curated model")
    name: str
    type: str = Field(index=True, description="checkpoint | lora | locon | embedding | vae | hypernetwork | ...")
    description: str = ""
    creator: str | None = None
    nsfw: bool = Field(default=False, index=True)
    poi: bool = False
    allow_commercial_use: str | None = None
    allow_derivatives: bool | None = None
    allow_no_credit: bool | None = None
    allow_different_license: bool | None = None
    downloads: int = Field(default=0, index=True)
    favorites: int = 0
    rating: float | None = None
    rating_count: int = 0
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class ModelVersion(SQLModel, table=True):
    """One version of a model: the unit that weights, base family and trigger words belong to."""

    __tablename__ = "model_version"

    id: int = Field(primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    name: str
    base_model: str = Field(description="Civitai baseModel string, e.g. 'SD 1.5', 'SDXL 1.0', 'Pony'")
    family: str = Field(index=True, description="diffagent.families.Family value")
    air: str = Field(unique=True, description="urn:air:{eco}:{type}:{source}:{model}@{version}")
    trained_words: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    description: str = ""
    created_at: str | None = None
    downloads: int = 0
    rating: float | None = None
    # where the weights live
    hf_repo: str | None = None
    hf_file: str | None = None
    download_url: str | None = None
    local_path: str | None = None
    #: creator-recommended settings: sampler, steps, cfg_scale, width, height, clip_skip,
    #: negative_prompt, weight (LoRA strength)
    recommended: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class ModelFile(SQLModel, table=True):
    __tablename__ = "model_file"

    id: int = Field(primary_key=True)
    version_id: int = Field(foreign_key="model_version.id", index=True)
    name: str
    kind: str = Field(default="Model", description="Civitai file type: Model, Pruned Model, VAE, ...")
    size_kb: float | None = None
    format: str | None = Field(default=None, description="SafeTensor | PickleTensor | Diffusers | ...")
    fp: str | None = None
    size: str | None = Field(default=None, description="full | pruned")
    sha256: str | None = Field(default=None, index=True)
    autov2: str | None = Field(default=None, index=True)
    blake3: str | None = None
    crc32: str | None = None
    download_url: str | None = None
    primary: bool = False


class UsageStats(SQLModel, table=True):
    """What creators actually used with a version, learned from sample images.

    Counters are ``{value: count}`` dicts (JSON keys are strings). For a checkpoint ``loras`` holds
    the LoRAs used with it: ``{version_id: {"count": n, "weight": mean}}``.
    """

    __tablename__ = "usage_stats"

    version_id: int = Field(primary_key=True, foreign_key="model_version.id")
    n_images: int = 0
    samplers: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    steps: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    cfg_scale: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    sizes: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    clip_skip: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    negative_prompt: str = ""
    loras: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    lora_weight: float | None = Field(default=None, description="mean weight when this version is a LoRA")


class SampleImage(SQLModel, table=True):
    """A creator's sample image: its prompt and generation settings, as shown on a model page.

    ``version_id`` (the checkpoint that made it) is resolved after import from ``model_hash``
    (A1111's AutoV2 hash) against ``model_file.autov2``, so images imported before their checkpoint
    resolve once the checkpoint arrives.
    """

    __tablename__ = "sample_image"

    id: int = Field(primary_key=True, description="Civitai image id")
    page_model_id: int = Field(index=True, description="model page the image was shown on")
    page_version_id: int = Field(index=True)
    version_id: int | None = Field(default=None, index=True, description="resolved checkpoint version")
    model_hash: str | None = Field(default=None, index=True)
    prompt: str = Field(description="prompt with A1111 resource tags (<lora:...>) stripped")
    negative_prompt: str = ""
    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    clip_skip: int | None = None
    nsfw: bool = False
    resources: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
