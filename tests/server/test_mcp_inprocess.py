"""The MCP server through the SDK's in-process ``Client``, in both protocol eras."""

from __future__ import annotations

import base64
import json

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from diffagent.apicall import ApiCall
from diffagent.server import create_server

pytestmark = pytest.mark.anyio
MODES = ["auto", "legacy"]  # 2026-07-28 (discover) and 2025-11-25 (initialize handshake)


def text_of(result) -> str:
    return " ".join(b.text for b in result.content if b.type == "text")


@pytest.fixture
def server(settings, runtime, renderer):
    return create_server(settings, runtime=runtime)


@pytest.mark.parametrize("mode", MODES)
async def test_catalogue(server, mode):
    async with Client(server, mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert list(tools) == [
            "select_t2i_api",
            "search_models",
            "get_model",
            "render_image",
            "get_render",
            "cancel_render",
        ]
        for name in ["select_t2i_api", "search_models", "get_model", "render_image", "get_render"]:
            assert tools[name].output_schema, name
        assert tools["select_t2i_api"].output_schema["title"] == "ApiCall"
        assert "job_id" in tools["render_image"].output_schema["properties"]
        assert tools["get_model"].annotations.read_only_hint and tools["get_model"].annotations.idempotent_hint
        assert tools["render_image"].annotations.read_only_hint is False
        # Keep the catalogue cheap: hosts put name, description and input schema of every tool into the
        # model's context on every turn (~2k tokens here); output schemas only validate results.
        assert all(len(t.description) <= 120 for t in tools.values())
        prompt_part = json.dumps([[t.name, t.description, t.input_schema] for t in tools.values()])
        assert len(prompt_part) < 10_000, len(prompt_part)
        whole = json.dumps([t.model_dump(mode="json", exclude_none=True) for t in tools.values()])
        assert len(whole) < 40_000, len(whole)
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        assert templates == {"registry://models/{version_id}", "outputs://{+output_id}"}
        prompt = await client.get_prompt("text_to_image", {"subject": "a fox"})
        assert "select_t2i_api" in prompt.messages[0].content.text


@pytest.mark.parametrize("mode", MODES)
async def test_select_search_get(server, mode):
    async with Client(server, mode=mode) as client:
        sel = await client.call_tool("select_t2i_api", {"prompt": "a red fox", "options": {"max_loras": 1, "seed": 5}})
        assert not sel.is_error, text_of(sel)
        call = ApiCall.model_validate(sel.structured_content)
        assert call.checkpoint.id == 1 and call.seed == 5 and len(call.loras) == 1
        hits = await client.call_tool("search_models", {"query": "ink", "type": "lora"})
        assert [h["id"] for h in hits.structured_content["result"]] == [2]
        model = await client.call_tool("get_model", {"version_id": 2})
        assert model.structured_content["trained_words"] == ["tw"]
        res = await client.read_resource("registry://models/3")
        assert json.loads(res.contents[0].text)["family"] == "sdxl"


@pytest.mark.parametrize("mode", MODES)
async def test_errors_say_what_to_do(server, mode):
    async with Client(server, mode=mode) as client:
        r = await client.call_tool("get_model", {"version_id": 999})
        assert r.is_error and "unknown model id 999" in text_of(r) and "search_models" in text_of(r)
        r = await client.call_tool("select_t2i_api", {"prompt": "   "})
        assert r.is_error and "prompt is empty" in text_of(r)
        r = await client.call_tool("select_t2i_api", {"prompt": ""})
        assert r.is_error and "prompt" in text_of(r)
        r = await client.call_tool("render_image", {})
        assert r.is_error and "exactly one of" in text_of(r)
        r = await client.call_tool("get_render", {"job_id": "nope"})
        assert r.is_error and "unknown or expired job id" in text_of(r)
        call = (await client.call_tool("select_t2i_api", {"prompt": "x"})).structured_content
        r = await client.call_tool("render_image", {"call": {**call, "checkpoint": {**call["checkpoint"], "id": 2}}})
        assert r.is_error and "is a lora, not a checkpoint" in text_of(r)
        r = await client.call_tool("render_image", {"call": {**call, "steps": 999}})
        assert r.is_error and "steps" in text_of(r)
        for uri in ["outputs://../registry.db", "outputs://%2E%2E/x.png", "registry://models/abc"]:
            with pytest.raises(MCPError):
                await client.read_resource(uri)


@pytest.mark.parametrize("mode", MODES)
async def test_render_with_progress(server, settings, renderer, mode):
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, total))

    async with Client(server, mode=mode) as client:
        r = await client.call_tool("render_image", {"prompt": "a red fox"}, progress_callback=on_progress)
        assert not r.is_error, text_of(r)
        assert [b.type for b in r.content] == ["image", "resource_link", "text"]
        assert base64.b64decode(r.content[0].data).startswith(b"\x89PNG")
        meta = r.structured_content
        assert meta["status"] == "done" and meta["result"]["width"] == 64
        assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
        out = meta["result"]["output_id"]
        assert meta["result"]["path"] == str((settings.output_dir / out).resolve())
        blob = await client.read_resource(r.content[1].uri)
        assert base64.b64decode(blob.contents[0].blob).startswith(b"\x89PNG")
        # the same call again, as passed back by a model
        r2 = await client.call_tool("render_image", {"call": meta["result"]["call"]})
        assert r2.structured_content["result"]["seed"] == meta["result"]["seed"]


