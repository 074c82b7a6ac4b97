"""The typed tool functions. The MCP server, the LangChain adapter and the CLI are thin skins over
these; each takes plain typed arguments and returns a pydantic object, and raises
``diffagent.errors.UserInputError`` (or a subclass) for anything the caller can fix.

Heavy objects (the registry, the LLM, the pipelines) are created lazily, once per process, by
``Runtime``; nothing loads at import time.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING, get_args

from pydantic import BaseModel, Field

from diffagent.agent.options import SEARCH_LIMIT_MAX, Base, ModelType, SelectOptions  # SelectOptions: public here too
from diffagent.apicall import ApiCall
from diffagent.errors import UserInputError
from diffagent.settings import Settings, get_settings

if TYPE_CHECKING:
    from diffagent.agent.selector import Selector
    from diffagent.registry.store import Registry


class Runtime:
    """Process-wide owner of what the tools load (lazy, thread-safe): the registry, the selector, the renderer
    (its pipeline cache) and the scorers (CLIP, ImageReward, HPS v2: loaded once, not per best-of request)."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._lock = threading.RLock()  # selector construction takes the registry under the same lock

    @cached_property
    def registry(self) -> Registry:
        from diffagent.registry.store import Registry

        with self._lock:
            return Registry.from_settings(self.settings)

    @cached_property
    def selector(self) -> Selector:
        from diffagent.agent.selector import Selector

        with self._lock:
            return Selector(self.registry, self.settings)

    @cached_property
    def renderer(self):
        """The local ``Renderer``, or with ``render_backend = "ray"`` the Ray Serve client (same ``render``)."""
        with self._lock:
            if self.settings.render_backend == "ray":
                try:
                    from diffagent.render.ray_serve import RayRenderer
                except ImportError as e:
                    from diffagent.errors import MissingDependency

                    raise MissingDependency("ray[serve]", "ray") from e
                return RayRenderer(self.settings)
            from diffagent.render.renderer import Renderer

            return Renderer(self.settings, registry=self.registry)

    @cached_property
    def scorer(self):
        """The unified scorer of best-of-n (needs the ``score`` extra; ``best_of_renderer`` checks first)."""
        from diffagent.scoring.config import ScoringConfig
        from diffagent.scoring.unified import UnifiedScorer

        with self._lock:
            return UnifiedScorer.from_config(ScoringConfig.from_settings(self.settings))


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
    check_prompt(prompt)
    rt = runtime or get_runtime()
    return rt.selector.select(prompt, options or SelectOptions())


def check_prompt(prompt: str | None) -> None:
    from diffagent.prompttext import has_visible_text

    if not prompt or not has_visible_text(prompt):
        raise UserInputError(
            "prompt is empty (only spaces, control or invisible characters); describe the picture "
            "you want, e.g. 'a watercolor fox'"
        )


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
    type: ModelType | None = None,
    base: Base = "any",
    min_downloads: int = 0,
    limit: int = 10,
    *,
    runtime: Runtime | None = None,
) -> list[ModelSummary]:
    """Hybrid (lexical + semantic) registry search with filters (bounds: ``agent/options.py``)."""
    from diffagent.families import parse_base_constraint

    if not 1 <= limit <= SEARCH_LIMIT_MAX:
        raise UserInputError(f"limit must be between 1 and {SEARCH_LIMIT_MAX}, got {limit}")
    if type is not None and type not in get_args(ModelType):
        raise UserInputError(f"unknown model type {type!r}; use one of {', '.join(get_args(ModelType))}")
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


# --- render_image ---------------------------------------------------------------------------------
# (kept below the select part: the renderer and the scorer are optional extras, imported lazily)

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from pydantic.json_schema import SkipJsonSchema  # noqa: E402

#: An inline preview must stay well under hosts' tool-result caps (Claude Desktop: 1 MiB in total,
#: base64 adds a third), so the PNG is shrunk until it fits this many bytes.
PREVIEW_MAX_BYTES = 600_000
PREVIEW_MAX_SIDE = 1024


class RenderOutput(BaseModel):
    """One rendered image: where the full PNG is, what made it, and a bounded inline preview."""

    output_id: str = Field(description="file name under the output folder; read it as outputs://{output_id}")
    path: str = Field(description="absolute path of the full-resolution PNG on the server")
    width: int
    height: int
    seed: int
    seconds: float = Field(description="wall time of the render")
    parameters: str = Field(description="A1111-style generation parameters, as written into the PNG")
    call: ApiCall
    scores: list[float] = Field(
        default_factory=list, description="best_of > 1: unified score of each rendered candidate, in candidate order"
    )
    #: kept out of JSON and of the schema: the MCP server sends it as an image block instead
    preview_png: SkipJsonSchema[bytes] = Field(b"", exclude=True, repr=False)


