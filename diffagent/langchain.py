"""LangChain tools for diffagent.

``diffagent_tools()`` wraps the same typed tool functions the MCP server uses, in-process (no MCP hop,
no subprocess): each is a ``StructuredTool`` with ``response_format="content_and_artifact"``, so the
model sees compact content (JSON text, or an image block plus a summary) while the typed result
(``ApiCall``, ``RenderOutput``, ...) rides along as ``ToolMessage.artifact``. Errors the caller can fix
come back as the tool's output text, for the model to correct itself.

``mcp_tools(client)`` does the same for a running ``diffagent serve`` (stdio or HTTP) through an
``mcp.Client``; use it when one long-lived server process should own the GPU.

``langchain-mcp-adapters`` 0.3.x pins ``mcp<2``, so it cannot share an environment with diffagent.
"""

from __future__ import annotations

import base64
import functools
from typing import TYPE_CHECKING, Any

from langchain_core.tools import StructuredTool, ToolException
from pydantic import BaseModel, Field, ValidationError

from diffagent import tools
from diffagent.agent.options import (
    Base,
    BestOf,
    MinDownloads,
    ModelType,
    Prompt,
    Query,
    SearchLimit,
    SelectOptions,
    VersionId,
)
from diffagent.apicall import ApiCall
from diffagent.errors import DiffAgentError
from diffagent.settings import Settings
from diffagent.tools import Runtime

if TYPE_CHECKING:
    from mcp import Client


class SelectArgs(BaseModel):
    prompt: Prompt
    options: SelectOptions | None = None


class SearchArgs(BaseModel):
    query: Query
    type: ModelType | None = None
    base: Base = "any"
    min_downloads: MinDownloads = 0
    limit: SearchLimit = 10


class GetModelArgs(BaseModel):
    version_id: VersionId


class RenderArgs(BaseModel):
    call: ApiCall | None = Field(None, description="the call from select_t2i_api (possibly edited)")
    prompt: Prompt | None = Field(None, description="instead of call: select for this prompt, then render")
    best_of: BestOf = 1


def _validation_message(exc: ValidationError) -> str:
    return f"invalid arguments, fix them and call again: {exc}"


def _as_tool_errors(fn):
    """diffagent's own errors become the tool's output (``ToolException``); anything else propagates."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any):
        try:
            return fn(**kwargs)
        except DiffAgentError as exc:
            raise ToolException(str(exc)) from exc

    return wrapper


def diffagent_tools(settings: Settings | None = None, *, runtime: Runtime | None = None) -> list[StructuredTool]:
    """``select_t2i_api``, ``render_image``, ``search_models`` and ``get_model`` as LangChain tools."""
    rt = runtime or tools.get_runtime(settings)

    def select(prompt: str, options: SelectOptions | None = None):
        call = tools.select_t2i_api(prompt, options, runtime=rt)
        return call.model_dump_json(exclude_none=True), call

    def render(call: ApiCall | None = None, prompt: str | None = None, best_of: int = 1):
        out = tools.render_image(call, prompt, best_of, runtime=rt)
        content = [
            {"type": "image", "base64": base64.b64encode(out.preview_png).decode(), "mime_type": "image/png"},
            {
                "type": "text",
                "text": f"rendered {out.width}x{out.height}, seed {out.seed}, "
                f"{out.seconds:.1f} s; full image: {out.path}",
            },
        ]
        return content, out

    def search(query: str, type: str | None = None, base: str = "any", min_downloads: int = 0, limit: int = 10):
        hits = tools.search_models(query, type=type, base=base, min_downloads=min_downloads, limit=limit, runtime=rt)
        return "[" + ",".join(h.model_dump_json() for h in hits) + "]", hits

    def get_model(version_id: int):
        info = tools.get_model(version_id, runtime=rt)
        return info.model_dump_json(exclude={"files", "description"}), info

    specs = [
        (
            select,
            SelectArgs,
            "select_t2i_api",
            "Pick checkpoint, LoRAs and settings from the registry for a prompt; returns a call for render_image.",
        ),
        (
            render,
            RenderArgs,
            "render_image",
            "Render a call from select_t2i_api (or a prompt) to a PNG; returns a preview and the file path.",
        ),
        (search, SearchArgs, "search_models", "Search the model registry by text, type, base family and popularity."),
        (
            get_model,
            GetModelArgs,
            "get_model",
            "Everything the registry knows about one model version (trigger words, recommended settings).",
        ),
    ]
    return [
        StructuredTool.from_function(
            func=_as_tool_errors(fn),
            name=name,
            description=description,
            args_schema=schema,
            response_format="content_and_artifact",
            handle_tool_error=True,
            handle_validation_error=_validation_message,
        )
        for fn, schema, name, description in specs
    ]


def _content_blocks(content) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for block in content:
        if block.type == "text":
            out.append({"type": "text", "text": block.text})
        elif block.type == "image":
            out.append({"type": "image", "base64": block.data, "mime_type": block.mime_type})
        elif block.type == "resource_link":
            out.append({"type": "text", "text": f"{block.uri} ({block.description or block.name})"})
    return out


async def mcp_tools(client: Client) -> list[StructuredTool]:
    """Every tool of a connected MCP server (e.g. ``diffagent serve``) as a LangChain tool.

    The server validates arguments; an ``isError`` result becomes the tool's error output, and
    ``structured_content`` becomes the artifact. Keep ``client`` open while the tools are in use.
    """

    async def call(name: str, **arguments: Any):
        result = await client.call_tool(name, arguments)
        blocks = _content_blocks(result.content)
        if result.is_error:
            raise ToolException(" ".join(b.get("text", "") for b in blocks) or f"{name} failed")
        return blocks, result.structured_content

    return [
        StructuredTool(
            name=t.name,
            description=t.description or "",
            args_schema=t.input_schema,
            coroutine=functools.partial(call, t.name),
            response_format="content_and_artifact",
            handle_tool_error=True,
        )
        for t in (await client.list_tools()).tools
    ]
