"""Source-independent import records. Every importer (Civitai API items, JSONL dumps, the curated
default source) turns its input into these, and ``writer.write_records`` upserts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffagent.families import ecosystem_of, family_of

#: Civitai model types -> registry type names
TYPE_NAMES = {
    "checkpoint": "checkpoint",
    "lora": "lora",
    "locon": "locon",
    "lycoris": "locon",
    "dora": "lora",
    "textualinversion": "embedding",
    "embedding": "embedding",
    "vae": "vae",
    "hypernetwork": "hypernetwork",
    "aestheticgradient": "aesthetic_gradient",
    "controlnet": "controlnet",
    "poses": "poses",
    "wildcards": "wildcards",
    "upscaler": "upscaler",
    "motionmodule": "motion_module",
    "workflows": "workflow",
    "other": "other",
}

#: registry type -> AIR type segment
AIR_TYPES = {"checkpoint": "checkpoint", "lora": "lora", "locon": "lycoris", "embedding": "embedding", "vae": "vae"}


def type_name(civitai_type: str | None) -> str:
    return TYPE_NAMES.get((civitai_type or "other").lower().replace(" ", ""), "other")


def make_air(model_type: str, base_model: str, source: str, model_id: int | str, version_id: int | str) -> str:
    """``urn:air:sd1:checkpoint:civitai:4384@128713`` (ecosystem from the base model)."""
    eco = ecosystem_of(family_of(base_model))
    return f"urn:air:{eco}:{AIR_TYPES.get(model_type, model_type)}:{source}:{model_id}@{version_id}"


@dataclass
class FileRecord:
    id: int
    name: str
    kind: str = "Model"
    size_kb: float | None = None
    format: str | None = None
    fp: str | None = None
    size: str | None = None
    sha256: str | None = None
    autov2: str | None = None
    blake3: str | None = None
    crc32: str | None = None
    download_url: str | None = None
    primary: bool = False


@dataclass
class ImageRecord:
    """A sample image's generation settings (``meta`` of a Civitai image)."""

    image_id: int
    prompt: str
    negative_prompt: str = ""
    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    clip_skip: int | None = None
    model_hash: str | None = None
    nsfw: bool = False
    #: [{"name":..., "type": "lora"|"embed"|"model"..., "weight":..., "hash":...}]
    resources: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class VersionRecord:
    id: int
    name: str
    base_model: str
    trained_words: list[str] = field(default_factory=list)
    description: str = ""
    created_at: str | None = None
    downloads: int = 0
    rating: float | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    download_url: str | None = None
    local_path: str | None = None
    recommended: dict[str, Any] = field(default_factory=dict)
    #: hand-written labels (``registry/kinds.py``); None: derived from tags and names at write time
    kinds: list[str] | None = None
    concepts: list[str] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)
    images: list[ImageRecord] = field(default_factory=list)


@dataclass
class ModelRecord:
    id: int
    name: str
    type: str
    source: str = "civitai"
    slug: str | None = None
    description: str = ""
    creator: str | None = None
    nsfw: bool = False
    poi: bool = False
    allow_commercial_use: str | None = None
    allow_derivatives: bool | None = None
    allow_no_credit: bool | None = None
    allow_different_license: bool | None = None
    downloads: int = 0
    favorites: int = 0
    rating: float | None = None
    rating_count: int = 0
    tags: list[str] = field(default_factory=list)
    versions: list[VersionRecord] = field(default_factory=list)
