"""Fixtures for the MCP server tests (fakes in tests/mcp_fakes.py)."""

from __future__ import annotations

import pytest
from mcp_fakes import FakeRenderer, FakeRuntime

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
