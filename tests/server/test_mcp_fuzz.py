"""Property: no input crashes the server. Every bad call comes back as an ``isError`` result whose
text is one of our anticipated messages (never the SDK's masked "Error executing tool", never a
traceback), and the server keeps answering afterwards."""

from __future__ import annotations

import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from mcp import Client
from mcp.shared.exceptions import MCPError

from diffagent.server import create_server
from diffagent.tools import Runtime

json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)

KEYS = {
    "select_t2i_api": ["prompt", "options"],
    "search_models": ["query", "type", "base", "min_downloads", "limit"],
    "get_model": ["version_id"],
    "render_image": ["call", "prompt", "best_of", "wait"],
    "get_render": ["job_id", "wait_s"],
    "cancel_render": ["job_id"],
}
OPTION_KEYS = ["base", "max_loras", "style", "seed", "n_candidates"]
CALL_KEYS = ["checkpoint", "loras", "prompt", "steps", "cfg_scale", "width", "height", "sampler", "seed", "clip_skip"]


def near_valid(keys: list[str]):
    """Dicts over the real argument names (so validation paths past the first one get exercised)."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), json_value, max_size=len(keys) + 1)


arguments = st.one_of(
    *[st.tuples(st.just(name), near_valid(keys)) for name, keys in KEYS.items()],
    st.tuples(
        st.just("select_t2i_api"),
        st.fixed_dictionaries({"prompt": st.text(max_size=50), "options": near_valid(OPTION_KEYS)}),
    ),
    st.tuples(st.just("render_image"), st.fixed_dictionaries({"call": near_valid(CALL_KEYS), "wait": st.just(False)})),
)


@pytest.fixture(params=["fake", "real"])
def portal_client(request, settings, runtime, renderer):
    """The server over the fakes, and over the real registry and retrieval selector (whose search
    sees every odd query string); renders always use the fake renderer."""
    if request.param == "real":
        settings = request.getfixturevalue("world_settings")
        runtime = Runtime(settings)
    server = create_server(settings, runtime=runtime)
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        # legacy mode goes through JSON-RPC framing, like a real host
        with portal.wrap_async_context_manager(Client(server, mode="legacy")) as client:
            yield portal, client


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arguments)
def test_no_input_crashes_the_server(portal_client, name_args):
    portal, client = portal_client
    name, args = name_args
    result = portal.call(client.call_tool, name, args)
    text = " ".join(b.text for b in result.content if b.type == "text")
    if result.is_error:
        assert text.strip(), (name, args)
        assert text.strip() != f"Error executing tool {name}", (name, args)  # the SDK's mask for a crash
        assert "Traceback" not in text and 'File "' not in text
    assert not portal.call(client.call_tool, "search_models", {"query": "cat"}).is_error  # still serving


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["outputs://", "registry://models/"]), st.text(min_size=1, max_size=40))
def test_no_resource_uri_crashes_the_server(portal_client, scheme, tail):
    """Any URI is either read or refused with our message; never a crash, never outside the folder."""
    portal, client = portal_client
    try:
        result = portal.call(client.read_resource, scheme + tail)
    except MCPError as exc:
        assert "Error reading resource" not in str(exc) and "Error creating resource" not in str(exc), str(exc)
    else:  # only real files of the output folder and real registry entries are readable
        assert result.contents
