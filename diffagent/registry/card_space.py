"""Checkpoint cards as a two-tower card encoder reads them (``agent/cards.py``, ``towers == "both"``).

A two-tower encoder's updates apply to the card side too, so the registry's stock card vectors no longer match its
requests: every checkpoint's card (``index.version_text``, the text the stock vector embeds) is encoded again with
the updated model. That takes 56 s for the 7,864 checkpoint versions of the Civitai dump on two cores (ONNX Runtime,
the ``embed`` extra; about 4 minutes on the base install's numpy encoder) and 1.6 s for the default registry's 63,
so the matrix is cached beside the registry
(``<db>.cards-<encoder>.npz``), keyed by the encoder's digest and every card text: an import that changes a card
rebuilds it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from diffagent.registry.index import version_texts

log = logging.getLogger(__name__)


def _key(encoder, embedder_name: str, texts: dict[int, str]) -> str:
    h = hashlib.sha256(f"{encoder.digest()}\0{embedder_name}".encode())
    for vid in sorted(texts):
        h.update(f"{vid}\0{texts[vid]}\0".encode())
    return h.hexdigest()[:32]


def load_or_build(engine: Engine, location, embedder, encoder) -> tuple[np.ndarray, np.ndarray]:
    """(version ids, unit card vectors as float32) of every checkpoint version, read by ``encoder``."""
    from diffagent.registry import sidecar
    from diffagent.registry.location import cache_base

    with engine.connect() as conn:
        texts = version_texts(conn, ("checkpoint",))
    key = _key(encoder, embedder.name, texts)
    ids = np.array(sorted(texts), dtype=np.int64)

    def build() -> tuple[np.ndarray, np.ndarray]:
        if not len(ids):
            return ids, np.zeros((0, 0), dtype=np.float32)
        log.info("encoding %d checkpoint cards with the two-tower card encoder (cached afterwards)", len(ids))
        vectors = encoder.encode_bulk(embedder, [texts[int(v)] for v in ids])
        return ids, vectors.astype(np.float16).astype(np.float32)  # as stored: a fresh build equals a cached one

    def load(path: Path, want: str):
        with np.load(path) as z:
            if str(z["key"]) != want:
                return None
            return z["ids"], z["vectors"].astype(np.float32)

    def save(value, path: Path) -> None:
        from diffagent.atomic import write_atomic

        got_ids, vectors = value
        write_atomic(
            path, lambda tmp: np.savez(tmp, key=np.array(key), ids=got_ids, vectors=vectors.astype(np.float16))
        )

    return sidecar.load_or_build(
        Path(f"{cache_base(location)}.cards-{encoder.digest()[:12]}.npz"),
        key,
        load=load,
        build=build,
        save=save,
        worth_saving=lambda value: bool(len(value[0])),
        what="two-tower card vectors",
    )
