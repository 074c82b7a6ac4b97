"""Streamable HTTP: one long-lived process that owns the GPU, shared by every client.

Loopback binds keep the SDK's DNS-rebinding guard (Host/Origin allowlist) and need no token. Any
other bind exposes the GPU to the network, so it is refused unless ``DIFFAGENT_HTTP_TOKEN`` is set;
then every request must carry ``Authorization: Bearer <token>``. (The SDK's own auth is an OAuth
resource server; a static shared secret is what a single-user GPU box needs.)
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from diffagent.errors import UserInputError

log = logging.getLogger(__name__)
MCP_PATH = "/mcp"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: a bearer token shorter than this is guessable (``secrets.token_urlsafe(32)`` gives 43 characters)
MIN_TOKEN_CHARS = 24


def check_bind(host: str, token: str | None) -> None:
    if token is not None and (len(token) < MIN_TOKEN_CHARS or len(set(token)) < 8 or token != token.strip()):
        raise UserInputError(
            f"DIFFAGENT_HTTP_TOKEN is too weak ({len(token)} characters, {len(set(token))} distinct; no spaces at "
            f"the ends): use at least {MIN_TOKEN_CHARS} random characters, e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if not is_loopback(host) and not token:
        raise UserInputError(
            f"refusing to serve on {host}: anyone who can reach it could use the GPU and read outputs. "
            "Set DIFFAGENT_HTTP_TOKEN to a long random secret (clients send 'Authorization: Bearer <token>'), "
            "or bind 127.0.0.1"
        )


def transport_security(host: str) -> TransportSecuritySettings:
    """The SDK's Host/Origin guard, set explicitly for every bind (the SDK turns it on by itself only for the
    spellings 127.0.0.1, localhost and ::1, so 127.0.0.2 or 0:0:0:0:0:0:0:1 were served to any Host).
    Loopback binds accept the loopback names only; other binds are token-guarded and reached by names we
    cannot know, so the Host check is off there and the bearer token decides."""
    if not is_loopback(host):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    names = {"127.0.0.1", "localhost", "[::1]"}
    if host != "localhost":
        ip = ipaddress.ip_address(host)
        names.add(f"[{ip.compressed}]" if ip.version == 6 else ip.compressed)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted(f"{n}:*" for n in names),
        allowed_origins=sorted(f"http://{n}:*" for n in names),
    )


class BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                body = json.dumps({"error": "missing or wrong bearer token"}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="diffagent"'),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


#: the largest request body served: a full ApiCall (two 8,000-character prompts, 8 LoRAs, 16 embeddings,
#: 16 alternatives) is under 64 KiB; the SDK's default (4 MiB) lets one client make the event loop parse
#: megabytes of JSON while every other client waits
MAX_BODY_BYTES = 256 * 1024


def http_app(server: MCPServer, *, host: str = "127.0.0.1", token: str | None = None) -> ASGIApp:
    """The ASGI app serving ``server`` at ``/mcp`` (guarded as described above)."""
    check_bind(host, token)
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        host=host,
        transport_security=transport_security(host),
        max_request_body_size=MAX_BODY_BYTES,
    )
    return BearerAuth(app, token) if token else app


def run_http(server: MCPServer, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None) -> None:
    import uvicorn

    app = http_app(server, host=host, token=token)
    log.info("diffagent MCP server on http://%s:%d%s%s", host, port, MCP_PATH, " (bearer token)" if token else "")
    uvicorn.run(app, host=host, port=port, log_level="warning")
