"""The numpy BERT encoder's computation as an ONNX graph, run by ONNX Runtime: bulk embedding at import time.

``NumpyBert`` embeds a request's one query with no heavy import; a registry import embeds tens of thousands of
model texts and creators' prompts, where its numpy forward pass (59 texts/s on two cores) and even
sentence-transformers on torch (86) make the embedding most of the import. This module writes the same
computation (embeddings, post-norm encoder layers with erf GELU, masked mean pooling, L2 normalisation) as a
graph of standard ONNX operators (opset 17) from the weights ``NumpyBert`` loaded, in memory, and runs it
with ONNX Runtime (all graph optimisations on): 2.5x sentence-transformers' rate on the same texts
(``benchmarks/embed_bench.py``), with the same vectors (largest difference 2e-7; tests compare them). Needs
``onnx`` (to write the graph) and ``onnxruntime`` (the ``embed`` extra); no torch.
"""

from __future__ import annotations

import logging

import numpy as np

from diffagent.registry.bert import NumpyBert

OPSET = 17  # LayerNormalization is a standard operator from 17 on


class _Graph:
    """A small helper around onnx.helper: named nodes and initializers, built in order."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits = [], []
        self._n = 0

    def const(self, name: str, value) -> str:
        self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out


def build_model(bert: NumpyBert) -> bytes:
    """The serialized ONNX model: inputs ``ids`` (int64, batch x length) and ``mask`` (bool, same shape), output
    ``vectors`` (float32, batch x dim), unit length where the folder normalises."""
    from onnx import TensorProto

    g = _Graph()
    w, n, dim = bert.w, bert.heads, bert.dim
    d = dim // n

    def weight(name: str) -> str:
        return g.const(name, w[name])

    def dense(x: str, name: str) -> str:
        # (B, L, in) @ (in, out): the weight stored transposed once here, not per call
        kernel = g.const(f"{name}.kernel", np.ascontiguousarray(w[f"{name}.weight"].T))
        return g.op("Add", g.op("MatMul", x, kernel), weight(f"{name}.bias"))

    def layer_norm(x: str, name: str) -> str:
        return g.op(
            "LayerNormalization", x, weight(f"{name}.weight"), weight(f"{name}.bias"), axis=-1, epsilon=bert.eps
        )

    ids, mask = "ids", "mask"
    # embeddings: word + position (0..L-1) + token type 0, then layer norm
    length = g.op("Gather", g.op("Shape", ids), g.const("one_index", np.array(1, np.int64)))
    positions = g.op("Range", g.const("zero", np.array(0, np.int64)), length, g.const("step", np.array(1, np.int64)))
    x = g.op(
        "Add",
        g.op("Gather", weight("embeddings.word_embeddings.weight"), ids),
        g.op("Gather", weight("embeddings.position_embeddings.weight"), positions),
    )
    x = g.op("Add", x, g.const("type0", w["embeddings.token_type_embeddings.weight"][0]))
    x = layer_norm(x, "embeddings.LayerNorm")

    # additive attention bias, (B, 1, 1, L): 0 on tokens, float32 min on padding (as NumpyBert)
    keep = g.op("Cast", mask, to=TensorProto.FLOAT)
    bias = g.op(
        "Mul",
        g.op("Sub", g.const("f_one", np.array(1.0, np.float32)), keep),
        g.const("f_min", np.array(np.finfo(np.float32).min, np.float32)),
    )
    bias = g.op("Unsqueeze", bias, g.const("axes_1_2", np.array([1, 2], np.int64)))

    split_heads = g.const("split_heads", np.array([0, 0, n, d], np.int64))  # 0: keep that dimension
    merge_heads = g.const("merge_heads", np.array([0, 0, dim], np.int64))
    scale = g.const("scale", np.array(1.0 / np.sqrt(d), np.float32))
    sqrt2 = g.const("sqrt2", np.array(np.sqrt(2.0), np.float32))
    half = g.const("half", np.array(0.5, np.float32))
    one = "f_one"

    for i in range(bert.layers):
        p = f"encoder.layer.{i}."

        def heads(t: str, perm: list[int]) -> str:
            return g.op("Transpose", g.op("Reshape", t, split_heads), perm=perm)

        q = heads(dense(x, f"{p}attention.self.query"), [0, 2, 1, 3])  # (B, n, L, d)
        k = heads(dense(x, f"{p}attention.self.key"), [0, 2, 3, 1])  # (B, n, d, L)
        v = heads(dense(x, f"{p}attention.self.value"), [0, 2, 1, 3])  # (B, n, L, d)
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), bias)
        ctx = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]), merge_heads)
        x = layer_norm(g.op("Add", x, dense(ctx, f"{p}attention.output.dense")), f"{p}attention.output.LayerNorm")
        h = dense(x, f"{p}intermediate.dense")
        h = g.op("Mul", g.op("Mul", h, g.op("Add", g.op("Erf", g.op("Div", h, sqrt2)), one)), half)  # erf GELU
        x = layer_norm(g.op("Add", x, dense(h, f"{p}output.dense")), f"{p}output.LayerNorm")

    # masked mean pooling, then L2 normalisation
    m = g.op("Unsqueeze", keep, g.const("axis_last", np.array([-1], np.int64)))
    axis1 = g.const("axis_1", np.array([1], np.int64))
    total = g.op("ReduceSum", g.op("Mul", x, m), axis1, keepdims=0)
    count = g.op("Max", g.op("ReduceSum", m, axis1, keepdims=0), g.const("tiny", np.array(1e-9, np.float32)))
    pooled = g.op("Div", total, count)
    if bert.normalize:
        norm = g.op("ReduceL2", pooled, axes=[-1], keepdims=1)  # axes an attribute until opset 18
        pooled = g.op("Div", pooled, g.op("Max", norm, g.const("tinier", np.array(1e-12, np.float32))))
    g.nodes.append(g.helper.make_node("Identity", [pooled], ["vectors"]))

    graph = g.helper.make_graph(
        g.nodes,
        "bert_sentence_encoder",
        [
            g.helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "length"]),
            g.helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "length"]),
        ],
        [g.helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["batch", dim])],
        initializer=g.inits,
    )
    model = g.helper.make_model(graph, opset_imports=[g.helper.make_opsetid("", OPSET)], producer_name="diffagent")
    model.ir_version = 8  # what ONNX Runtime 1.14 and later read
    return model.SerializeToString()


class OnnxBert:
    """``encode(texts)`` -> the rows ``NumpyBert.encode`` gives, computed by ONNX Runtime."""

    def __init__(self, bert: NumpyBert, threads: int = 0):
        import onnxruntime as ort

        self.bert = bert
        self.dim = bert.dim
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads  # 0: one per physical core
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: a CLI prints its answer, not the optimiser's notes
        self.session = ort.InferenceSession(build_model(bert), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str], batch_size: int = 16) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for rows, ids, mask in self.bert.batches(texts, batch_size):
            out[rows] = self.session.run(["vectors"], {"ids": ids, "mask": mask})[0]
        return out


def load_engine(bert: NumpyBert, *, what: str, fallback: str, logger: logging.Logger) -> OnnxBert | None:
    """An ONNX Runtime engine over ``bert``'s weights, or None: where ``onnx`` / ``onnxruntime`` are not installed
    (quietly), or where an installed onnxruntime cannot load the graph (an old or broken build; a warning naming the
    error, and the caller goes on with ``fallback``, the same vectors, slower)."""
    try:
        import onnx  # noqa: F401  (writes the graph)
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    try:
        return OnnxBert(bert)
    except Exception as e:  # noqa: BLE001 - an unusable onnxruntime must not stop the work
        logger.warning(
            "ONNX Runtime could not load %s (%s: %s); %s (the same vectors, slower). Reinstall the 'embed' extra to "
            "get the fast path back",
            what,
            type(e).__name__,
            e,
            fallback,
        )
        return None
