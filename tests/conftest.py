"""Shared fixtures: a small registry built from synthetic Civitai items (no shared data, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def embedder():
    from diffagent.registry.embeddings import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def tiny_registry_path(tmp_path_factory, embedder) -> Path:
    """A registry with 11 synthetic models (SD 1.5 + SDXL, LoRAs, an embedding, one NSFW), with vectors."""
    from civitai_fixtures import write_jsonl

    from diffagent.registry.importer import import_path

    d = tmp_path_factory.mktemp("registry")
    src = write_jsonl(d / "items.jsonl")
    db = d / "registry.db"
    import_path(src, db, embedder=embedder)
    return db


@pytest.fixture()
def tiny_registry(tiny_registry_path, embedder):
    from diffagent.registry.store import Registry

    reg = Registry.open(tiny_registry_path, embedder=embedder)
    yield reg
    reg.close()


@pytest.fixture()
def shared_data() -> Path:
    if not (SHARED_DATA / "civitai-2023-07" / "models.jsonl.gz").exists():
        pytest.skip(f"shared Civitai data not found at {SHARED_DATA}")
    return SHARED_DATA
