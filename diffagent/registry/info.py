"""What the registry returns: a version's card, files, creators' usage, weight location, search hits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from diffagent.apicall import ModelRef
from diffagent.families import Family


class FileInfo(BaseModel):
    id: int
    name: str
    kind: str
    size_kb: float | None
    format: str | None
    fp: str | None
    sha256: str | None
    autov2: str | None
    download_url: str | None
    primary: bool


class UsageInfo(BaseModel):
    n_images: int = 0
    samplers: dict[str, int] = Field(default_factory=dict)
    steps: dict[str, int] = Field(default_factory=dict)
    cfg_scale: dict[str, int] = Field(default_factory=dict)
    sizes: dict[str, int] = Field(default_factory=dict)
    clip_skip: dict[str, int] = Field(default_factory=dict)
    negative_prompt: str = ""
    loras: dict[str, Any] = Field(default_factory=dict)
    lora_weight: float | None = None


class VersionInfo(BaseModel):
    """Everything the registry knows about one model version."""

    id: int
    model_id: int
    name: str
    model_name: str
    slug: str | None = None
    type: str
    base_model: str
    family: Family
    air: str
    trained_words: list[str]
    tags: list[str]
    description: str
    creator: str | None
    nsfw: bool
    downloads: int
    rating: float | None
    recommended: dict[str, Any]
    hf_repo: str | None
    hf_file: str | None
    download_url: str | None
    local_path: str | None
    #: what the model is for (``registry/kinds.py``): checkpoint kinds or a LoRA's role, and its concepts
    kinds: list[str] = Field(default_factory=list)
    concepts: list[str] = Field(default_factory=list)
    files: list[FileInfo] = Field(default_factory=list)
    usage: UsageInfo | None = None

    @property
    def display_name(self) -> str:
        if not self.name or self.name.lower() in self.model_name.lower():
            return self.model_name
        return f"{self.model_name} {self.name}"

    def ref(self) -> ModelRef:
        return ModelRef(id=self.id, air=self.air, name=self.display_name, family=self.family)


class WeightSource(BaseModel):
    """Where a version's weights can be found, for the renderer."""

    version_id: int
    air: str
    name: str
    type: str
    family: Family
    local_path: str | None
    hf_repo: str | None
    hf_file: str | None
    download_url: str | None
    sha256: str | None
    filename: str | None
    format: str | None


@dataclass
class SearchHit:
    version: VersionInfo
    score: float
    signals: dict[str, float]
