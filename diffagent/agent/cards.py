"""The card encoder: the request's side of the ``card`` signal, a sentence encoder fine-tuned so that a request
lands near the model cards creators chose for requests like it. A model is then found by what its card says,
including models no creator's image shows.

The registry embeds each model's card (name, tags, trigger words, description; ``registry/index.py``) with
all-MiniLM-L6-v2. The stock encoder compares a request with those cards by topic; creators' choices say more
("a portrait with soft light" -> photorealistic portrait models). The card encoder is the same MiniLM with
low-rank (LoRA) updates to its linear layers, trained contrastively on creators' (prompt, card of the checkpoint
used) pairs with the card vectors frozen (``diffagent train cards``): the registry's vectors never need
re-embedding, and it applies to any registry embedded with the stock model, including ones without sample images.

Shipped as the LoRA factors (float16 ``.npz``, about 1.3 MB) plus a JSON card that says what it was trained on and
how it measured. At run time the factors are merged into a copy of the numpy encoder (``registry/bert.py``): one
more 6-layer forward pass per request (a few milliseconds), no torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

import numpy as np

from diffagent.errors import UserInputError

log = logging.getLogger(__name__)
DEFAULT = Path(__file__).with_name("cards") / "card_encoder.npz"


class CardEncoder:
    """LoRA factors for a BERT sentence encoder: ``W' = W + scale * B @ A`` for each named linear layer.

    ``factors`` maps a layer's weight name in ``NumpyBert`` (``encoder.layer.0.attention.self.query``) to
    ``(A, B)`` with ``A`` of shape (rank, in) and ``B`` of shape (out, rank)."""

    def __init__(self, factors: dict[str, tuple[np.ndarray, np.ndarray]], scale: float, meta: dict | None = None):
        if not factors:
            raise UserInputError("a card encoder needs at least one layer's factors")
        for name, (a, b) in factors.items():
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise UserInputError(
                    f"card encoder layer {name}: factors of shapes {a.shape} and {b.shape} do not form B @ A"
                )
        self.factors = {k: (a.astype(np.float32), b.astype(np.float32)) for k, (a, b) in factors.items()}
        self.scale = float(scale)
        self.meta = meta or {}
        self._bound: dict[tuple, object] = {}
        self._digest: str | None = None
        self._lock = threading.Lock()

    @property
    def embedder(self) -> str | None:
        """The sentence model whose card vectors this encoder was trained against (``Embedder.name``)."""
        return self.meta.get("embedder")

    def digest(self) -> str:
        """SHA-256 of the factors (what a cache built with this encoder records); computed once, as the factors never
        change (a two-tower encoder's card vectors are looked up by it on every request)."""
        if self._digest is None:
            h = hashlib.sha256(np.float32(self.scale).tobytes())
            for name in sorted(self.factors):
                a, b = self.factors[name]
                h.update(name.encode())
                h.update(a.astype(np.float16).tobytes())
                h.update(b.astype(np.float16).tobytes())
            self._digest = h.hexdigest()
        return self._digest

    def merge_into(self, weights: dict[str, np.ndarray]) -> None:
        """Add the updates to a ``NumpyBert`` weight dict (in place)."""
        for name, (a, b) in self.factors.items():
            key = f"{name}.weight"
            if key not in weights:
                raise UserInputError(
                    f"card encoder layer {name} is not in the sentence model; it was trained for "
                    f"{self.embedder or 'another model'}"
                )
            if weights[key].shape != (b.shape[0], a.shape[1]):
                raise UserInputError(
                    f"card encoder layer {name} has shape {(b.shape[0], a.shape[1])}, the sentence "
                    f"model's {weights[key].shape}"
                )
            weights[key] = weights[key] + self.scale * (b @ a)

    def _encoder(self, embedder):
        """A copy of ``embedder``'s numpy encoder with the updates merged: the weights it does not update (the
        token embeddings, layer norms) and the tokenizer are shared, not loaded again."""
        import copy

        key = (str(embedder.check()), embedder.max_seq_length)
        with self._lock:
            if key not in self._bound:
                base = embedder.numpy_encoder()
                if base is None:
                    raise UserInputError(
                        f"the card encoder needs a plain BERT sentence model; {embedder.name} is "
                        "not one; set DIFFAGENT_CARD_ADAPTER=none"
                    )
                bert = copy.copy(base)
                bert.w = dict(base.w)  # merge_into replaces the updated matrices; the base's stay untouched
                self.merge_into(bert.w)
                self._bound[key] = bert
            return self._bound[key]

    def encode_query(self, embedder, text: str) -> np.ndarray:
        """The request's card-space vector (unit length), computed with ``embedder``'s model plus the updates."""
        from diffagent.blas import one_blas_thread

        bert = self._encoder(embedder)
        with one_blas_thread():  # spinning BLAS threads would slow the LLM step that follows
            return bert.encode([text])[0]

    def encode(self, embedder, texts: list[str]) -> np.ndarray:
        """Card-space vectors of many texts (batched; evaluation)."""
        return self._encoder(embedder).encode(texts)

    @property
    def towers(self) -> str:
        """``query``: the updates apply to requests only and cards keep the registry's stock vectors; ``both``:
        cards are read by the same updated encoder (``Registry.card_vectors`` encodes and caches them)."""
        return self.meta.get("towers", "query")

    def encode_bulk(self, embedder, texts: list[str]) -> np.ndarray:
        """Many texts at once (a registry's cards): ONNX Runtime over the updated weights where the ``embed``
        extra is installed (about 4x the numpy encoder on two cores), else the numpy encoder."""
        from diffagent.registry.onnx_bert import load_engine

        bert = self._encoder(embedder)
        key = ("onnx", str(embedder.check()), embedder.max_seq_length)
        with self._lock:
            fast = self._bound.get(key)
        if fast is None:
            fast = (
                load_engine(bert, what="the card encoder", fallback="card vectors are encoded by numpy", logger=log)
                or False
            )
            with self._lock:
                self._bound[key] = fast
        return fast.encode(list(texts)) if fast else bert.encode(list(texts))

    def save(self, path: Path) -> Path:
        from diffagent.atomic import write_atomic

        path = Path(path)
        layers = sorted(self.factors)
        arrays = {}
        for i, name in enumerate(layers):
            a, b = self.factors[name]
            arrays[f"a{i}"], arrays[f"b{i}"] = a.astype(np.float16), b.astype(np.float16)
        write_atomic(path, lambda tmp: np.savez_compressed(tmp, **arrays))
        meta = {**self.meta, "layers": layers, "scale": self.scale}
        write_atomic(
            path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        )
        return path

    @classmethod
    def load(cls, path: Path) -> CardEncoder:
        path = Path(path)
        if not path.is_file():
            raise UserInputError(
                f"card encoder {path} does not exist; train one with `diffagent train cards` or set "
                "DIFFAGENT_CARD_ADAPTER=none"
            )
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise UserInputError(
                f"card encoder {path} has no {meta_path.name} beside it (the layer names and scale); copy both files"
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        try:
            with np.load(path) as z:
                factors = {name: (z[f"a{i}"], z[f"b{i}"]) for i, name in enumerate(meta["layers"])}
            scale = float(meta["scale"])
        except (KeyError, ValueError, OSError) as e:
            raise UserInputError(
                f"card encoder {path} is not one `diffagent train cards` wrote ({e}); train it again"
            ) from e
        return cls(factors, scale, meta)


_loaded: dict[Path, CardEncoder] = {}
_load_lock = threading.Lock()


def load_setting(value: str | None) -> CardEncoder | None:
    """``default`` (the shipped encoder, when the package has one), ``none``, or a path."""
    if value is None or value.strip().lower() in ("", "none", "off"):
        return None
    if value.strip().lower() == "default":
        if not DEFAULT.is_file():
            return None
        path = DEFAULT
    else:
        path = Path(value).expanduser()
    with _load_lock:
        if path not in _loaded:
            _loaded[path] = CardEncoder.load(path)
        return _loaded[path]
