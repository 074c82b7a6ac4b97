"""One settings object for paths, devices and limits.

Values come from (highest first): explicit arguments (CLI flags), ``DIFFAGENT_*`` environment
variables, then the defaults below. Nothing here loads a model.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The checkout root (the folder that holds ``pyproject.toml`` and ``registry.db``).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "diffagent"


def _default_registry() -> Path:
    checkout_db = PROJECT_ROOT / "registry.db"
    if checkout_db.exists():
        return checkout_db
    return _default_data_dir() / "registry.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIFFAGENT_", extra="ignore")

    # --- paths -------------------------------------------------------------------------------
    registry: Path | str = Field(
        default_factory=_default_registry,
        description="model registry: a SQLite file, or a PostgreSQL URL (postgresql://...)",
    )
    data_dir: Path = Field(default_factory=_default_data_dir, description="user data (caches, outputs)")

    @field_validator("registry", mode="before")
    @classmethod
    def _registry_location(cls, value):
        from diffagent.registry.location import parse_location

        return parse_location(value)

    # --- policy (never a tool argument) ------------------------------------------------------
    allow_nsfw: bool = Field(False, description="include models flagged NSFW in search and selection")

    # --- selector ----------------------------------------------------------------------------
    selector: Literal["llm", "retrieval"] = "llm"
    large_families: bool = Field(
        False,
        description="offer FLUX.1 and SD 3.5 checkpoints when a request's base is "
        "'any' (they need a GPU with 16-24 GB; --base flux / sd3 asks for them anyway)",
    )
    llm_design: Literal["listed", "direct"] = Field(
        "listed",
        description="listed: retrieved candidates in the prompt; direct: name generated under a trie of all ids",
    )
    llm_model: Path | None = Field(None, description="GGUF path; default: the bundled Gemma 3 270M")
    llm_lora: Path | None = Field(None, description="GGUF LoRA adapter applied to llm_model")
    llm_threads: int = Field(2, ge=1, description="llama.cpp threads of each LLM copy")
    llm_instances: int = Field(
        1,
        ge=1,
        le=16,
        description="LLM copies that decode concurrent requests at once "
        "(about 250 MB each); give each llm_threads cores",
    )
    llm_ctx: int = Field(2048, ge=256)
    candidates_k: int = Field(6, ge=1, le=12, description="checkpoints shown to the LLM")
    ranker: str = Field(
        "default",
        description="checkpoint ranker: 'default' (bundled, trained on Civitai "
        "2023-07 creators' choices), 'none' (the search's weighted sum), or a ranker JSON path",
    )
    card_adapter: str = Field(
        "default",
        description="card encoder (the request's side of the card signal, LoRA "
        "on the sentence model): 'default' (bundled, trained on Civitai 2023-07 creators' "
        "choices), 'none', or a .npz path (diffagent train cards)",
    )
    local_only: bool = Field(
        False,
        description="select only models whose weights are on this machine "
        "(diffagent registry scan); a select option overrides it",
    )
    embedder: Path | None = Field(None, description="sentence-transformers folder; default: bundled MiniLM")

    # --- renderer ----------------------------------------------------------------------------
    device: str = Field("auto", description="'auto', 'cuda', 'cuda:N' or 'cpu'")
    pipeline_cache_gb: float = Field(12.0, gt=0, description="RAM/VRAM budget of the pipeline LRU cache")
    offload: Literal["auto", "none", "model", "sequential"] = Field(
        "auto",
        description="CUDA memory for large models: 'none' keeps the whole pipeline on the GPU; 'model' moves "
        "each component (text encoders, transformer/UNet, VAE) to the GPU only while it runs (diffusers' model CPU "
        "offload: FLUX.1 [dev] in about 24 GB instead of 34); 'sequential' streams weights layer by layer (slowest, "
        "a few GB); 'auto' picks the first that fits the GPU's free memory. Ignored on CPU",
    )
    allow_downloads: bool = Field(True, description="fetch weights from HF/Civitai when not cached")
    render_backend: Literal["local", "ray"] = Field(
        "local",
        description="'local': this process renders (one device, one job at a time); 'ray': Ray Serve "
        "replicas render (render/ray_serve.py, docs/operations.md; the 'ray' extra)",
    )
    ray_address: str | None = Field(
        None,
        description="Ray cluster to join ('auto', 'ray://host:10001'); none starts a Ray instance inside this process",
    )
    ray_replicas: int = Field(1, ge=1, description="render replicas (the autoscaling minimum)")
    ray_max_replicas: int = Field(
        1, ge=1, description="autoscaling maximum (above ray_replicas: Serve scales on queued renders)"
    )
    ray_cpus_per_replica: float = Field(1.0, ge=0, description="CPUs Ray reserves for each replica")
    ray_gpus_per_replica: float | None = Field(
        None,
        ge=0,
        description="GPUs Ray reserves for each replica; none: "
        "1 where the cluster has GPUs, else 0 (a fraction shares one)",
    )
    civitai_api_key: str | None = Field(
        None, validation_alias=AliasChoices("DIFFAGENT_CIVITAI_API_KEY", "CIVITAI_API_KEY")
    )
    civitai_base_url: str = "https://civitai.com"

    # --- server ------------------------------------------------------------------------------
    job_table: str | None = Field(
        None,
        description="render jobs shared by several MCP fronts, so any of them answers "
        "get_render / cancel_render for a job another took (server/job_store.py): a SQLite "
        "file (fronts on one machine) or a postgresql:// URL (on several); none keeps each "
        "front's jobs in memory",
    )
    http_token: str | None = Field(None, description="bearer token required by --http on non-loopback binds")

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def weights_dir(self) -> Path:
        return self.data_dir / "weights"

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "outputs"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings from the environment (CLI flags build their own ``Settings``)."""
    return Settings()
