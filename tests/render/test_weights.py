"""Weights resolution and verified, resumable downloads against a loopback Civitai."""

from __future__ import annotations

import os

import pytest

from diffagent.errors import NotFoundError, UserInputError
from diffagent.families import Family
from diffagent.registry.store import WeightSource
from diffagent.render.weights import DownloadError, RegistryResolver, WeightStore, sha256_file

from .fake_civitai import FakeCivitai, FakeFile

PAYLOAD = os.urandom(3 * 2**20 + 123)  # a bit over three 1 MiB chunks


def source(url: str, sha: str | None, **kw) -> WeightSource:
    base = dict(
        version_id=7,
        air="urn:air:sd1:lora:civitai:1@7",
        name="Test LoRA",
        type="lora",
        family=Family.SD1,
        local_path=None,
        hf_repo=None,
        hf_file=None,
        download_url=url,
        sha256=sha,
        filename=None,
        format="SafeTensor",
    )
    base.update(kw)
    return WeightSource(**base)


@pytest.fixture
def civitai():
    with FakeCivitai() as fake:
        yield fake


@pytest.fixture
def store(tmp_path):
    return WeightStore(tmp_path / "weights", civitai_api_key=None, progress=False, sleep=lambda s: None)


def no_partials(root) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".partial")]


def test_download_follows_redirect_names_file_and_verifies(civitai, store):
    civitai.files[7] = FakeFile(PAYLOAD, "detail_tweaker.safetensors")
    path = store.fetch(source(civitai.url(7), civitai.files[7].sha256))
    assert path.name == "detail_tweaker.safetensors"
    assert path.parent == store.entry_dir(civitai.files[7].sha256)
    assert path.read_bytes() == PAYLOAD and no_partials(store.root)
    # second time: served from the cache, no request
    requests = len(civitai.log.api)
    assert store.fetch(source(civitai.url(7), civitai.files[7].sha256)) == path
    assert len(civitai.log.api) == requests


