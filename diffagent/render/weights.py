"""Find the weights file of a model version: local path, content-addressed cache, Hugging Face, or Civitai.

Downloads go into a content-addressed cache (``<weights_dir>/sha256/<hash>/<filename>``), stream with a
progress bar, resume after a dropped connection (HTTP Range), are checked against the registry's SHA256
(a mismatch deletes the file and says so) and are written as ``.partial`` until verified, so a file under
its final name is always complete. The filename is kept because loaders read the format from the suffix.
"""

from __future__ import annotations

import contextlib
import contextvars
import email.message
import hashlib
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from diffagent.apicall import ModelRef
from diffagent.errors import DiffAgentError, NotFoundError, UserInputError
from diffagent.families import FLOW, Family, ecosystem_of

PARTIAL = ".partial"
_CHUNK = 1 << 20
#: Civitai ``format`` -> file suffix, for downloads whose name lacks one
_SUFFIX = {"safetensor": ".safetensors", "safetensors": ".safetensors", "pickletensor": ".ckpt"}
_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def source_kind(source) -> str | None:
    """How ``WeightStore.fetch`` gets a ``WeightSource``: "local" (a path only), "hf-file", "hf-folder" (a
    diffusers-format repo), "url", or None when the registry knows no location (the model cannot render)."""
    if source.hf_repo and source.hf_file:
        return "hf-file"
    if source.hf_repo and (source.format == "Diffusers" or not source.download_url):
        return "hf-folder"
    if source.download_url:
        return "url"
    if source.local_path:
        return "local"
    return None


class DownloadError(DiffAgentError):
    """A download failed for a reason the user can act on (network, auth, hash)."""


class DownloadCancelled(DiffAgentError):
    """The caller's cancel event was set during a download; what arrived is kept and the next try resumes."""


#: the cancel event of the render that is resolving weights in this thread (``cancellable``)
_CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("diffagent_cancel", default=None)


@contextlib.contextmanager
def cancellable(cancel: threading.Event | None) -> Iterator[None]:
    """Downloads started inside stop soon after ``cancel`` is set (``DownloadCancelled``): between blocks of a
    URL download, and within a fraction of a second for Hugging Face downloads (which run in a helper thread
    that finishes in the background, into the hub's resumable cache)."""
    token = _CANCEL.set(cancel)
    try:
        yield
    finally:
        _CANCEL.reset(token)


def _check_cancel(name: str) -> None:
    cancel = _CANCEL.get()
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled(
            f"the download of {name} was cancelled; what arrived is kept and the next render of this model resumes it"
        )


def _interruptible(fn: Callable[[], Path], name: str, poll_s: float = 0.1) -> Path:
    """``fn()`` (a blocking hub download), abandoned when the cancel event is set."""
    cancel = _CANCEL.get()
    if cancel is None:
        return fn()
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = e

    worker = threading.Thread(target=run, name=f"download {name}", daemon=True)
    worker.start()
    while worker.is_alive():
        _check_cancel(name)
        worker.join(poll_s)
    if "error" in box:
        raise box["error"]
    return box["value"]


class ResolvedWeights(BaseModel):
    """A model version's weights on local disk."""

    path: Path
    sha256: str | None = None
    family: Family
    type: str
    name: str
    #: a FLUX.1 single file holds the transformer alone: the diffusers folder of its reference model, whose text
    #: encoders, tokenizers, VAE and scheduler complete the pipeline (``render/flow_files.py``)
    reference: Path | None = None


class Resolver(Protocol):
    """Maps a ``ModelRef`` (checkpoint, LoRA or embedding) to weights on disk."""

    def __call__(self, ref: ModelRef) -> ResolvedWeights: ...


class TableResolver:
    """Resolves from a fixed table of version id -> ``ResolvedWeights``: a render service pinned to a few local
    models, benchmarks, and tests. Plain data, so it pickles to Ray Serve replicas (``render/ray_serve.py``)."""

    def __init__(self, table: dict[int, ResolvedWeights]):
        self.table = dict(table)

    def __call__(self, ref: ModelRef) -> ResolvedWeights:
        try:
            return self.table[ref.id]
        except KeyError:
            raise NotFoundError(
                f"no weights for {ref.name!r} (version {ref.id}) in this renderer's table; known "
                f"versions: {sorted(self.table)[:20]}"
            ) from None


