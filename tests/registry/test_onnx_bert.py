"""Bulk embedding on ONNX Runtime: the same vectors as sentence-transformers and the numpy encoder, and the
fallbacks where onnxruntime is missing or the folder is not a plain BERT."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from test_bert import TEXTS  # noqa: E402  (the same mixed texts: padding, truncation, unicode, empty)

from diffagent.registry import embeddings  # noqa: E402
from diffagent.registry.bert import NumpyBert  # noqa: E402
from diffagent.registry.embeddings import Embedder, default_model_dir  # noqa: E402
from diffagent.registry.onnx_bert import OnnxBert  # noqa: E402


def test_onnx_vectors_equal_sentence_transformers_and_numpy():
    from sentence_transformers import SentenceTransformer

    folder = default_model_dir()
    bert = NumpyBert(folder, max_seq_length=128)
    ours = OnnxBert(bert).encode(TEXTS, batch_size=4)  # mixed lengths in a batch: padding is masked out
    st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    st.max_seq_length = 128
    reference = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True, batch_size=4)
    np.testing.assert_allclose(ours, reference, atol=2e-6)
    np.testing.assert_allclose(ours, bert.encode(TEXTS, batch_size=4), atol=2e-6)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    assert OnnxBert(bert).encode([]).shape == (0, 384)


def _tiny_bert(folder, *, normalize: bool, hidden=12, heads=3, layers=2, intermediate=20, seed=0):
    """A random BERT sentence-transformers folder of another shape (the bundled tokenizer, so its vocabulary)."""
    from safetensors.numpy import save_file

    src = default_model_dir()
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": rand(vocab, hidden),
        "embeddings.position_embeddings.weight": rand(64, hidden),
        "embeddings.token_type_embeddings.weight": rand(2, hidden),
        "embeddings.LayerNorm.weight": 1 + rand(hidden),
        "embeddings.LayerNorm.bias": rand(hidden),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, (out, inp) in {
            "attention.self.query": (hidden, hidden),
            "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden),
            "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (intermediate, hidden),
            "output.dense": (hidden, intermediate),
        }.items():
            w[p + name + ".weight"], w[p + name + ".bias"] = rand(out, inp), rand(out)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + ln + ".weight"], w[p + ln + ".bias"] = 1 + rand(hidden), rand(hidden)
    folder.mkdir()
    save_file(w, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "bert",
                "hidden_act": "gelu",
                "hidden_size": hidden,
                "num_attention_heads": heads,
                "num_hidden_layers": layers,
                "intermediate_size": intermediate,
                "max_position_embeddings": 64,
                "layer_norm_eps": 1e-12,
                "vocab_size": vocab,
            }
        )
    )
    (folder / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    modules = [{"type": "sentence_transformers.models.Transformer"}, {"type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return folder


@pytest.mark.parametrize("normalize", [True, False])
def test_the_graph_follows_the_folders_shape(tmp_path, normalize):
    """Width, heads, depth, position table and the Normalize module come from the folder, not from MiniLM."""
    bert = NumpyBert(_tiny_bert(tmp_path / "tiny", normalize=normalize), max_seq_length=128)
    assert bert.max_seq_length == 64 and bert.dim == 12
    ours = OnnxBert(bert).encode(TEXTS, batch_size=3)
    np.testing.assert_allclose(ours, bert.encode(TEXTS, batch_size=3), atol=1e-5)
    norms = np.linalg.norm(ours, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-6) if normalize else not np.allclose(norms, 1.0, atol=1e-3)


def test_bulk_encoding_takes_onnx_runtime_and_queries_stay_on_numpy():
    emb = Embedder()
    bulk = emb.encode(TEXTS)
    assert isinstance(emb._onnx, OnnxBert) and emb._model is None  # sentence-transformers never loaded
    query = emb.encode_query(TEXTS[0])
    np.testing.assert_allclose(query, bulk[0], atol=2e-6)


def test_a_progress_bar_does_not_change_a_vector(monkeypatch):
    emb = Embedder()
    texts = [t + f" {i}" for i in range(3) for t in TEXTS]
    whole = emb.encode(texts)
    monkeypatch.setattr(embeddings, "PROGRESS_CHUNK", 5)
    np.testing.assert_allclose(emb.encode(texts, show_progress=True), whole, atol=1e-6)


def test_without_onnxruntime_bulk_encoding_falls_back(monkeypatch):
    """No onnxruntime: sentence-transformers where installed (the same vectors)."""
    reference = Embedder().encode(TEXTS)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    emb = Embedder()
    np.testing.assert_allclose(emb.encode(TEXTS), reference, atol=2e-6)
    assert emb._onnx is False and emb._model not in (None, False)


def test_a_folder_the_graph_does_not_cover_is_left_to_sentence_transformers(tmp_path):
    """CLS pooling: neither numpy nor ONNX guesses; sentence-transformers encodes it."""
    src = default_model_dir()
    folder = tmp_path / "cls"
    (folder / "1_Pooling").mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (folder / f.name).symlink_to(f)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "word_embedding_dimension": 384})
    )
    emb = Embedder(folder)
    vecs = emb.encode(TEXTS[:2])
    assert emb.onnx_encoder() is None and emb._model not in (None, False) and vecs.shape == (2, 384)


def test_an_unusable_onnxruntime_falls_back_with_a_warning(monkeypatch, caplog):
    """onnxruntime installed but unable to load the graph (an old or broken build): the import goes on, slower."""
    from diffagent.registry import onnx_bert

    def broken(*args, **kwargs):
        raise RuntimeError("INVALID_GRAPH: opset 17 not supported")

    monkeypatch.setattr(onnx_bert, "OnnxBert", broken)
    reference = NumpyBert(default_model_dir(), 128).encode(TEXTS)
    emb = Embedder()
    with caplog.at_level("WARNING", logger="diffagent.registry.embeddings"):
        vecs = emb.encode(TEXTS)
    np.testing.assert_allclose(vecs, reference, atol=2e-6)
    assert emb.onnx_encoder() is None
    assert "INVALID_GRAPH" in caplog.text and "falls back" in caplog.text
