"""The stdio transport, with an answer for every line a client sends.

The SDK's stdio reader turns a line that is not a JSON-RPC message into an exception on the server's read
stream, and the server drops it with a debug log: the client that sent it waits forever for a reply. Here
such a line gets the JSON-RPC 2.0 error reply (-32700 "Parse error" for text that is not JSON, -32600
"Invalid Request" for JSON that is not a JSON-RPC message, with the request's id when it has one, else
null) and a warning on stderr. Everything else goes to the SDK's server unchanged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import INVALID_REQUEST, PARSE_ERROR, ErrorData, JSONRPCError
from pydantic import ValidationError

if TYPE_CHECKING:
    from mcp.server import MCPServer

log = logging.getLogger(__name__)


def malformed_reply(exc: Exception) -> JSONRPCError:
    """The JSON-RPC error reply to a line the transport could not read as a message."""
    errors = exc.errors() if isinstance(exc, ValidationError) else []
    if not errors or any(e.get("type") == "json_invalid" for e in errors):
        return JSONRPCError(
            jsonrpc="2.0", id=None, error=ErrorData(code=PARSE_ERROR, message="Parse error: the line is not JSON")
        )
    # JSON, but no JSON-RPC message: answer with its id if it has a usable one
    doc = next((e.get("input") for e in errors if isinstance(e.get("input"), dict)), None)
    rid = doc.get("id") if isinstance(doc, dict) else None
    if isinstance(rid, bool) or not isinstance(rid, int | str):
        rid = None
    return JSONRPCError(
        jsonrpc="2.0",
        id=rid,
        error=ErrorData(
            code=INVALID_REQUEST,
            message="Invalid Request: not a JSON-RPC 2.0 request, notification or response "
            "(needs 'jsonrpc': '2.0' and a string 'method', or a result/error with an id)",
        ),
    )


async def run_stdio(server: MCPServer) -> None:
    """Serve ``server`` on stdin/stdout until stdin closes."""
    lowlevel = server._lowlevel_server  # noqa: SLF001 - the SDK runs it on streams only through its own stdio path
    async with stdio_server() as (read_stream, write_stream):
        send, receive = anyio.create_memory_object_stream[SessionMessage](0)

        async def relay() -> None:
            async with send:
                async for item in read_stream:
                    if isinstance(item, Exception):
                        reply = malformed_reply(item)
                        log.warning(
                            "malformed message on stdin (%s); replied with JSON-RPC error %d",
                            type(item).__name__,
                            reply.error.code,
                        )
                        await write_stream.send(SessionMessage(reply))
                    else:
                        await send.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(relay)
            await lowlevel.run(receive, write_stream, lowlevel.create_initialization_options())
            tg.cancel_scope.cancel()
