"""The card adapter: a request's sentence vector moved towards the model cards creators chose for requests
like it, so a model is found by what its card says even when no creator's image shows it.

The registry embeds each model's card (name, tags, trigger words, description; ``registry/index.py``) with
all-MiniLM-L6-v2. A stock query vector compares a request with those cards by topic; creators' choices say more
("a portrait with soft light" -> photorealistic portrait models). The adapter is a residual linear map on the
query side only, ``q' = normalize(q + q W)``, trained contrastively on creators' (prompt, card of the
checkpoint used) pairs (``diffagent train cards``), so registry vectors never need re-embedding and it applies
to any registry embedded with the same model, including ones without sample images.
Shipped as float16 ``.npz`` plus a JSON card that says what it was trained on and how it measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffagent.errors import UserInputError

DEFAULT = Path(__file__).with_name("cards") / "card_adapter.npz"


class CardAdapter:
    def __init__(self, w: np.ndarray, meta: dict | None = None):
        if w.ndim != 2 or w.shape[0] != w.shape[1]:
            raise UserInputError(f"a card adapter is a square matrix, got shape {w.shape}")
        self.w = w.astype(np.float32)
        self.meta = meta or {}

    @property
    def dim(self) -> int:
        return self.w.shape[0]

    @property
    def embedder(self) -> str | None:
        return self.meta.get("embedder")

    def digest(self) -> str:
        """SHA-256 of the weights (what a cache built with this adapter records)."""
        import hashlib

        return hashlib.sha256(self.w.astype(np.float16).tobytes()).hexdigest()

    def transform(self, q: np.ndarray) -> np.ndarray:
        """Adapted, unit-length query vector(s)."""
        out = q + q @ self.w
        norm = np.linalg.norm(out, axis=-1, keepdims=True)
        return (out / np.maximum(norm, 1e-12)).astype(np.float32)

    def save(self, path: Path) -> Path:
        from diffagent.atomic import write_atomic

        path = Path(path)
        write_atomic(path, lambda tmp: np.savez_compressed(tmp, w=self.w.astype(np.float16)))
        write_atomic(path.with_suffix(".json"),
                     lambda tmp: tmp.write_text(json.dumps(self.meta, indent=2), encoding="utf-8"))
        return path

    @classmethod
    def load(cls, path: Path) -> CardAdapter:
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"card adapter {path} does not exist; train one with `diffagent train cards` or set "
                                 "DIFFAGENT_CARD_ADAPTER=none")
        with np.load(path) as z:
            w = z["w"]
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        return cls(w, meta)


_loaded: dict[Path, CardAdapter] = {}


def load_setting(value: str | None) -> CardAdapter | None:
    """``default`` (the shipped adapter, when the package has one), ``none``, or a path."""
    if value is None or value.strip().lower() in ("", "none", "off"):
        return None
    if value.strip().lower() == "default":
        if not DEFAULT.is_file():
            return None
        path = DEFAULT
    else:
        path = Path(value).expanduser()
    if path not in _loaded:
        _loaded[path] = CardAdapter.load(path)
    return _loaded[path]
