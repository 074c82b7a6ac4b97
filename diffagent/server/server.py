"""The MCP server: diffagent's typed tool functions wired onto the official SDK (``MCPServer``).

Everything here is protocol wiring; the work happens in ``diffagent.tools``. Rules kept throughout:
- anything the caller can fix becomes an ``isError`` result whose text says what to do
  (``ToolError``); any other exception is masked by the SDK and logged to stderr with its traceback;
- the model never chooses a file path or URL: renders go to ``settings.output_dir`` under a
  server-chosen name and are read back through ``outputs://`` with a confined join;
- one process owns the models (``Runtime``, loaded lazily on first use) and one worker thread owns
  the GPU (``JobManager``); renders that outlast ``render_wait_s`` hand back a job id to poll.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.shared.exceptions import MCPError
from mcp.shared.path_security import PathEscapeError, safe_join
from mcp.types import INVALID_PARAMS, CallToolResult, ImageContent, ResourceLink, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from diffagent import __version__, tools
from diffagent.agent.options import (
    PROMPT_MAX_CHARS,
    STYLE_MAX_CHARS,
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
from diffagent.apicall import MAX_ID, ApiCall
from diffagent.errors import DiffAgentError, NotFoundError
from diffagent.prompttext import has_visible_text
from diffagent.registry.info import VersionInfo
from diffagent.server.job_store import open_job_store
from diffagent.server.jobs import Job, JobManager
from diffagent.settings import Settings, get_settings
from diffagent.tools import ModelSummary, RenderOutput, Runtime

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Text-to-image with Stable Diffusion models from a local registry. Call select_t2i_api with the "
    "user's prompt to get a complete call (checkpoint, LoRAs, settings), adjust it if asked, then pass "
    "it to render_image. Long renders return a job_id: poll get_render with it."
)
#: finished job ids stay valid this long (stated in messages, so a caller knows)
JOB_TTL_S = 3600.0
#: a blocking render hands back its job id after this many seconds (hosts time out at ~60 s)
RENDER_WAIT_S = 45.0
#: renders waiting or running at once; more is refused with "queue full, retry"
MAX_PENDING = 8
POLL_S = 0.05
#: output ids are server-chosen file names (with a date folder); anything longer is not one of ours
MAX_OUTPUT_ID = 255

JobId = Annotated[str, Field(min_length=1, max_length=64, description="job_id returned by render_image")]


class RenderStatus(BaseModel):
    """State of a render job; ``result`` is set once it is done."""

    job_id: str = Field(description="handle for get_render/cancel_render, valid 60 min after the job ends")
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    step: int = Field(description="denoising steps finished so far")
    total: int = Field(description="denoising steps in all (0 until the render starts)")
    message: str = Field(description="what happened and what to do next")
    result: RenderOutput | None = None


@dataclass
class ServerState:
    """What the lifespan owns: shared by every client of this process."""

    runtime: Runtime
    jobs: JobManager


#: an absolute POSIX path in a message (not the path part of a URL: no ``:`` or ``/`` just before it)
_SERVER_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"(),;:]+/)*[^\s'\"(),;:]*")


def redact_paths(text: str) -> str:
    """A message with the server's file paths replaced by their last component: a remote caller cannot act on
    the server's folders, and they say how the machine is laid out. (The CLI shows full paths.)"""
    return _SERVER_PATH.sub(lambda m: f"<server>/{m.group(0).rstrip('/').rsplit('/', 1)[-1]}", text)


def caller_message(exc: BaseException) -> str:
    """What a caller may see of a failure: diffagent's own errors (server paths shortened), anything else
    masked."""
    if isinstance(exc, DiffAgentError):
        return redact_paths(str(exc))
    return "the render failed with an internal error (details are in the server log); retry or change the call"


@contextmanager
def caller_errors() -> Iterator[None]:
    """Turn errors the caller can fix into ``isError`` results; let the SDK mask everything else."""
    try:
        yield
    except DiffAgentError as exc:
        raise ToolError(redact_paths(str(exc))) from exc


