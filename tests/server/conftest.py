"""Fixtures for the MCP server tests: fakes (tests/mcp_fakes.py) for the protocol tests, and a tiny
real world (registry + random pipelines on disk) for the end-to-end ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp_fakes import FakeRenderer, FakeRuntime

from diffagent.registry.records import ModelRecord, VersionRecord
from diffagent.settings import Settings


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", registry=tmp_path / "registry.db", allow_downloads=False)


@pytest.fixture
def runtime(settings) -> FakeRuntime:
    return FakeRuntime(settings)


@pytest.fixture
def renderer(monkeypatch) -> FakeRenderer:
    import diffagent.render

    fake = FakeRenderer()
    monkeypatch.setattr(diffagent.render, "render", fake, raising=False)
    return fake


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, embedder) -> Path:
    """A registry with one tiny SD 1.5 checkpoint (diffusers folder) and one tiny kohya LoRA."""
    import torch
    from render import tiny_models as tm

    from diffagent.registry.importer import import_records

    torch.set_num_threads(1)
    tm.quiet_diffusers()
    root = tmp_path_factory.mktemp("tiny-world")
    pipe = tm.build_sd15(root / "sd15")
    lora = tm.save_kohya_lora(pipe, root / "ink.safetensors", seed=1)
    records = [
        ModelRecord(
            id=900,
            name="Tiny Dream",
            type="checkpoint",
            source="curated",
            tags=["photo", "animal"],
            description="tiny test checkpoint for photos of animals",
            downloads=5000,
            versions=[
                VersionRecord(
                    id=9001,
                    name="v1",
                    base_model="SD 1.5",
                    local_path=str(root / "sd15"),
                    downloads=5000,
                    recommended={"steps": 3, "sampler": "Euler", "cfg_scale": 6, "width": 64, "height": 64},
                )
            ],
        ),
        ModelRecord(
            id=901,
            name="Ink Lines",
            type="lora",
            source="curated",
            tags=["ink", "lineart"],
            description="ink line art style",
            downloads=3000,
            versions=[
                VersionRecord(
                    id=9011,
                    name="v1",
                    base_model="SD 1.5",
                    local_path=str(lora),
                    trained_words=["inkline"],
                    downloads=3000,
                )
            ],
        ),
    ]
    db = root / "registry.db"
    import_records(db, records, source="tiny-world", embedder=embedder)
    return db


@pytest.fixture
def world_settings(tiny_world, tmp_path) -> Settings:
    return Settings(
        registry=tiny_world,
        data_dir=tmp_path / "data",
        selector="retrieval",
        device="cpu",
        allow_downloads=False,
        pipeline_cache_gb=1.0,
    )
