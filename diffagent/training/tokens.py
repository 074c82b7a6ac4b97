"""Token ids of a training example, exactly as the selector sees them at inference.

The selector tokenizes the prompt with llama.cpp (``LlamaBackend.tokenize(text, bos=True)``) and
then forces one token per label, with ``BETWEEN`` tokenized on its own (``decode.Labels``). Training
uses the same pieces, tokenized the same way, so the model learns the very token sequence the
decoder scores; tokenizing ``prompt + answer`` as one string could merge tokens across the seam.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from diffagent.agent.decode import Labels
from diffagent.agent.prompt import BETWEEN, CHECKPOINT_LABELS, END, LORA_LABELS, NONE, prompt_labels
from diffagent.errors import MissingDependency, UserInputError


class Tokenizer(Protocol):
    def encode(self, text: str, *, bos: bool = False) -> list[int]: ...


class GGUFTokenizer:
    """The GGUF's own tokenizer through llama.cpp (vocab only: loads in about a second, no weights)."""

    def __init__(self, model_path: Path):
        try:
            import llama_cpp
        except ImportError as e:
            raise MissingDependency("llama-cpp-python", "base") from e
        if not Path(model_path).is_file():
            raise UserInputError(f"GGUF model {model_path} not found")
        self._llm = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, verbose=False)

    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        # the same call as LlamaBackend.tokenize
        return self._llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)


def single(tok: Tokenizer, text: str) -> int:
    ids = tok.encode(text)
    if len(ids) != 1:
        raise UserInputError(
            f"{text!r} is {len(ids)} tokens for this tokenizer; the selector needs labels that are single tokens"
        )
    return ids[0]


def labels_for(tok: Tokenizer, n_checkpoints: int, n_loras: int, max_loras: int) -> Labels:
    """The decoder's label tokens for a prompt with these candidate counts (``prompt_labels``, as the selector)."""
    return prompt_labels(
        lambda text: single(tok, text), tok.encode, n_checkpoints=n_checkpoints, n_loras=n_loras, max_loras=max_loras
    )


def answer_ids(tok: Tokenizer, checkpoint: int, loras: list[int] | tuple[int, ...]) -> list[int]:
    """Tokens of ``answer_text(CHECKPOINT_LABELS[checkpoint], [LORA_LABELS[j] ...])``, piece by piece."""
    ids = [single(tok, f" {CHECKPOINT_LABELS[checkpoint]}"), *tok.encode(BETWEEN)]
    if loras:
        ids += [single(tok, f" {LORA_LABELS[j]}") for j in loras] + [single(tok, END)]
    else:
        ids.append(single(tok, NONE))
    return ids