def create_server(
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    *,
    render_wait_s: float = RENDER_WAIT_S,
    max_pending: int = MAX_PENDING,
    job_ttl_s: float = JOB_TTL_S,
) -> MCPServer[ServerState]:
    """The diffagent MCP server. ``runtime`` is injectable for tests; by default one is made from
    ``settings`` and loads the registry and selector on first use."""
    settings = settings or (runtime.settings if runtime else get_settings())
    runtime = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(_server: MCPServer[ServerState]) -> AsyncIterator[ServerState]:
        # a local renderer runs one job at a time; Ray Serve replicas each run theirs
        workers = settings.ray_max_replicas if settings.render_backend == "ray" else 1
        store = open_job_store(settings.job_table) if settings.job_table else None
        jobs = JobManager(
            max_pending=max_pending,
            ttl_s=job_ttl_s,
            error_text=caller_message,
            workers=workers,
            store=store,
            encode=lambda out: out.model_dump_json(),
            decode=render_output_from_json,
        )
        try:
            yield ServerState(runtime=runtime, jobs=jobs)
        finally:
            await anyio.to_thread.run_sync(jobs.close)

    mcp = MCPServer("diffagent", instructions=INSTRUCTIONS, version=__version__, lifespan=lifespan)
    read_only = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)

    def state(ctx: Context[ServerState]) -> ServerState:
        return ctx.request_context.lifespan_context

    # --- selection and the registry ----------------------------------------------------------
    @mcp.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=False, open_world_hint=False))
    def select_t2i_api(prompt: Prompt, ctx: Context[ServerState], options: SelectOptions | None = None) -> ApiCall:
        """Pick checkpoint, LoRAs and settings from the registry for a prompt; returns a call for render_image."""
        # runs in a worker thread (the SDK's, for a sync tool); the selector lends each request its own LLM copy
        with caller_errors():
            return tools.select_t2i_api(prompt, options, runtime=state(ctx).runtime)

    @mcp.tool(annotations=read_only)
    def search_models(
        query: Query,
        ctx: Context[ServerState],
        type: ModelType | None = None,
        base: Base = "any",
        min_downloads: MinDownloads = 0,
        limit: SearchLimit = 10,
    ) -> list[ModelSummary]:
        """Search the model registry by text, type, base family and popularity."""
        with caller_errors():
            return tools.search_models(
                query, type=type, base=base, min_downloads=min_downloads, limit=limit, runtime=state(ctx).runtime
            )

    @mcp.tool(annotations=read_only)
    def get_model(version_id: VersionId, ctx: Context[ServerState]) -> VersionInfo:
        """Everything the registry knows about one model version (trigger words, recommended settings)."""
        with caller_errors():
            return tools.get_model(version_id, runtime=state(ctx).runtime)

    # --- rendering ---------------------------------------------------------------------------
    @mcp.tool(
        annotations=ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=settings.allow_downloads,
        )
    )
    async def render_image(
        ctx: Context[ServerState],
        call: Annotated[ApiCall | None, Field(description="the call from select_t2i_api (possibly edited)")] = None,
        prompt: Annotated[
            Prompt | None, Field(description="instead of call: select for this prompt, then render")
        ] = None,
        best_of: BestOf = 1,
        wait: Annotated[bool, Field(description="false: return a job_id at once")] = True,
    ) -> Annotated[CallToolResult, RenderStatus]:
        """Render a call (or a prompt) to a PNG; returns a preview, the file and metadata, or a job_id if slow."""
        st = state(ctx)
        with caller_errors():  # fail now, not after queueing; off the event loop (it reads the registry)
            await anyio.to_thread.run_sync(lambda: tools.check_render(call, prompt, best_of, runtime=st.runtime))

        def work(progress, cancel) -> RenderOutput:
            return tools.render_image(call, prompt, best_of, progress=progress, cancel=cancel, runtime=st.runtime)

        with caller_errors():
            job = st.jobs.submit(work)
        if wait:
            # The caller has no job id until we return, so if it gives up, the render stops.
            job = await follow(ctx, job, render_wait_s, cancel_on_abort=True, jobs=st.jobs)
        return status_result(job, st.jobs)

    @mcp.tool(annotations=read_only)
    async def get_render(
        job_id: JobId,
        ctx: Context[ServerState],
        wait_s: Annotated[float, Field(ge=0, le=RENDER_WAIT_S, description="wait this long for it to end")] = 0,
    ) -> Annotated[CallToolResult, RenderStatus]:
        """Status of a render job; when done, the image and metadata."""
        st = state(ctx)
        with caller_errors():
            job = st.jobs.get(job_id)
        job = await follow(ctx, job, wait_s, cancel_on_abort=False, jobs=st.jobs)
        return status_result(job, st.jobs)

    @mcp.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
        )
    )
    async def cancel_render(job_id: JobId, ctx: Context[ServerState]) -> Annotated[CallToolResult, RenderStatus]:
        """Stop a queued or running render job."""
        st = state(ctx)
        with caller_errors():
            job = st.jobs.cancel(job_id)
        with anyio.move_on_after(10):  # a running render stops at its next step
            while not job.finished_state:
                await anyio.sleep(POLL_S)
                if job.remote:  # another front runs it: read its row again
                    job = await anyio.to_thread.run_sync(st.jobs.get, job.id)
        return status_result(job, st.jobs)

    # --- resources and the workflow prompt ---------------------------------------------------
    @mcp.resource("registry://models/{version_id}", mime_type="application/json")
    def registry_model(version_id: str) -> str:
        """A registry entry (the same data as get_model) as JSON."""
        if not (version_id.isascii() and version_id.isdigit()) or int(version_id) > MAX_ID:
            raise ResourceNotFoundError(f"registry ids are integers, got {version_id!r}; call search_models")
        try:
            info = tools.get_model(int(version_id), runtime=runtime)
        except NotFoundError as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        return info.model_dump_json(indent=1)

    @mcp.resource("outputs://{+output_id}", mime_type="image/png")
    def rendered_output(output_id: str) -> bytes:
        """A rendered PNG at full resolution (output_id from render_image)."""
        return read_output(settings, output_id)

    @mcp.prompt()
    def text_to_image(subject: str = "", style: str = "") -> str:
        """Select a model and settings for a subject, then render it."""
        # checked here, not by the SDK: its own refusals of prompt arguments reach clients as "Internal server error"
        if not has_visible_text(subject) or len(subject) > PROMPT_MAX_CHARS:
            raise MCPError(
                INVALID_PARAMS,
                f"text_to_image needs a 'subject' of 1 to {PROMPT_MAX_CHARS} characters: "
                f"what the picture should show (got {len(subject)} characters)",
            )
        if len(style) > STYLE_MAX_CHARS:
            raise MCPError(
                INVALID_PARAMS, f"'style' is at most {STYLE_MAX_CHARS} characters (got {len(style)}), e.g. 'anime'"
            )
        hint = f' with options {{"style": {json.dumps(style)}}}' if style else ""
        return (
            f"Make an image of: {subject}\n"
            f"1. Call select_t2i_api with this as the prompt{hint}. Tell me the checkpoint and LoRAs it chose "
            "and its rationale in one sentence.\n"
            "2. Call render_image with the returned call unchanged. If it returns a job_id instead of an "
            "image, call get_render with that job_id and wait_s=30 until it is done.\n"
            "3. Show the image and give me the file path from the result."
        )

    return mcp


