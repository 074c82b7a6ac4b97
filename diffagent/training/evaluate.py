"""The model's own decision, measured apart from retrieval: greedy label choice on held-out examples.

``bench select`` scores the whole selector, where the LLM's log-probabilities are fused with the
retrieval score; here only the choice among the shown candidates counts: how often the model picks
the creator's checkpoint when it was shown (against always picking the first, retrieval's choice),
the LoRA overlap, and how many chosen LoRAs validation has to drop as incompatible (mismatched).
Scored with the agreement-with-creators reward.

``label_nll`` is the probe that tells whether a model matches requests to names at all: the negative
log-probability of the creator's label among the checkpoint labels at the first answer step. With
candidates shown in a random order (``run_eval(shuffle=1.0)``) a model that only learned positions
scores ``uniform_nll`` (ln of the candidate count) or worse.
"""

from __future__ import annotations

import math
import time

from pydantic import BaseModel

from diffagent.agent.decode import Decoder, LogitsFn
from diffagent.training.data import Example
from diffagent.training.reward import AGREEMENT_REWARD, agreement_reward
from diffagent.training.rrhf import Rebuilder
from diffagent.training.tokens import Tokenizer, labels_for


class EvalReport(BaseModel):
    model: str
    reward: str = AGREEMENT_REWARD
    examples: int  # held-out examples whose creator's checkpoint was among the candidates
    checkpoint_accuracy: float  # greedy pick == creator's checkpoint
    first_candidate_accuracy: float  # the same for always picking candidate A (retrieval's top)
    picked_first: float  # share of greedy picks that are candidate A
    lora_f1: float  # mean LoRA F1 against the creator's known LoRAs
    examples_with_mismatched_loras: int  # a chosen LoRA was dropped as incompatible
    invalid: int  # choices that did not rebuild into a call
    reward_mean: float
    label_nll: float  # mean -log p(creator's label | checkpoint labels) at the first answer step
    uniform_nll: float  # the same for a model that knows nothing: mean ln(number of candidates)
    seconds: float


def evaluate_choices(
    model_name: str,
    examples: list[Example],
    tok: Tokenizer,
    logits: LogitsFn,
    rebuild: Rebuilder,
    *,
    max_loras: int = 2,
    progress: bool = True,
) -> EvalReport:
    from tqdm import tqdm

    t0 = time.perf_counter()
    usable = [e for e in examples if e.usable]
    if not usable:
        raise ValueError("no held-out example has its checkpoint among the candidates")
    hits = first = picked_first = mismatched_examples = invalid = 0
    f1s, rewards, nlls = [], [], []
    for ex in tqdm(usable, desc=f"eval {model_name}", disable=not progress):
        labels = labels_for(tok, len(ex.checkpoint_ids), len(ex.lora_ids), max_loras)
        decoder = Decoder(logits, tok.encode(ex.prompt, bos=True), labels, n_loras=len(ex.lora_ids))
        # the first step's label distribution; greedy() reuses the same memoised forward pass
        nlls.append(-float(decoder.checkpoint_logprobs()[ex.answer_checkpoint]))
        d = decoder.greedy()
        call, model_id, mismatched = rebuild(ex, d.checkpoint, d.loras)
        r = agreement_reward(call, ex.target, ex.target_lora_ids, checkpoint_model_id=model_id, mismatched=mismatched)
        hits += d.checkpoint == ex.answer_checkpoint
        first += ex.answer_checkpoint == 0
        picked_first += d.checkpoint == 0
        mismatched_examples += mismatched > 0
        invalid += r.invalid
        f1s.append(r.lora_f1)
        rewards.append(r.total)
    n = len(usable)
    return EvalReport(
        model=model_name,
        examples=n,
        checkpoint_accuracy=round(hits / n, 4),
        first_candidate_accuracy=round(first / n, 4),
        picked_first=round(picked_first / n, 4),
        lora_f1=round(sum(f1s) / n, 4),
        examples_with_mismatched_loras=mismatched_examples,
        invalid=invalid,
        reward_mean=round(sum(rewards) / n, 4),
        label_nll=round(sum(nlls) / n, 4),
        uniform_nll=round(sum(math.log(len(e.checkpoint_ids)) for e in usable) / n, 4),
        seconds=round(time.perf_counter() - t0, 1),
    )
