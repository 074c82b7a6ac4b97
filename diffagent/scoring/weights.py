"""Resolve a scorer weight location (local path or ``hf:`` reference) to a local path."""

from __future__ import annotations

import threading
from pathlib import Path

from diffagent.errors import NotFoundError, UserInputError

HF_PREFIX = "hf:"
#: tokenizer files fetched for an ``hf:<owner>/<repo>`` folder reference
TOKENIZER_FILES = ["vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"]

# hub references resolved in this process: scorers resolve on every call, and with downloads
# allowed huggingface_hub would ask the hub for the latest revision each time
_resolved: dict[tuple[str, str | None], Path] = {}
_resolved_lock = threading.Lock()


def is_hub_ref(ref: str) -> bool:
    return ref.startswith(HF_PREFIX)


def parse_hub_ref(ref: str) -> tuple[str, str | None]:
    """``hf:owner/repo/dir/file.pt`` -> ("owner/repo", "dir/file.pt"); ``hf:owner/repo`` -> (.., None)."""
    parts = [p for p in ref[len(HF_PREFIX) :].split("/") if p]
    if len(parts) < 2:
        raise UserInputError(
            f"malformed hub reference {ref!r}; write hf:<owner>/<repo>/<file> (e.g. "
            "hf:THUDM/ImageReward/ImageReward.pt) or hf:<owner>/<repo> for a tokenizer folder"
        )
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


def resolve(ref: str, *, what: str, allow_downloads: bool, cache_dir: Path | None = None) -> Path:
    """A local path for ``ref``; hub references come from the hub cache or, if allowed, the hub."""
    if not ref:
        raise UserInputError(f"no location configured for the {what}")
    if not is_hub_ref(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            raise NotFoundError(
                f"{what} not found at {str(path)!r}; fix the path, or use a hub reference such as "
                "hf:<owner>/<repo>/<file>"
            )
        return path
    key = (ref, str(cache_dir) if cache_dir else None)
    with _resolved_lock:
        if key in _resolved and _resolved[key].exists():
            return _resolved[key]
    path = _from_hub(ref, allow_downloads=allow_downloads, cache_dir=cache_dir, what=what)
    with _resolved_lock:
        _resolved[key] = path
    return path


def _from_hub(ref: str, *, allow_downloads: bool, cache_dir: Path | None, what: str) -> Path:
    repo, filename = parse_hub_ref(ref)
    try:
        if filename is not None:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=not allow_downloads))
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo,
                allow_patterns=TOKENIZER_FILES,
                cache_dir=cache_dir,
                local_files_only=not allow_downloads,
            )
        )
    except Exception as e:  # huggingface_hub raises several unrelated classes for "not available"
        how = (
            "downloads are disabled (allow_downloads is off)"
            if not allow_downloads
            else "the hub could not provide it (offline, HF_HUB_OFFLINE=1, or no access)"
        )
        raise NotFoundError(
            f"{what} {ref!r} is not in the local Hugging Face cache and {how}: {type(e).__name__}: {e}. "
            f"Download it once with `hf download {repo}{' ' + filename if filename else ''}` "
            "on a machine with network, or configure a local path instead"
        ) from e