@pytest.mark.parametrize("mode", MODES)
async def test_slow_render_returns_job_handle(settings, runtime, renderer, mode):
    renderer.step_s = 0.1
    server = create_server(settings, runtime=runtime, render_wait_s=0.15)
    async with Client(server, mode=mode) as client:
        r = await client.call_tool("render_image", {"prompt": "a fox"})
        assert not r.is_error and r.structured_content["status"] == "running"
        job_id = r.structured_content["job_id"]
        assert "get_render" in r.structured_content["message"]
        r = await client.call_tool("get_render", {"job_id": job_id, "wait_s": 5})
        assert r.structured_content["status"] == "done" and r.content[0].type == "image"
        q = await client.call_tool("render_image", {"prompt": "later", "wait": False})
        assert q.structured_content["status"] in ("queued", "running")
        c = await client.call_tool("cancel_render", {"job_id": q.structured_content["job_id"]})
        assert c.structured_content["status"] == "cancelled"


@pytest.mark.parametrize("mode", MODES)
async def test_client_timeout_stops_the_denoising_loop(settings, runtime, renderer, mode):
    renderer.step_s = 0.05
    server = create_server(settings, runtime=runtime)
    async with Client(server, mode=mode) as client:
        call = (await client.call_tool("select_t2i_api", {"prompt": "x"})).structured_content
        call["steps"] = 100  # 5 s if nobody stops it
        with pytest.raises(MCPError):
            await client.call_tool("render_image", {"call": call}, read_timeout_seconds=0.3)
        with anyio.fail_after(3):
            while renderer.stopped_at is None:
                await anyio.sleep(0.02)
        assert renderer.stopped_at < 40


class SeedScorer:
    """A scorer that likes even seeds: the winner is predictable without scoring models."""

    def __init__(self):
        self.prompts = []

    def score(self, prompt, images):
        from diffagent.scoring.types import ScoreResult

        self.prompts.append(prompt)
        return [ScoreResult(metrics={}, unified=float(i % 2 == 1)) for i in range(len(images))]


async def test_best_of_n_renders_candidates_and_keeps_the_best(server, renderer, monkeypatch):
    from diffagent.scoring.unified import UnifiedScorer

    scorer = SeedScorer()
    monkeypatch.setattr(UnifiedScorer, "from_config", classmethod(lambda cls, config: scorer))
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, total))

    async with Client(server) as client:
        r = await client.call_tool("render_image", {"prompt": "a red fox", "best_of": 3}, progress_callback=on_progress)
        assert not r.is_error, text_of(r)
        result = r.structured_content["result"]
        assert renderer.calls == 3 and result["scores"] == [0.0, 1.0, 0.0]
        assert result["seed"] == 8  # candidate 1: the selected call (seed 7) with the next seed
        assert scorer.prompts == ["a red fox"]  # scored against what the user asked for
        assert seen[-1] == (12, 12)  # progress counts the steps of all candidates
