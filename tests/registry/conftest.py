"""Fixtures for the registry tests: fresh registry locations and a loopback HTTP server.

The loopback server stands in for Civitai (this machine has no internet): a test gives it a list of
scripted responses, served in order, and reads back what the client sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from loopback_civitai import Loopback, Reply, Seen  # noqa: F401  (re-exported for the fixtures)


@pytest.fixture()
def loopback():
    server = Loopback()
    yield server
    server.close()


@pytest.fixture()
def db(new_registry) -> Path | str:
    """The location of a registry that does not exist yet (a path, or an empty PostgreSQL database's URL)."""
    return new_registry("registry")


@pytest.fixture(autouse=True)
def _hermetic_settings(monkeypatch):
    # the CLI builds Settings from the environment; a developer's DIFFAGENT_* must not leak in
    for name in (
        "DIFFAGENT_REGISTRY",
        "DIFFAGENT_ALLOW_NSFW",
        "DIFFAGENT_CIVITAI_API_KEY",
        "CIVITAI_API_KEY",
        "DIFFAGENT_EMBEDDER",
    ):
        monkeypatch.delenv(name, raising=False)
