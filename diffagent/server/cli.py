"""``diffagent serve``: run the MCP server over stdio (default) or streamable HTTP (``--http``)."""

from __future__ import annotations

import argparse
import logging

from diffagent.registry.location import display
from diffagent.settings import Settings

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parents = [subparsers.common_parent] if hasattr(subparsers, "common_parent") else []
    p = subparsers.add_parser(
        "serve",
        parents=parents,
        help="run the MCP server (stdio for IDE assistants and Claude Desktop; --http for a shared daemon)",
        description="Serve select_t2i_api, render_image and the registry tools over MCP. On stdio, stdout "
        "carries only protocol (logs go to stderr); --http serves http://HOST:PORT/mcp.",
    )
    p.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="HTTP bind address (default 127.0.0.1; any other needs DIFFAGENT_HTTP_TOKEN)",
    )
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    from diffagent.server.http import check_bind, run_http
    from diffagent.server.server import create_server

    if args.http:
        check_bind(args.host, settings.http_token)  # refuse before anything loads
    server = create_server(settings)
    log.info("registry %s, outputs in %s", display(settings.registry), settings.output_dir)
    if args.http:
        run_http(server, host=args.host, port=args.port, token=settings.http_token)
    else:
        import anyio

        from diffagent.server.stdio import run_stdio

        # stdio: the SDK points fd 1 at stderr while serving, so stray prints miss the wire
        anyio.run(run_stdio, server)
    return 0
