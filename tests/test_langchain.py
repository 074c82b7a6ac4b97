"""The LangChain adapter: in-process tools over the typed functions, and the MCP-client bridge."""

from __future__ import annotations

import pytest
from langchain_core.messages import ToolMessage
from mcp import Client
from mcp_fakes import FakeRenderer, FakeRuntime

from diffagent.apicall import ApiCall
from diffagent.langchain import diffagent_tools, mcp_tools
from diffagent.server import create_server
from diffagent.settings import Settings
from diffagent.tools import RenderOutput


@pytest.fixture
def runtime(tmp_path) -> FakeRuntime:
    return FakeRuntime(Settings(data_dir=tmp_path / "data", registry=tmp_path / "r.db", allow_downloads=False))


@pytest.fixture
def renderer(monkeypatch) -> FakeRenderer:
    import diffagent.render

    fake = FakeRenderer()
    monkeypatch.setattr(diffagent.render, "render", fake, raising=False)
    return fake


def invoke(tool, args: dict) -> ToolMessage:
    """Invoke as an agent does (a ToolCall), which is what yields the artifact."""
    return tool.invoke({"type": "tool_call", "id": "1", "name": tool.name, "args": args})


def test_in_process_tools_return_content_and_typed_artifacts(runtime, renderer):
    tools = {t.name: t for t in diffagent_tools(runtime=runtime)}
    assert set(tools) == {"select_t2i_api", "render_image", "search_models", "get_model"}
    assert all(t.response_format == "content_and_artifact" for t in tools.values())

    msg = invoke(tools["select_t2i_api"], {"prompt": "a red fox", "options": {"seed": 3}})
    assert isinstance(msg.artifact, ApiCall) and msg.artifact.seed == 3
    assert '"checkpoint"' in msg.content

    msg = invoke(tools["render_image"], {"call": msg.artifact.model_dump()})
    assert isinstance(msg.artifact, RenderOutput) and msg.artifact.path.endswith(".png")
    image, text = msg.content
    assert image["type"] == "image" and image["mime_type"] == "image/png" and image["base64"]
    assert msg.artifact.path in text["text"]

    msg = invoke(tools["search_models"], {"query": "ink", "type": "lora"})
    assert [h.id for h in msg.artifact] == [2]
    assert invoke(tools["get_model"], {"version_id": 1}).artifact.type == "checkpoint"


def test_in_process_errors_are_tool_output(runtime, renderer):
    tools = {t.name: t for t in diffagent_tools(runtime=runtime)}
    msg = invoke(tools["get_model"], {"version_id": 404})
    assert msg.status == "error" and "unknown model id 404" in msg.content and "search_models" in msg.content
    msg = invoke(tools["render_image"], {})
    assert msg.status == "error" and "exactly one of" in msg.content
    out = invoke(tools["search_models"], {"query": "x", "limit": 500})
    assert "invalid arguments" in out.content and "limit" in out.content


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_mcp_bridge(runtime, renderer, anyio_backend):
    async with Client(create_server(runtime.settings, runtime=runtime)) as client:
        tools = {t.name: t for t in await mcp_tools(client)}
        assert "render_image" in tools and "cancel_render" in tools
        sel = await tools["select_t2i_api"].ainvoke(
            {"type": "tool_call", "id": "1", "name": "select_t2i_api", "args": {"prompt": "a fox"}}
        )
        assert sel.artifact["checkpoint"]["id"] == 1
        out = await tools["render_image"].ainvoke(
            {"type": "tool_call", "id": "2", "name": "render_image", "args": {"call": sel.artifact}}
        )
        assert [b["type"] for b in out.content] == ["image", "text", "text"]
        assert out.artifact["status"] == "done"
        bad = await tools["get_model"].ainvoke(
            {"type": "tool_call", "id": "3", "name": "get_model", "args": {"version_id": 404}}
        )
        assert bad.status == "error" and "search_models" in bad.content
