"""``diffagent serve``: run the MCP server over stdio (default) or streamable HTTP (``--http``)."""

from __future__ import annotations

import argparse
import logging
import sys

from diffagent.settings import Settings


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the MCP server (stdio for IDE assistants and Claude Desktop; --http for a shared daemon)",
        description="Serve select_t2i_api, render_image and registry tools over MCP. stdio carries only "
        "protocol on stdout (logs go to stderr); --http serves http://HOST:PORT/mcp.",
    )
    p.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    p.add_argument("--host", default="127.0.0.1",
                   help="HTTP bind address (default 127.0.0.1; others need DIFFAGENT_HTTP_TOKEN)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    from diffagent.errors import DiffAgentError
    from diffagent.server.http import check_bind, run_http
    from diffagent.server.server import create_server

    # stdout belongs to the protocol on stdio; everything else goes to stderr
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if args.http:
            check_bind(args.host, settings.http_token)
        server = create_server(settings)
        if args.http:
            run_http(server, host=args.host, port=args.port, token=settings.http_token)
        else:
            server.run()
    except DiffAgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