def sha256_file(path: Path, chunk: int = _CHUNK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _safe_filename(name: str | None, fmt: str | None) -> str:
    """A plain file name (no directories, no control characters) that ends in a weights suffix."""
    name = Path((name or "").replace("\\", "/")).name
    name = re.sub(r"[\x00-\x1f/:*?\"<>|]", "_", name).strip(" .")
    if not name:
        name = "model"
    if not name.lower().endswith(_WEIGHT_SUFFIXES):
        name += _SUFFIX.get((fmt or "").lower(), ".safetensors")
    return name


def _disposition_filename(header: str | None) -> str | None:
    if not header:
        return None
    msg = email.message.Message()
    msg["content-disposition"] = header
    return msg.get_filename()


class WeightStore:
    """The content-addressed weights cache plus the downloaders that fill it."""

    def __init__(
        self,
        root: Path,
        *,
        allow_downloads: bool = True,
        civitai_api_key: str | None = None,
        retries: int = 4,
        timeout: float = 60.0,
        progress: bool | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.root = Path(root)
        self.allow_downloads = allow_downloads
        self.civitai_api_key = civitai_api_key
        self.retries = retries
        self.timeout = timeout
        self.progress = progress  # None: a bar only on a terminal (tqdm's disable=None)
        self._sleep = sleep
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # ---------------------------------------------------------------------------------- cache
    def entry_dir(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256.lower()

    def cached(self, sha256: str | None) -> Path | None:
        """The verified file for ``sha256``, if the cache holds it."""
        if not sha256:
            return None
        d = self.entry_dir(sha256)
        if not d.is_dir():
            return None
        files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
        return files[0] if files else None

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """One download per cache entry at a time (threads here; ``flock`` across processes)."""
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            d = self.entry_dir(key) if re.fullmatch(r"[0-9a-f]{64}", key) else self.root / "url" / key
            d.mkdir(parents=True, exist_ok=True)
            with open(d / ".lock", "a+") as fh:
                try:
                    import fcntl

                    fcntl.flock(fh, fcntl.LOCK_EX)
                except ImportError:  # Windows: the thread lock is all we have
                    pass
                yield

    # ------------------------------------------------------------------------------- resolution
    def fetch(self, source) -> Path:
        """The local weights file (or diffusers folder) of a registry ``WeightSource``, downloading it if needed
        and allowed."""
        sha = (source.sha256 or "").lower() or None
        if hit := self.cached(sha):
            return hit
        kind = source_kind(source)
        if kind == "local" or (source.local_path and Path(source.local_path).expanduser().exists()):
            p = Path(source.local_path).expanduser()
            if p.exists():
                return p
            raise NotFoundError(
                f"weights of {source.name!r} should be at {p}, which does not exist; "
                "copy the file there or re-import the model with its current path"
            )
        if kind == "hf-file":
            return self.from_hf(source.hf_repo, source.hf_file, sha256=sha, name=source.name)
        if kind == "hf-folder":
            return self.from_hf_folder(source.hf_repo, name=source.name)
        if kind == "url":
            return self.download(
                source.download_url, sha256=sha, filename=source.filename, fmt=source.format, name=source.name
            )
        raise NotFoundError(
            f"the registry has no file for {source.name!r} (version {source.version_id}): no local "
            "path, Hugging Face file or folder, or download URL; import it with a local path"
        )

    def _require_downloads(self, name: str, where: str) -> None:
        if not self.allow_downloads:
            raise UserInputError(
                f"weights of {name!r} are not in the cache ({self.root}) and downloads are off; "
                f"set DIFFAGENT_ALLOW_DOWNLOADS=1 or put the file there yourself (from {where})"
            )

    def from_hf(self, repo: str, filename: str, *, sha256: str | None = None, name: str = "") -> Path:
        """A Hugging Face hub file (the hub's own cache), verified and linked into ours."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            path = Path(hf_hub_download(repo, filename, local_files_only=True))
        except LocalEntryNotFoundError:
            self._require_downloads(name or filename, f"https://huggingface.co/{repo}")
            try:
                path = _interruptible(lambda: Path(hf_hub_download(repo, filename)), name or filename)
            except LocalEntryNotFoundError as e:
                raise DownloadError(
                    f"cannot download {repo}/{filename}: the hub is unreachable or HF_HUB_OFFLINE is set ({e})"
                ) from e
        if sha256 is None:
            return path
        with self._locked(sha256):
            if hit := self.cached(sha256):
                return hit
            actual = sha256_file(path)
            if actual != sha256:
                raise DownloadError(
                    f"{repo}/{filename} has SHA256 {actual}, but the registry expects {sha256}; "
                    "the hub file changed since the registry was built: update the registry entry"
                )
            target = self.entry_dir(sha256) / _safe_filename(filename, None)
            tmp = target.with_name(PARTIAL)
            tmp.unlink(missing_ok=True)
            try:
                os.link(path.resolve(), tmp)  # no second copy of a multi-GB file when on one filesystem
            except OSError:
                os.symlink(path.resolve(), tmp)
            os.replace(tmp, target)
            return target

    def from_hf_folder(self, repo: str, *, name: str = "") -> Path:
        """A diffusers-format pipeline repo as a local folder (the hub's cache), with only the files a pipeline
        loads (configs, tokenizers, one set of weights) and checked complete (``check_diffusers_folder``)."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        def fetch(patterns: list[str], offline: bool) -> Path:
            return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=offline))

        try:
            path = fetch(DIFFUSERS_FILES, offline=True)
            check_diffusers_folder(path, repo)
            return path
        except (LocalEntryNotFoundError, IncompleteFolder):
            self._require_downloads(name or repo, f"https://huggingface.co/{repo}")
        try:
            path = _interruptible(lambda: fetch(DIFFUSERS_FILES, offline=False), name or repo)
            if missing := _components_without_weights(path):  # an older repo with .bin weights only
                _interruptible(
                    lambda: fetch([f"{c}/*.bin" for c in missing] + DIFFUSERS_FILES, offline=False), name or repo
                )
        except LocalEntryNotFoundError as e:
            raise DownloadError(f"cannot download {repo}: the hub is unreachable or HF_HUB_OFFLINE is set ({e})") from e
        check_diffusers_folder(path, repo)
        return path

    # -------------------------------------------------------------------------------- download
    def download(
        self,
        url: str,
        *,
        sha256: str | None = None,
        filename: str | None = None,
        fmt: str | None = None,
        name: str = "",
    ) -> Path:
        """Stream ``url`` into the cache; resume after dropped connections; verify ``sha256``."""
        sha256 = sha256.lower() if sha256 else None
        if hit := self.cached(sha256):
            return hit
        self._require_downloads(name or url, url)
        key = sha256 or hashlib.sha256(url.encode()).hexdigest()[:32]
        with self._locked(key):
            if hit := self.cached(sha256):
                return hit
            d = self.entry_dir(sha256) if sha256 else self.root / "url" / key
            if not sha256 and (done := [p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")]):
                return done[0]
            part = d / PARTIAL
            final_name = self._stream(url, part, filename, fmt, name or url)
            actual = sha256_file(part)
            if sha256 and actual != sha256:
                part.unlink(missing_ok=True)
                raise DownloadError(
                    f"download of {name or url} has SHA256 {actual}, expected {sha256}; the file was deleted. "
                    "The source may have replaced the file: update the registry (diffagent registry import) and retry"
                )
            final = d / final_name
            os.replace(part, final)
            if not sha256:  # unknown hash: also file it under its real hash for later lookups
                entry = self.entry_dir(actual)
                entry.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    os.link(final, entry / final_name)
            return final

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"User-Agent": "diffagent"}
        host = urllib.parse.urlsplit(url).hostname or ""
        # the key goes to Civitai only; httpx drops Authorization when a redirect leaves the origin (S3)
        if self.civitai_api_key and (host == "civitai.com" or host.endswith(".civitai.com")):
            headers["Authorization"] = f"Bearer {self.civitai_api_key}"
        return headers

    def _stream(self, url: str, part: Path, filename: str | None, fmt: str | None, name: str) -> str:
        """Download into ``part``, resuming from its current size; returns the final file name."""
        import httpx
        from tqdm.auto import tqdm

        final_name = _safe_filename(filename, fmt) if filename else None
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            _check_cancel(name)
            if attempt:
                delay, cancel = min(2.0**attempt, 30.0), _CANCEL.get()
                if cancel is None:
                    self._sleep(delay)
                else:
                    cancel.wait(delay)  # a cancelled render does not sit out the backoff
                _check_cancel(name)
            offset = part.stat().st_size if part.exists() else 0
            headers = self._headers(url)
            if offset:
                headers["Range"] = f"bytes={offset}-"
            try:
                with (
                    httpx.Client(follow_redirects=True, timeout=self.timeout) as client,
                    client.stream("GET", url, headers=headers) as r,
                ):
                    if r.status_code == 416 and offset:  # we hold every byte already (or junk): let the hash decide
                        return final_name or _safe_filename(None, fmt)
                    self._check_response(r, url, name)
                    if offset and r.status_code != 206:  # server ignored Range: start over
                        offset = 0
                    final_name = final_name or _safe_filename(
                        _disposition_filename(r.headers.get("content-disposition"))
                        or Path(urllib.parse.urlsplit(str(r.url)).path).name,
                        fmt,
                    )
                    length = r.headers.get("content-length")
                    total = offset + int(length) if length and length.isdigit() else None
                    with (
                        open(part, "ab" if offset else "wb") as f,
                        tqdm(
                            total=total,
                            initial=offset,
                            unit="B",
                            unit_scale=True,
                            unit_divisor=1024,
                            desc=final_name[:40],
                            disable=None if self.progress is None else not self.progress,
                            leave=False,
                        ) as bar,
                    ):
                        for block in r.iter_bytes():  # as it arrives: a dropped link loses nothing
                            f.write(block)
                            bar.update(len(block))
                            _check_cancel(name)
                    if total is not None and part.stat().st_size != total:
                        raise httpx.RemoteProtocolError(f"got {part.stat().st_size} of {total} bytes")
                    return final_name
            except httpx.TransportError as e:  # dropped connection, timeout, DNS: resume on the next try
                last_error = e
        raise DownloadError(
            f"download of {name} failed after {self.retries + 1} tries: {last_error}; "
            f"the partial file is kept at {part} and the next try resumes from it"
        )

    @staticmethod
    def _check_response(r, url: str, name: str) -> None:
        if r.status_code in (401, 403):
            raise DownloadError(
                f"{name}: the server refused the download (HTTP {r.status_code}); Civitai needs an "
                "API key for this model: set CIVITAI_API_KEY (civitai.com > account settings)"
            )
        if r.status_code == 404:
            raise NotFoundError(f"{name}: {url} does not exist (HTTP 404); the model version may have been removed")
        if r.status_code >= 400:
            raise DownloadError(f"{name}: HTTP {r.status_code} from {url}")
        if r.headers.get("content-type", "").startswith("text/html"):
            # Civitai answers some unauthenticated downloads with its login page and status 200
            raise DownloadError(
                f"{name}: {url} returned a web page instead of a file; it probably needs a "
                "Civitai API key (set CIVITAI_API_KEY)"
            )


#: the files of a diffusers pipeline repo that loading needs: no fp16 duplicates, no .ckpt single files
DIFFUSERS_FILES = [
    "model_index.json",
    "*/*.json",
    "*/*.txt",
    "*/*.model",
    "*/diffusion_pytorch_model.safetensors",
    "*/model.safetensors",
]
#: pipeline components that carry weights
_WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2", "transformer", "text_encoder_3")


class IncompleteFolder(DownloadError):
    """A diffusers folder lacks a file its pipeline needs, or a weights file is truncated."""


def _components(path: Path) -> dict[str, list]:
    import json

    index = path / "model_index.json"
    if not index.is_file():
        raise IncompleteFolder(f"{path} has no model_index.json: it is not a diffusers pipeline folder")
    try:
        spec = json.loads(index.read_text(encoding="utf-8"))
    except ValueError as e:
        raise IncompleteFolder(f"{index} is not valid JSON ({e})") from e
    return {k: v for k, v in spec.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]}


def _components_without_weights(path: Path) -> list[str]:
    return [
        c
        for c in _components(path)
        if c in _WEIGHTED and not any((path / c).glob("*.safetensors")) and not any((path / c).glob("*.bin"))
    ]


def check_diffusers_folder(path: Path, name: str = "") -> None:
    """Every component that ``model_index.json`` names has its folder and config; every weighted one has
    weights, and each ``.safetensors`` file is as long as its header says (a truncated download fails here,
    not halfway through loading)."""
    import json
    import struct

    label = name or str(path)
    problems = []
    for comp in _components(path):
        d = path / comp
        if not d.is_dir() or not any(d.glob("*.json")):
            problems.append(f"{comp}/ (config)")
    problems += [f"{c}/ (weights)" for c in _components_without_weights(path)]
    for f in path.glob("*/*.safetensors"):
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            try:
                header = json.loads(fh.read(n)) if 0 < n < 100_000_000 else None
            except ValueError:
                header = None
        end = max((v["data_offsets"][1] for k, v in (header or {}).items() if k != "__metadata__"), default=0)
        if header is None or f.stat().st_size < 8 + n + end:
            problems.append(f"{f.parent.name}/{f.name} (truncated or not safetensors)")
    if problems:
        raise IncompleteFolder(
            f"the diffusers folder of {label} is incomplete: "
            f"missing or broken {', '.join(problems)}; delete {path} and download it again"
        )


class RegistryResolver:
    """The default resolver: the registry says where a version's weights are, the store fetches them."""

    def __init__(self, registry, store: WeightStore):
        self.registry = registry
        self.store = store

    def __call__(self, ref: ModelRef) -> ResolvedWeights:
        source = self.registry.weight_source(ref.id)
        path = self.store.fetch(source)
        reference = None
        if source.type == "checkpoint" and ecosystem_of(source.family) in FLOW and path.is_file():
            from diffagent.render.flow_files import reference_slug

            slug = reference_slug(path)
            found = self.registry.version_by_slug(slug)
            if found is None:
                raise UserInputError(
                    f"{source.name!r} is a transformer file; rendering it needs the text "
                    f"encoders and VAE of the reference model {slug!r} (its diffusers folder), which "
                    "this registry lacks; use the default registry or import that model"
                )
            reference = self.store.fetch(self.registry.weight_source(found.id))
        return ResolvedWeights(
            path=path,
            sha256=(source.sha256 or None),
            family=source.family,
            type=source.type,
            name=source.name,
            reference=reference,
        )
