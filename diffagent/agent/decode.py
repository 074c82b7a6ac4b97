"""Constrained decoding of the LLM's decision: a checkpoint label, then zero or more LoRA labels.

The answer the model writes is ``Checkpoint: C`` then ``LoRAs: M P`` (or ``none``), one token
per label. At every step the next-token distribution is masked to the labels allowed there — the
same thing a llama.cpp grammar does, minus its per-token cost over a 262k vocabulary — so an id
that is not among the candidates cannot be produced. Three strategies share that masking:

* ``greedy``: argmax each step.
* ``sample``: ``n`` ancestral samples at a temperature, from a seeded generator (reproducible).
* ``diverse_beam_search``: Vijayakumar et al. (2018); beams split into groups, and each group's
  step scores are penalised by how often earlier groups chose the same token at that step
  (Hamming diversity). llama-cpp-python has no beam search, so this runs over its logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class LogitsFn(Protocol):
    def __call__(self, tokens: list[int]) -> np.ndarray: ...


@dataclass(frozen=True)
class Labels:
    """Token ids of the labels (one token each) and of the fixed text between the two choices."""

    checkpoints: tuple[int, ...]  # token of checkpoint label i
    loras: tuple[int, ...]  # token of LoRA label j
    none: int  # "none" (no LoRA)
    end: int  # end of the LoRA list
    between: tuple[int, ...]  # tokens forced after the checkpoint label (e.g. "\nLoRAs:")
    max_loras: int = 2


@dataclass
class Decoded:
    checkpoint: int  # index into the candidate checkpoints
    loras: tuple[int, ...] = ()  # indices into the candidate LoRAs, in generation order
    logprob: float = 0.0  # sum of masked log-probabilities of the chosen tokens
    tokens: list[int] = field(default_factory=list)
    done: bool = False

    @property
    def key(self) -> tuple[int, frozenset[int]]:
        return self.checkpoint, frozenset(self.loras)


def _masked_logprobs(logits: np.ndarray, allowed: list[int], temperature: float = 1.0) -> np.ndarray:
    x = logits[np.asarray(allowed)] / max(temperature, 1e-6)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


class Decoder:
    """Runs the strategies above for one prompt. ``logits(tokens)`` returns next-token logits."""

    def __init__(self, logits: LogitsFn, prompt: list[int], labels: Labels, n_loras: int):
        self._logits = logits
        self.prompt = list(prompt)
        self.labels = labels
        self.n_loras = min(n_loras, len(labels.loras))
        self._memo: dict[tuple[int, ...], np.ndarray] = {}

    def logits(self, seq: list[int]) -> np.ndarray:
        key = tuple(seq)
        if key not in self._memo:
            self._memo[key] = self._logits(self.prompt + seq)
        return self._memo[key]

    # ------------------------------------------------------------------ the state machine
    def allowed(self, d: Decoded | None) -> list[tuple[int, str, int]]:
        """(token, kind, index) choices after partial decode ``d`` (None = nothing chosen yet)."""
        lab = self.labels
        if d is None:
            return [(t, "ckpt", i) for i, t in enumerate(lab.checkpoints)]
        if d.done:
            return []
        if not d.loras:
            opts = [(lab.none, "none", -1)]
        else:
            opts = [(lab.end, "end", -1)]
        if len(d.loras) < min(lab.max_loras, self.n_loras):
            opts += [(t, "lora", j) for j, t in enumerate(lab.loras[: self.n_loras]) if j not in d.loras]
        return opts

    def _extend(self, d: Decoded | None, choice: tuple[int, str, int], lp: float) -> Decoded:
        tok, kind, idx = choice
        if d is None:
            return Decoded(
                checkpoint=idx,
                logprob=lp,
                tokens=[tok, *self.labels.between],
                done=self.n_loras == 0 or self.labels.max_loras == 0,
            )
        loras = d.loras + ((idx,) if kind == "lora" else ())
        done = kind in ("none", "end") or len(loras) >= min(self.labels.max_loras, self.n_loras)
        return Decoded(checkpoint=d.checkpoint, loras=loras, logprob=d.logprob + lp, tokens=[*d.tokens, tok], done=done)

    def _step_logprobs(self, d: Decoded | None, temperature: float = 1.0):
        opts = self.allowed(d)
        seq = [] if d is None else d.tokens
        lps = _masked_logprobs(self.logits(seq), [o[0] for o in opts], temperature)
        return opts, lps

    # ------------------------------------------------------------------ strategies
    def checkpoint_logprobs(self) -> np.ndarray:
        """Exact log-probabilities of every checkpoint label (one forward pass)."""
        return self._step_logprobs(None)[1]

    def greedy(self) -> Decoded:
        d = None
        while d is None or not d.done:
            opts, lps = self._step_logprobs(d)
            k = int(np.argmax(lps))
            d = self._extend(d, opts[k], float(lps[k]))
        return d

    def sample(self, n: int, temperature: float = 1.0, seed: int = 0) -> list[Decoded]:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            d = None
            while d is None or not d.done:
                opts, lps_t = self._step_logprobs(d, temperature)
                k = int(rng.choice(len(opts), p=np.exp(lps_t)))
                # report the untempered log-probability, so samples rank on the model's own scale
                _, lps = self._step_logprobs(d)
                d = self._extend(d, opts[k], float(lps[k]))
            out.append(d)
        return out

    def diverse_beam_search(
        self, groups: int = 3, beams_per_group: int = 1, diversity_penalty: float = 1.0
    ) -> list[Decoded]:
        beams: list[list[Decoded | None]] = [[None] for _ in range(groups)]
        finished: list[list[Decoded]] = [[] for _ in range(groups)]
        for _step in range(2 + self.labels.max_loras):
            chosen_this_step: dict[int, int] = {}
            for g in range(groups):
                pool = []
                for d in beams[g]:
                    opts, lps = self._step_logprobs(d)
                    for o, lp in zip(opts, lps, strict=True):
                        penalty = diversity_penalty * chosen_this_step.get(o[0], 0)
                        pool.append((float(lp) - penalty, d, o, float(lp)))
                pool.sort(key=lambda x: -(x[0] + (x[1].logprob if x[1] else 0.0)))
                nxt = []
                for _, d, o, lp in pool[:beams_per_group]:
                    e = self._extend(d, o, lp)
                    chosen_this_step[o[0]] = chosen_this_step.get(o[0], 0) + 1
                    (finished[g] if e.done else nxt).append(e)
                beams[g] = nxt
            if not any(beams):
                break
        out = [d for group in finished for d in group]
        return sorted(out, key=lambda d: -d.logprob)


def dedupe(decoded: list[Decoded]) -> list[Decoded]:
    """Keep the best-scoring decode of each distinct (checkpoint, LoRA set)."""
    best: dict[tuple, Decoded] = {}
    for d in decoded:
        if d.key not in best or d.logprob > best[d.key].logprob:
            best[d.key] = d
    return sorted(best.values(), key=lambda d: -d.logprob)
