"""Indexes derived from a registry and cached in a file beside it (``<db>.knn.npz``, ``<db>.bm25.npz``, ...).

Each is keyed by a summary of the tables it is built from: a cache whose key differs is stale and rebuilt, a
damaged one is rebuilt with a warning, and a registry folder that cannot be written to just means no cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def load_or_build(
    cache: Path,
    key: str,
    *,
    load: Callable[[Path, str], T | None],
    build: Callable[[], T],
    save: Callable[[T, Path], None],
    worth_saving: Callable[[T], bool],
    what: str,
) -> T:
    """``load(cache, key)`` (None when the key differs), else ``build()``, saved when ``worth_saving``."""
    if cache.exists():
        try:
            index = load(cache, key)
            if index is not None:
                return index
        except Exception as e:  # noqa: BLE001 - a stale or damaged cache is rebuilt
            log.warning("ignoring %s cache %s: %s", what, cache, e)
    index = build()
    if worth_saving(index):
        try:
            save(index, cache)
        except OSError as e:  # a read-only registry folder just means no cache
            log.info("could not cache the %s beside the registry (%s): %s", what, cache, e)
    return index
