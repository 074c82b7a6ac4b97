"""Tiny random models and a toy tokenizer for the training tests (built in well under a second).

A plain module, not conftest.py: `from conftest import ...` can resolve to another folder's conftest."""

from __future__ import annotations

import re
import zlib

import pytest

from diffagent.agent.prompt import CHECKPOINT_LABELS, LORA_LABELS

pytest.importorskip("peft")
pytest.importorskip("transformers")

VOCAB = 256
BOS, EOS, PAD = 2, 1, 0
#: pieces that must be single tokens with fixed ids (the selector's label tokens and answer text)
RESERVED = [f" {c}" for c in CHECKPOINT_LABELS + LORA_LABELS] + [" none", "\n", "LoRAs", ":"]


class ToyTokenizer:
    """Words, numbers and punctuation, each with an optional leading space, as one token each.

    The selector's labels (" A", " none", "\\n") get reserved ids; everything else is hashed into
    the rest of the vocabulary (collisions are harmless here)."""

    _pieces = re.compile(r"\n| ?[A-Za-z]+| ?\d+| ?[^\sA-Za-z\d]| +")

    def __init__(self):
        self.table = {p: 3 + i for i, p in enumerate(RESERVED)}
        self.first_free = 3 + len(RESERVED)

    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        ids = [BOS] if bos else []
        for piece in self._pieces.findall(text):
            ids.append(
                self.table.get(piece) or self.first_free + zlib.crc32(piece.encode()) % (VOCAB - self.first_free)
            )
        return ids


def tiny_gemma(seed: int = 0, *, vocab: int = VOCAB, sliding_window: int = 16):
    """A 2-layer Gemma 3 (one sliding-window, one global layer), hidden size 32."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        max_position_embeddings=1024,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    model = Gemma3ForCausalLM(cfg)
    # the head is tied to the embedding; at the default init (std 0.02) no hidden state can reach a
    # logit above ~1, so no training could make a confident prediction
    torch.nn.init.normal_(model.model.embed_tokens.weight, std=0.3)
    model.config.use_cache = False
    return model


def toy_examples(n: int = 6):
    """Requests whose right checkpoint follows from one word: fox -> A, car -> B, cat -> C."""
    from diffagent.bench.pairs import Target
    from diffagent.training.data import Example

    words = [("fox", 0), ("car", 1), ("cat", 2)]
    out = []
    for i in range(n):
        word, answer = words[i % 3]
        prompt = (
            f'### Request\n"a {word} number {i}"\n### Checkpoints\nA: "foxes"\nB: "cars"\nC: "cats"\n'
            '### LoRAs\nM: "grain"\n### Answer\nCheckpoint:'
        )
        out.append(
            Example(
                image_id=i,
                request=f"a {word} number {i}",
                prompt=prompt,
                checkpoint_ids=[11, 12, 13],
                lora_ids=[21],
                target=Target(checkpoint_version_id=11 + answer, checkpoint_model_id=1),
                answer_checkpoint=answer,
                answer_loras=[0] if i % 2 else [],
            )
        )
    return out
