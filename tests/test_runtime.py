"""Every entry point opens the registry the same way (``Registry.from_settings``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffagent.settings import Settings


@pytest.fixture
def custom(tmp_path) -> Settings:
    return Settings(
        registry=Path(__file__).resolve().parents[1] / "registry.db",
        data_dir=tmp_path,
        embedder=tmp_path / "my-embedder",
        selector="retrieval",
    )


def test_the_tools_runtime_uses_the_configured_embedder(custom):
    from diffagent.tools import Runtime

    assert Runtime(custom).registry.embedder.model_dir == custom.embedder


def test_the_renderer_and_the_commands_use_it_too(custom, monkeypatch):
    import diffagent.bench.cli as bench_cli
    import diffagent.training.pipeline as pipeline
    from diffagent.registry.store import Registry
    from diffagent.render.renderer import Renderer

    seen = []
    real = Registry.from_settings.__func__

    def spy(cls, settings, path=None):
        reg = real(cls, settings, path)
        seen.append(reg.embedder.model_dir)
        return reg

    monkeypatch.setattr(Registry, "from_settings", classmethod(spy))
    Renderer(custom).resolver  # noqa: B018 - opens the registry
    pipeline._registry(pipeline.TrainConfig(registry=str(custom.registry)), custom)
    assert seen == [custom.embedder, custom.embedder]
    assert "Registry.open(" not in Path(bench_cli.__file__).read_text()


def test_tool_arguments_have_one_definition(tmp_path):
    """The MCP server, the LangChain adapter and the tool functions share bounds and choices
    (``agent/options.py``); they had drifted (limit 100 vs 50, type free text vs a choice)."""
    import anyio
    from mcp import Client

    from diffagent.agent.options import SEARCH_LIMIT_MAX
    from diffagent.errors import UserInputError
    from diffagent.langchain import SearchArgs
    from diffagent.server import create_server
    from diffagent.tools import search_models

    async def mcp_schema():
        settings = Settings(registry=tmp_path / "none.db", data_dir=tmp_path)
        async with Client(create_server(settings)) as client:
            return {t.name: t.input_schema for t in (await client.list_tools()).tools}["search_models"]

    mcp = anyio.run(mcp_schema)["properties"]
    lc = SearchArgs.model_json_schema()["properties"]
    assert mcp["limit"]["maximum"] == lc["limit"]["maximum"] == SEARCH_LIMIT_MAX
    assert mcp["type"] == lc["type"]
    with pytest.raises(UserInputError, match=f"between 1 and {SEARCH_LIMIT_MAX}"):
        search_models("cat", limit=SEARCH_LIMIT_MAX + 1)
    with pytest.raises(UserInputError, match="unknown model type"):
        search_models("cat", type="lorra")


def test_the_runtime_owns_one_renderer_and_one_scorer(tmp_path, monkeypatch):
    """Every render_image of a runtime goes through its one renderer (one pipeline cache), and best-of requests
    share one scorer: the scorers' models were loaded again for every best-of request."""
    import diffagent.render.renderer as renderer_mod
    from diffagent.scoring.unified import UnifiedScorer
    from diffagent.tools import Runtime, render_image, select_t2i_api

    made, rendered, scorers = [], [], []

    class Recorder:
        def __init__(self, settings, registry=None):
            made.append(registry)

        def render(self, call, *, progress=None, cancel=None, output_dir=None):
            from types import SimpleNamespace

            from PIL import Image

            output_dir.mkdir(parents=True, exist_ok=True)
            path = output_dir / f"{len(rendered)}.png"
            Image.new("RGB", (8, 8), "red").save(path)
            rendered.append(call.seed)
            return SimpleNamespace(path=path, call=call, seconds=0.0, parameters="", preview_png=path.read_bytes())

    class Scorer:
        def score(self, prompt, images):
            from diffagent.scoring.types import ScoreResult

            return [ScoreResult(metrics={}, unified=0.5) for _ in images]

    monkeypatch.setattr(renderer_mod, "Renderer", Recorder)
    monkeypatch.setattr(UnifiedScorer, "from_config", classmethod(lambda cls, cfg: scorers.append(1) or Scorer()))
    monkeypatch.setattr("diffagent.scoring.best_of.write_scores_into_png", lambda *a, **k: None)
    rt = Runtime(
        Settings(registry=Path(__file__).resolve().parents[1] / "registry.db", data_dir=tmp_path, selector="retrieval")
    )
    call = select_t2i_api("a lighthouse in a storm", runtime=rt)
    render_image(call, runtime=rt)
    render_image(call, runtime=rt)
    render_image(call, best_of=2, runtime=rt)
    render_image(call, best_of=2, runtime=rt)
    assert made == [rt.registry] and len(rendered) == 6 and scorers == [1]