async def follow(ctx: Context[ServerState], job: Job, wait_s: float, *, cancel_on_abort: bool, jobs: JobManager) -> Job:
    """Wait up to ``wait_s`` for ``job`` to finish, relaying every denoising step as progress (from the
    latest one: a later ``get_render`` need not replay steps an earlier call already reported). A job another front
    runs is read again from the shared job table each poll; the job as last seen is returned."""
    sent = max(0, len(job.events) - 1)
    last = (0, 0)

    async def relay() -> None:
        nonlocal sent, last
        if job.remote:  # a snapshot holds only the latest step
            if job.events and (job.step, job.total) != last:
                last = (job.step, job.total)
                await ctx.report_progress(job.step, job.total, f"step {job.step}/{job.total}")
            return
        events = job.events[sent:]
        sent += len(events)
        for ev in events:
            await ctx.report_progress(ev.step, ev.total, f"step {ev.step}/{ev.total}")

    try:
        with anyio.move_on_after(wait_s):
            while not job.finished_state:
                await relay()
                await anyio.sleep(POLL_S)
                if job.remote:
                    job = await anyio.to_thread.run_sync(jobs.get, job.id)
        await relay()
    except anyio.get_cancelled_exc_class():
        if cancel_on_abort and not job.finished_state:
            jobs.cancel(job.id)
        raise
    return job


