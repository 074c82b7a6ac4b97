"""The typed tool functions. The MCP server, the LangChain adapter and the CLI are thin skins over
these; each takes plain typed arguments and returns a pydantic object, and raises
``diffagent.errors.UserInputError`` (or a subclass) for anything the caller can fix.

Heavy objects (the registry, the LLM, the pipelines) are created lazily, once per process, by
``Runtime``; nothing loads at import time.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from diffagent.apicall import ApiCall
from diffagent.errors import UserInputError
from diffagent.settings import Settings, get_settings

if TYPE_CHECKING:
    from diffagent.agent.selector import Selector
    from diffagent.registry.store import Registry

Base = Literal["any", "sd15", "sdxl"]


class SelectOptions(BaseModel):
    """Options of ``select_t2i_api``. NSFW policy is a setting, deliberately not an option here."""

    base: Base = Field("any", description="restrict to a base family: sd15, sdxl or any")
    max_loras: int = Field(2, ge=0, le=5, description="most LoRAs to add")
    style: str | None = Field(None, max_length=200, description="style hint, e.g. 'anime', 'photo'")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="image seed; random when omitted")
    n_candidates: int = Field(3, ge=1, le=8, description="ranked alternatives to return")


class Runtime:
    """Process-wide owner of the loaded registry and selector (lazy, thread-safe)."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._lock = threading.Lock()

    @cached_property
    def registry(self) -> Registry:
        from diffagent.registry.store import Registry

        with self._lock:
            return Registry.open(self.settings.registry, allow_nsfw=self.settings.allow_nsfw)

    @cached_property
    def selector(self) -> Selector:
        from diffagent.agent.selector import Selector

        with self._lock:
            return Selector(self.registry, self.settings)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime(settings: Settings | None = None) -> Runtime:
    """The shared runtime; a different ``settings`` object gets its own."""
    global _runtime
    if settings is not None and (_runtime is None or _runtime.settings is not settings):
        return Runtime(settings)
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(settings)
        return _runtime


def select_t2i_api(prompt: str, options: SelectOptions | None = None, *, runtime: Runtime | None = None) -> ApiCall:
    """Turn a prompt into a complete text-to-image call, choosing only models the registry holds."""
    if not prompt or not prompt.strip():
        raise UserInputError("prompt is empty; describe the picture you want, e.g. 'a watercolor fox'")
    rt = runtime or get_runtime()
    return rt.selector.select(prompt, options or SelectOptions())


class ModelSummary(BaseModel):
    id: int = Field(description="registry version id (use it with get_model)")
    air: str
    name: str
    type: str
    base_model: str
    family: str
    downloads: int
    tags: list[str]
    trigger_words: list[str]
    score: float = Field(description="search relevance, higher is better")


def search_models(
    query: str,
    type: str | None = None,
    base: Base = "any",
    min_downloads: int = 0,
    limit: int = 10,
    *,
    runtime: Runtime | None = None,
) -> list[ModelSummary]:
    """Hybrid (lexical + semantic) registry search with filters."""
    from diffagent.families import parse_base_constraint

    if not 1 <= limit <= 100:
        raise UserInputError(f"limit must be between 1 and 100, got {limit}")
    rt = runtime or get_runtime()
    types = [type] if type else None
    hits = rt.registry.search(
        query, types=types, base=parse_base_constraint(base), min_downloads=min_downloads, limit=limit
    )
    return [
        ModelSummary(
            id=h.version.id,
            air=h.version.air,
            name=h.version.display_name,
            type=h.version.type,
            base_model=h.version.base_model,
            family=h.version.family,
            downloads=h.version.downloads,
            tags=h.version.tags,
            trigger_words=h.version.trained_words,
            score=round(h.score, 4),
        )
        for h in hits
    ]


def get_model(version_id: int, *, runtime: Runtime | None = None):
    """Everything the registry knows about one model version (``VersionInfo``)."""
    rt = runtime or get_runtime()
    return rt.registry.version(version_id)