def bounded_preview(png: bytes, *, max_bytes: int = PREVIEW_MAX_BYTES, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """``png`` itself when it is small enough, else a PNG shrunk until it fits ``max_bytes``."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        if len(png) <= max_bytes and max(im.size) <= max_side:
            return png
        img = im.convert("RGB")
    side = min(max_side, max(img.size))
    while True:
        small = img.copy()
        small.thumbnail((side, side))
        buf = io.BytesIO()
        small.save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes or side <= 64:
            return buf.getvalue()
        side = int(side * 0.75)


#: registry types each slot of an ``ApiCall`` accepts
_SLOT_TYPES = {"checkpoint": {"checkpoint"}, "lora": {"lora", "locon"}, "embedding": {"embedding"}}


def check_refs(call: ApiCall, *, runtime: Runtime | None = None) -> None:
    """Every model an ``ApiCall`` names must be in the registry, with the right type and the family the call
    says, before it renders (a wrong family would otherwise fail only after the weights were fetched)."""
    rt = runtime or get_runtime()
    slots = [("checkpoint", call.checkpoint)]
    slots += [("lora", r) for r in call.loras] + [("embedding", r) for r in call.embeddings]
    slots += [("checkpoint", a.checkpoint) for a in call.alternatives]
    seen: set[int] = set()
    for slot, ref in slots:
        if ref.id in seen:
            continue
        seen.add(ref.id)
        info = rt.registry.version(ref.id)  # NotFoundError says: call search_models
        if info.type not in _SLOT_TYPES[slot]:
            raise UserInputError(
                f"model id {ref.id} ({info.display_name!r}) is a {info.type}, not a {slot}; "
                f"call search_models with type={slot!r} to find one"
            )
        if str(info.family) != str(ref.family):
            raise UserInputError(
                f"model id {ref.id} ({info.display_name!r}) is a {info.family} model, but the call says family "
                f"{str(ref.family)!r}; use the family get_model reports, or the call select_t2i_api returned"
            )


def best_of_renderer():
    """``render_best_of``, or a ``MissingDependency`` naming the extra that brings the scorers."""
    from diffagent.errors import MissingDependency

    try:
        import open_clip  # noqa: F401 - the scorers' first import; checked here so the error names the extra

        from diffagent.scoring.best_of import render_best_of
    except ImportError as e:
        raise MissingDependency(e.name or "the image scorers", "score") from e
    return render_best_of


def check_render(call: ApiCall | None, prompt: str | None, best_of: int, *, runtime: Runtime | None = None) -> None:
    """Everything ``render_image`` can refuse before any work starts (the MCP server runs it before queueing)."""
    if (call is None) == (prompt is None):
        raise UserInputError("give exactly one of 'call' (from select_t2i_api) or 'prompt'")
    if not 1 <= best_of <= 8:
        raise UserInputError(f"best_of must be between 1 and 8, got {best_of}")
    if prompt is not None:
        check_prompt(prompt)
    if best_of > 1:
        best_of_renderer()
    if call is not None:
        check_refs(call, runtime=runtime)


def render_image(
    call: ApiCall | None = None,
    prompt: str | None = None,
    best_of: int = 1,
    options: SelectOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    runtime: Runtime | None = None,
) -> RenderOutput:
    """Render an ``ApiCall`` (or select one for ``prompt`` first) to a PNG in the output folder.

    ``best_of > 1`` renders that many seeds and keeps the best by the scorer. ``progress(step,
    total)`` is called after each denoising step; setting ``cancel`` stops the loop at the next step
    (the renderer raises ``RenderCancelled``). The output path is always chosen by the server.
    """
    rt = runtime or get_runtime()
    check_render(call, prompt, best_of, runtime=rt)
    if call is None:
        call = select_t2i_api(prompt, options, runtime=rt)
    output_dir = Path(rt.settings.output_dir)
    scores: list[float] = []
    if best_of > 1:
        # renders the selected call, its ranked alternatives, then other seeds; keeps the best-scored
        render_best_of = best_of_renderer()

        def render_one(c: ApiCall, *, progress=None, cancel=None, output_dir=None, **_):
            return rt.renderer.render(c, progress=progress, cancel=cancel, output_dir=output_dir)

        picked = render_best_of(
            call,
            best_of,
            prompt=prompt,
            settings=rt.settings,
            registry=rt.registry,
            scorer=rt.scorer,
            progress=progress,
            cancel=cancel,
            output_dir=output_dir,
            render_fn=render_one,
        )
        result, scores = picked.best, [round(s, 4) for s in picked.scores]
    else:
        result = rt.renderer.render(call, progress=progress, cancel=cancel, output_dir=output_dir)
    path = Path(result.path).resolve()
    return RenderOutput(
        output_id=path.relative_to(output_dir.resolve()).as_posix(),
        path=str(path),
        width=result.call.width,
        height=result.call.height,
        seed=result.call.seed,
        seconds=round(result.seconds, 3),
        parameters=result.parameters,
        call=result.call,
        scores=scores,
        preview_png=bounded_preview(result.preview_png),
    )
