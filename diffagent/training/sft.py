"""Stage 1, SFT: LoRA fine-tuning on (selector prompt -> creators' answer), loss on answer tokens only."""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import BaseModel

from diffagent.errors import UserInputError
from diffagent.training.config import TrainConfig
from diffagent.training.data import Example
from diffagent.training.loop import LoopSettings, LoopState, train_loop
from diffagent.training.losses import sft_loss
from diffagent.training.model import answer_logprobs, device_of, make_batch
from diffagent.training.tokens import Tokenizer, answer_ids

Seq = tuple[list[int], list[int]]  # (prompt ids with BOS, answer ids)


class SFTReport(BaseModel):
    examples: int
    skipped_too_long: int
    prompt_tokens_mean: float
    steps: int
    seconds: float
    first_loss: float | None
    last_loss: float | None
    adapter: str


def encode(tok: Tokenizer, examples: list[Example], max_len: int) -> tuple[list[Seq], int]:
    """Token sequences of the usable examples; those longer than ``max_len`` are counted and dropped
    (truncating would cut off the candidate list the answer refers to)."""
    out, too_long = [], 0
    for ex in examples:
        if not ex.usable:
            continue
        seq = (tok.encode(ex.prompt, bos=True), answer_ids(tok, ex.answer_checkpoint, ex.answer_loras))
        if len(seq[0]) + len(seq[1]) > max_len:
            too_long += 1
            continue
        out.append(seq)
    return out, too_long


def batches(seqs: list[Seq], batch_size: int, seed: int) -> list[list[Seq]]:
    """Fixed groups of ``batch_size`` (similar lengths together, so right padding wastes little)."""
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i][0]), i))
    groups = [[seqs[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]
    random.Random(seed).shuffle(groups)
    return groups


def train_sft(
    model, tok: Tokenizer, examples: list[Example], cfg: TrainConfig, out_dir: Path, *, progress: bool = True
) -> SFTReport:
    """Train the peft ``model`` in place; the adapter lands in ``out_dir/adapter``."""
    seqs, too_long = encode(tok, examples, cfg.sft.max_len)
    if not seqs:
        raise UserInputError(
            f"no usable training examples (of {len(examples)}; {too_long} longer than "
            f"max_len {cfg.sft.max_len}); build data with `diffagent train data`"
        )
    units = batches(seqs, cfg.sft.batch_size, cfg.seed)
    bf16 = cfg.sft.bf16

    def loss_fn(m, unit):
        b = make_batch(unit).to(device_of(m))
        lp = answer_logprobs(m, b, bf16=bf16)
        return sft_loss(lp, b.mask), {}

    s = cfg.sft
    loop = LoopSettings(
        epochs=s.epochs,
        max_steps=s.max_steps,
        grad_accum=s.grad_accum,
        lr=s.lr,
        warmup_steps=s.warmup_steps,
        weight_decay=s.weight_decay,
        checkpoint_every=s.checkpoint_every,
        seed=cfg.seed,
    )
    state: LoopState = train_loop(model, units, loss_fn, out_dir, loop, progress=progress, desc="sft")
    return SFTReport(
        examples=len(seqs),
        skipped_too_long=too_long,
        prompt_tokens_mean=round(sum(len(p) for p, _ in seqs) / len(seqs), 1),
        steps=state.step,
        seconds=round(state.seconds, 1),
        first_loss=state.losses[0] if state.losses else None,
        last_loss=state.losses[-1] if state.losses else None,
        adapter=str(Path(out_dir) / "adapter"),
    )
