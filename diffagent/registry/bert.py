"""A BERT sentence encoder in numpy, for sentence-transformers folders of the plain kind.

The registry's semantic signal embeds one short query per request. Loading that model through
sentence-transformers imports transformers and torch first, about 5 s of a cold ``diffagent select``
on 2 cores, for a 6-layer model whose forward pass takes milliseconds. This module runs the same
computation (token, position and type embeddings; post-norm encoder layers with erf GELU; masked mean
pooling; L2 normalisation) from the folder's ``model.safetensors`` and ``tokenizer.json``, importing
numpy, scipy.special, safetensors and tokenizers only. Its vectors equal sentence-transformers' to
float32 rounding (tests compare them on the bundled all-MiniLM-L6-v2).

Folders it does not cover (another architecture, CLS or max pooling, a dense head) raise
``Unsupported``, and the caller loads them with sentence-transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: sentence-transformers modules this encoder reproduces, in order
_MODULES = [
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
]


class Unsupported(Exception):
    """The folder needs sentence-transformers (the reason is the message)."""


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


class NumpyBert:
    """``encode(texts)`` -> unit-length float32 rows, as ``SentenceTransformer(folder).encode`` gives."""

    def __init__(self, folder: Path, max_seq_length: int):
        folder = Path(folder)
        cfg = json.loads((folder / "config.json").read_text())
        modules = (
            [m.get("type") for m in json.loads((folder / "modules.json").read_text())]
            if (folder / "modules.json").is_file()
            else None
        )
        if modules not in (_MODULES, _MODULES[:2]):
            raise Unsupported(f"modules {modules}")
        self.normalize = modules == _MODULES
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
        modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
        if modes != ["pooling_mode_mean_tokens"]:
            raise Unsupported(f"pooling {modes}")
        if (
            cfg.get("model_type") != "bert"
            or cfg.get("hidden_act") != "gelu"
            or cfg.get("position_embedding_type", "absolute") != "absolute"
        ):
            raise Unsupported(f"model type {cfg.get('model_type')}, activation {cfg.get('hidden_act')}")
        if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
            raise Unsupported("no model.safetensors or tokenizer.json")

        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        w = load_file(str(folder / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in w.items() if v.dtype != np.int64}
        self.layers = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.dim = cfg["hidden_size"]
        self.max_seq_length = min(max_seq_length, cfg.get("max_position_embeddings", 512))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.tokenizer.no_padding()
        missing = [
            k
            for k in ("embeddings.word_embeddings.weight", f"encoder.layer.{self.layers - 1}.output.dense.bias")
            if k not in self.w
        ]
        if missing:
            raise Unsupported(f"weights lack {missing}")

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Token vectors of the last layer, shape (batch, length, dim)."""
        from scipy.special import erf

        w, n, L = self.w, self.heads, ids.shape[1]
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:L]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        bias = np.where(mask[:, None, None, :], 0.0, np.finfo(np.float32).min).astype(np.float32)
        d = self.dim // n

        def heads(t):  # (B, L, dim) -> (B, n, L, d)
            return t.reshape(t.shape[0], L, n, d).transpose(0, 2, 1, 3)

        def dense(t, name):  # one (B*L, in) x (in, out) product: numpy's stacked matmul is slower
            return (t.reshape(-1, t.shape[-1]) @ w[f"{name}.weight"].T + w[f"{name}.bias"]).reshape(*t.shape[:-1], -1)

        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q, k, v = (heads(dense(x, f"{p}attention.self.{name}")) for name in ("query", "key", "value"))
            # einsum (BLAS-backed with optimize=True) is ~4x faster here than @ on 4-d stacks
            scores = np.einsum("bhld,bhmd->bhlm", q, k, optimize=True) / np.float32(np.sqrt(d)) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = np.einsum("bhlm,bhmd->blhd", scores, v, optimize=True).reshape(x.shape)
            out = dense(ctx, f"{p}attention.output.dense")
            x = _layer_norm(
                x + out, w[f"{p}attention.output.LayerNorm.weight"], w[f"{p}attention.output.LayerNorm.bias"], self.eps
            )
            h = dense(x, f"{p}intermediate.dense")
            h = 0.5 * h * (1.0 + erf(h / np.float32(np.sqrt(2.0))))
            out = dense(h, f"{p}output.dense")
            x = _layer_norm(x + out, w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"], self.eps)
        return x

    def batches(self, texts: list[str], batch_size: int):
        """``(rows, ids, mask)`` per batch: token ids padded to the batch's longest text (int64), its mask
        (bool), and which of ``texts`` the rows are. Texts are taken longest first, so that a batch's texts have
        similar lengths and pad little (sentence-transformers sorts the same way)."""
        encodings = [self.tokenizer.encode(t).ids for t in texts]  # encode_batch would start a thread pool
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            L = max(len(encodings[i]) for i in rows)
            ids = np.zeros((len(rows), L), dtype=np.int64)
            mask = np.zeros((len(rows), L), dtype=bool)
            for row, i in enumerate(rows):
                ids[row, : len(encodings[i])] = encodings[i]
                mask[row, : len(encodings[i])] = True
            yield rows, ids, mask

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for rows, ids, mask in self.batches(texts, batch_size):
            x = self._forward(ids, mask)
            m = mask[..., None].astype(np.float32)
            pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            if self.normalize:
                pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out[rows] = pooled
        return out
