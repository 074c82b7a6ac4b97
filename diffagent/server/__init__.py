"""diffagent as an MCP server (``diffagent serve``): stdio by default, streamable HTTP with ``--http``."""

from diffagent.server.server import create_server

__all__ = ["create_server"]