def test_wrong_hash_deletes_the_file_and_says_so(civitai, store):
    civitai.files[7] = FakeFile(PAYLOAD, "x.safetensors")
    with pytest.raises(DownloadError, match="expected 0000.*deleted"):
        store.fetch(source(civitai.url(7), "0" * 64))
    assert not [p for p in store.root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert no_partials(store.root)


def test_dropped_connection_resumes_with_range(civitai, store):
    civitai.files[7] = FakeFile(PAYLOAD, "x.safetensors", drop_after=1_500_000)
    path = store.fetch(source(civitai.url(7), civitai.files[7].sha256))
    assert path.read_bytes() == PAYLOAD
    ranges = [r["range"] for r in civitai.log.storage]
    assert ranges[0] is None and ranges[1] is not None and int(ranges[1].split("=")[1].rstrip("-")) > 0


def test_failed_download_keeps_partial_and_next_call_resumes(civitai, tmp_path):
    civitai.files[7] = FakeFile(PAYLOAD, "x.safetensors", drop_after=1_000_000)
    once = WeightStore(tmp_path / "w", retries=0, progress=False, sleep=lambda s: None)
    with pytest.raises(DownloadError, match="partial file is kept"):
        once.fetch(source(civitai.url(7), civitai.files[7].sha256))
    partial = once.entry_dir(civitai.files[7].sha256) / ".partial"
    kept = partial.stat().st_size
    assert 0 < kept < len(PAYLOAD)
    assert once.cached(civitai.files[7].sha256) is None  # nothing under a final name yet
    path = once.fetch(source(civitai.url(7), civitai.files[7].sha256))
    assert sha256_file(path).upper() == civitai.files[7].sha256
    assert civitai.log.storage[-1]["range"] == f"bytes={kept}-"


def test_gated_file_needs_key_and_key_stays_on_civitai(civitai, tmp_path, monkeypatch):
    civitai.files[7] = FakeFile(PAYLOAD, "x.safetensors", needs_key=True)
    no_key = WeightStore(tmp_path / "a", progress=False, sleep=lambda s: None)
    with pytest.raises(DownloadError, match="CIVITAI_API_KEY"):
        no_key.fetch(source(civitai.url(7), civitai.files[7].sha256))
    # the key is sent to civitai.com hosts only; the loopback server stands in for civitai.com here
    keyed = WeightStore(tmp_path / "b", civitai_api_key=FakeCivitai.API_KEY, progress=False, sleep=lambda s: None)
    monkeypatch.setattr(
        keyed, "_headers", lambda url: {"Authorization": f"Bearer {FakeCivitai.API_KEY}"} if "/api/" in url else {}
    )
    assert keyed.fetch(source(civitai.url(7), civitai.files[7].sha256)).read_bytes() == PAYLOAD
    assert civitai.log.storage[-1]["auth"] is None


def test_key_header_only_for_civitai_hosts(store):
    store.civitai_api_key = "k"
    assert store._headers("https://civitai.com/api/download/models/1")["Authorization"] == "Bearer k"
    assert "Authorization" not in store._headers("https://evil.example/api/download/models/1")


def test_login_page_instead_of_file_is_an_error(civitai, store):
    civitai.files[7] = FakeFile(PAYLOAD, "x.safetensors", html=True)
    with pytest.raises(DownloadError, match="web page"):
        store.fetch(source(civitai.url(7), civitai.files[7].sha256))


def test_missing_version_is_not_found(civitai, store):
    with pytest.raises(NotFoundError, match="404"):
        store.fetch(source(civitai.url(99), None))


def test_unknown_hash_is_filed_under_url_and_real_hash(civitai, store):
    civitai.files[7] = FakeFile(PAYLOAD, "x.safetensors")
    path = store.fetch(source(civitai.url(7), None))
    assert path.read_bytes() == PAYLOAD
    assert store.cached(civitai.files[7].sha256).read_bytes() == PAYLOAD


def test_downloads_off_is_a_clear_error(civitai, tmp_path):
    civitai.files[7] = FakeFile(PAYLOAD, "x.safetensors")
    off = WeightStore(tmp_path / "w", allow_downloads=False, progress=False)
    with pytest.raises(UserInputError, match="downloads are off"):
        off.fetch(source(civitai.url(7), civitai.files[7].sha256))
    assert not civitai.log.api


def test_local_path_wins_and_missing_local_path_is_explained(store, tmp_path):
    local = tmp_path / "mine.safetensors"
    local.write_bytes(b"abc")
    assert store.fetch(source(None, None, local_path=str(local))) == local
    with pytest.raises(NotFoundError, match="does not exist"):
        store.fetch(source(None, None, local_path=str(tmp_path / "gone.safetensors")))
    with pytest.raises(NotFoundError, match="no file"):
        store.fetch(source(None, None))


def test_hf_file_is_verified_and_linked_into_the_cache(store, tmp_path, monkeypatch):
    import hashlib

    import huggingface_hub

    blob = tmp_path / "hub" / "model.safetensors"
    blob.parent.mkdir()
    blob.write_bytes(PAYLOAD)
    calls = []

    def fake_download(repo, filename, local_files_only=False, **kw):
        calls.append((repo, filename, local_files_only))
        return str(blob)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    path = store.fetch(source(None, sha, hf_repo="org/repo", hf_file="model.safetensors"))
    assert path == store.entry_dir(sha) / "model.safetensors" and path.read_bytes() == PAYLOAD
    assert calls == [("org/repo", "model.safetensors", True)]
    with pytest.raises(DownloadError, match="registry expects"):
        WeightStore(tmp_path / "other", progress=False).fetch(
            source(None, "1" * 64, hf_repo="org/repo", hf_file="model.safetensors")
        )


def test_registry_resolver_uses_weight_source(civitai, store):
    from diffagent.apicall import ModelRef

    civitai.files[7] = FakeFile(PAYLOAD, "x.safetensors")

    class Registry:
        def weight_source(self, version_id):
            assert version_id == 7
            return source(civitai.url(7), civitai.files[7].sha256)

    resolved = RegistryResolver(Registry(), store)(ModelRef(id=7, air="a", name="n", family=Family.SD1))
    assert resolved.path.read_bytes() == PAYLOAD and resolved.type == "lora" and resolved.family == Family.SD1


def test_cancel_stops_a_download_and_the_next_fetch_resumes(civitai, store):
    """A cancelled render must not hold the render worker until a multi-GB download ends (issue 14)."""
    import threading
    import time

    from diffagent.render.weights import DownloadCancelled, cancellable

    civitai.files[7] = FakeFile(PAYLOAD, "slow.safetensors", chunk_s=0.05)  # about 2.5 s for the whole file
    src = source(civitai.url(7), civitai.files[7].sha256)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    with cancellable(cancel), pytest.raises(DownloadCancelled, match="cancelled.*resumes"):
        store.fetch(src)
    assert time.monotonic() - t0 < 1.5  # stopped within a block or two of the cancel, not at the end
    partial = [p for p in store.root.rglob("*.partial")]
    assert partial and 0 < partial[0].stat().st_size < len(PAYLOAD)
    civitai.files[7].chunk_s = 0.0
    assert store.fetch(src).read_bytes() == PAYLOAD  # resumed from what arrived
    assert civitai.log.storage[-1]["range"] is not None


def test_cancel_abandons_a_blocking_hub_download(store, monkeypatch):
    import threading
    import time

    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from diffagent.render.weights import DownloadCancelled, cancellable

    def hub(repo, filename, local_files_only=False):
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        time.sleep(5)  # a long hub download
        raise AssertionError("the caller should have stopped waiting")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    t0 = time.monotonic()
    with cancellable(cancel), pytest.raises(DownloadCancelled):
        store.from_hf("org/repo", "model.safetensors", name="Big Model")
    assert time.monotonic() - t0 < 1.5


def test_cancel_reaches_the_retry_backoff(store):
    """An unreachable host retries with growing waits (2, 4, 8, 16 s); a cancel ends the wait at once."""
    import socket
    import threading
    import time

    from diffagent.render.weights import DownloadCancelled, cancellable

    with socket.socket() as s:  # a port nothing listens on: every try fails at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    with cancellable(cancel), pytest.raises(DownloadCancelled):
        store.fetch(source(f"http://127.0.0.1:{port}/x.safetensors", None))
    assert time.monotonic() - t0 < 1.5