def render_output_from_json(text: str) -> RenderOutput:
    """A result another front recorded in the shared job table; its preview is rebuilt from the PNG (the fronts share
    the output folder)."""
    out = RenderOutput.model_validate_json(text)
    path = Path(out.path)
    if path.is_file():
        out = out.model_copy(update={"preview_png": tools.bounded_preview(path.read_bytes())})
    return out


def status_result(job: Job, jobs: JobManager) -> CallToolResult:
    """The tool result for a job: preview image + resource link + metadata when done, else a handle."""
    result: RenderOutput | None = job.result if job.state == "done" else None
    ttl_min = f"{jobs.ttl_s / 60:g}"
    message = {
        "queued": f"queued behind other renders; call get_render with job_id={job.id} (add wait_s=30 to wait)",
        "running": (
            f"rendering, step {job.step}/{job.total}"
            if job.total
            else "preparing: resolving the weights (a first use downloads them, which can take minutes)"
        )
        + f"; call get_render with job_id={job.id} and wait_s=30",
        "done": f"done: full image at {result.path if result else ''} (outputs://{result.output_id if result else ''})",
        "failed": f"the render failed: {job.error}",
        "cancelled": "the render was cancelled; call render_image again to restart it",
    }[job.state]
    if job.state in ("queued", "running"):
        message += f" (the job id stays valid {ttl_min} min after the job ends)"
    status = RenderStatus(
        job_id=job.id, status=job.state, step=job.step, total=job.total, message=message, result=result
    )
    structured = status.model_dump(mode="json")
    content: list = []
    if result is not None:
        content.append(ImageContent(data=base64.b64encode(result.preview_png).decode(), mime_type="image/png"))
        content.append(
            ResourceLink(
                uri=f"outputs://{result.output_id}",
                name=result.output_id,
                mime_type="image/png",
                description="full-resolution PNG",
            )
        )
    content.append(TextContent(text=json.dumps(structured, separators=(",", ":"))))
    return CallToolResult(content=content, structured_content=structured, is_error=job.state == "failed")


def read_output(settings: Settings, output_id: str) -> bytes:
    """The bytes of a rendered PNG, confined to the output folder."""
    root = settings.output_dir
    shown = output_id if len(output_id) <= 80 else output_id[:60] + f"... ({len(output_id)} characters)"
    if len(output_id) > MAX_OUTPUT_ID:
        raise ResourceNotFoundError(
            f"no rendered image {shown!r}: output ids are at most {MAX_OUTPUT_ID} "
            "characters; use an output_id from render_image"
        )
    try:
        path = safe_join(root, output_id)
        if path.suffix.lower() != ".png" or not path.is_file():
            raise ResourceNotFoundError(f"no rendered image {shown!r}; use an output_id from render_image")
        return path.read_bytes()
    except (PathEscapeError, ValueError) as exc:
        raise ResourceNotFoundError(
            f"{shown!r} is not inside the output folder; use an output_id from render_image"
        ) from exc
    except OSError as exc:  # a name the file system refuses (too long, NUL)
        raise ResourceNotFoundError(f"no rendered image {shown!r}; use an output_id from render_image") from exc
