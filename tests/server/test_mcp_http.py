"""Streamable HTTP on a loopback port: the protocol, progress and cancellation over a real socket,
the DNS-rebinding guard, and the bearer token."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import anyio
import httpx
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from diffagent.errors import UserInputError
from diffagent.server import create_server
from diffagent.server.http import check_bind, http_app

TOKEN = "kQ3v8Zr1XyP0mN7bT5wL2cH9"

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_http_select_render_progress_cancel(settings, runtime, renderer, mode):
    renderer.step_s = 0.02
    with serving(http_app(create_server(settings, runtime=runtime))) as url:
        async with Client(url, mode=mode) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert names[:2] == ["select_t2i_api", "search_models"]
            call = (await client.call_tool("select_t2i_api", {"prompt": "a fox"})).structured_content
            seen = []

            async def on_progress(progress, total, message):
                seen.append(progress)

            r = await client.call_tool("render_image", {"call": call}, progress_callback=on_progress)
            assert r.structured_content["status"] == "done" and seen == [1, 2, 3, 4]
            call["steps"] = 150
            with pytest.raises(MCPError):
                await client.call_tool("render_image", {"call": call}, read_timeout_seconds=0.3)
            with anyio.fail_after(5):
                while renderer.stopped_at is None:
                    await anyio.sleep(0.02)
            assert renderer.stopped_at < 100


async def test_oversized_bodies_are_refused_before_parsing(settings, runtime):
    """A 1.8 MB call (20,000 LoRAs) is refused by size, so no client can make the event loop parse megabytes."""
    from diffagent.server.http import MAX_BODY_BYTES

    lora = {"id": 2, "air": "urn:air:sd1:lora:civitai:20@2", "name": "x", "family": "sd1", "weight": 0.5}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "render_image",
            "arguments": {
                "call": {"checkpoint": {**lora, "weight": None}, "prompt": "a cat", "loras": [lora] * 20_000}
            },
        },
    }
    with serving(http_app(create_server(settings, runtime=runtime))) as url:
        async with httpx.AsyncClient() as http:
            r = await http.post(url, json=body, headers={"Accept": "application/json, text/event-stream"})
            assert r.status_code == 413 and len(r.request.content) > MAX_BODY_BYTES


async def test_dns_rebinding_guard_and_bearer_token(settings, runtime):
    with serving(http_app(create_server(settings, runtime=runtime))) as url:
        async with httpx.AsyncClient() as http:
            r = await http.post(url, headers={"Host": "evil.example:80"}, json={})
            assert r.status_code in (403, 421)
    with serving(http_app(create_server(settings, runtime=runtime), token=TOKEN)) as url:
        async with httpx.AsyncClient() as http:
            assert (await http.post(url, json={})).status_code == 401
            wrong = await http.post(url, json={}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        with pytest.raises(Exception):  # noqa: B017 - no token: the connection is refused, whatever the type
            async with Client(url, mode="legacy"):
                pass
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
                assert len((await client.list_tools()).tools) == 6


@pytest.mark.parametrize("host", ["127.0.0.2", "0:0:0:0:0:0:0:1", "::1"])
async def test_every_loopback_bind_keeps_the_dns_rebinding_guard(settings, runtime, host):
    with serving(http_app(create_server(settings, runtime=runtime), host=host)) as url:
        async with httpx.AsyncClient() as http:
            evil = await http.post(url, json={}, headers={"Host": "evil.com", "Origin": "http://evil.com"})
            assert evil.status_code in (403, 421)
        async with Client(url, mode="legacy") as client:  # a loopback name still gets in
            assert len((await client.list_tools()).tools) == 6


def test_transport_security_is_explicit_for_every_bind():
    from diffagent.server.http import transport_security

    assert "[::1]:*" in transport_security("0:0:0:0:0:0:0:1").allowed_hosts
    assert "127.0.0.2:*" in transport_security("127.0.0.2").allowed_hosts
    assert transport_security("0.0.0.0").enable_dns_rebinding_protection is False  # the bearer token guards it


def test_non_loopback_bind_needs_a_token():
    with pytest.raises(UserInputError, match="DIFFAGENT_HTTP_TOKEN"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", TOKEN)
    for weak in ["s3cret", "a" * 40, " " + TOKEN]:
        with pytest.raises(UserInputError, match="too weak"):
            check_bind("0.0.0.0", weak)
    check_bind("::1", None)
    check_bind("localhost", None)
