from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def gemma():
    """The default GGUF model (Gemma 3 270M from PyPI), loaded once."""
    from diffagent.agent.llm import LlamaBackend

    return LlamaBackend(n_ctx=2048)


@pytest.fixture()
def settings(tiny_registry_path):
    from diffagent.settings import Settings

    return Settings(registry=tiny_registry_path, selector="llm")
