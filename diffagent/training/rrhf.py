"""Stage 2, RRHF: rank candidate answers of the SFT model by reward, and train on the ranking.

For each prompt, candidates come from the SFT model through the selector's own decoder
(``diffagent.agent.decode``: multinomial sampling and diverse beam search over the label tokens),
plus the creators' answer; each is validated and rebuilt into a full ``ApiCall`` as at inference
(``build_call``: incompatible LoRAs dropped, parameters from usage statistics) and scored by a
reward (``diffagent.training.reward``). Candidates are cached (resumable), then the loss of
``losses.rrhf_loss`` trains the SFT adapter further.

All m candidates of a prompt share the ~650-token prompt, so it is run once with a KV cache and
only the few answer tokens are run per candidate (``shared_prompt_logprobs``): a step costs about
one SFT step instead of m.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from diffagent.agent.decode import Decoded, Decoder, LogitsFn, dedupe
from diffagent.agent.rebuild import build_call, lora_weight
from diffagent.apicall import ApiCall
from diffagent.errors import UserInputError
from diffagent.families import compatible
from diffagent.registry.store import Registry
from diffagent.training.config import RRHFConfig, TrainConfig
from diffagent.training.data import Example
from diffagent.training.io import AppendLog
from diffagent.training.loop import LoopSettings, train_loop
from diffagent.training.losses import rrhf_loss
from diffagent.training.reward import AGREEMENT_REWARD, IMAGE_REWARD, RewardParts, agreement_reward
from diffagent.training.tokens import Tokenizer, answer_ids, labels_for

Source = Literal["reference", "beam", "sample"]


class Candidate(BaseModel):
    checkpoint: int  # index into the example's checkpoint candidates
    loras: list[int] = Field(default_factory=list)  # indices into its LoRA candidates, in decode order
    source: Source
    logprob: float | None = None  # the decoder's masked log-probability under the SFT model
    reward: RewardParts


class PromptCandidates(BaseModel):
    image_id: int
    reward: str  # which reward scored them (named in every report)
    candidates: list[Candidate]

    @property
    def informative(self) -> bool:
        """Only prompts whose candidates differ in reward carry a ranking signal."""
        return len({c.reward.total for c in self.candidates}) > 1


# ---------------------------------------------------------------------------------- candidates
def propose(
    decoder: Decoder, cfg: RRHFConfig, seed: int, reference: tuple[int, list[int]] | None
) -> list[tuple[int, tuple[int, ...], Source, float | None]]:
    """Distinct (checkpoint, LoRAs) choices: the reference first, then beams, then samples; at most m."""
    out: list[tuple[int, tuple[int, ...], Source, float | None]] = []
    seen: set[tuple[int, frozenset[int]]] = set()
    if reference is not None and cfg.include_reference:
        out.append((reference[0], tuple(reference[1]), "reference", None))
        seen.add((reference[0], frozenset(reference[1])))
    beams: list[Decoded] = (
        decoder.diverse_beam_search(groups=cfg.n_beam, beams_per_group=1, diversity_penalty=cfg.diversity_penalty)
        if cfg.n_beam
        else []
    )
    samples = decoder.sample(cfg.n_sample, temperature=cfg.temperature, seed=seed) if cfg.n_sample else []
    for group, source in ((dedupe(beams), "beam"), (dedupe(samples), "sample")):
        for d in group:
            if d.key not in seen and len(out) < cfg.max_candidates:
                seen.add(d.key)
                out.append((d.checkpoint, d.loras, source, round(d.logprob, 5)))
    return out


class Rebuilder:
    """Choice -> ``ApiCall`` exactly as ``Selector._build_calls`` makes it (without user LoRA tags)."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._embeddings = None

    def __call__(
        self, ex: Example, checkpoint: int, loras: tuple[int, ...] | list[int]
    ) -> tuple[ApiCall | None, int | None, int]:
        """(call or None when it cannot be built, the checkpoint's model id, LoRAs dropped as mismatched)."""
        reg = self.registry
        if self._embeddings is None:
            self._embeddings = reg.addons_by_trigger(("embedding",))
        ids = [ex.checkpoint_ids[checkpoint], *(ex.lora_ids[j] for j in loras)]
        known = reg.versions(ids)
        ck = known.get(ids[0])
        if ck is None:
            return None, None, 0
        usage = reg.usage(ck.id)
        chosen = [known[i] for i in ids[1:] if i in known]
        mismatched = sum(1 for lo in chosen if not compatible(ck.family, lo.family))
        pairs = [(lo, lora_weight(lo, usage, reg.usage(lo.id))) for lo in chosen]
        try:
            call = build_call(ex.request, ck, usage, pairs, seed=0, embeddings=self._embeddings)
        except Exception:  # an unbuildable choice is exactly what the reward must punish
            return None, ck.model_id, mismatched
        return call, ck.model_id, mismatched


def generate_candidates(
    examples: list[Example],
    tok: Tokenizer,
    logits: LogitsFn,
    rebuild: Rebuilder,
    cfg: TrainConfig,
    out: Path,
    *,
    image_reward: Callable | None = None,
    progress: bool = True,
) -> list[PromptCandidates]:
    """Candidates and rewards for the first ``cfg.rrhf.prompts`` usable examples, cached in ``out``."""
    from tqdm import tqdm

    r = cfg.rrhf
    reward_name = IMAGE_REWARD if r.reward == "image" else AGREEMENT_REWARD
    if r.reward == "image" and image_reward is None:
        raise UserInputError(
            "rrhf.reward = 'image' needs a renderer and the scorers (GPU + real weights); "
            "use rrhf.reward = 'agreement' on a CPU-only machine"
        )
    chosen = [e for e in examples if e.usable][: r.prompts]
    log = AppendLog(out)
    have = {int(rec["image_id"]): PromptCandidates.model_validate(rec) for rec in log.records()}
    stale = {pc.reward for pc in have.values()} - {reward_name}
    if stale:
        raise UserInputError(f"{out} holds candidates scored by another reward ({stale.pop()}); delete it")
    todo = [e for e in chosen if e.image_id not in have]
    with log.open() as write:
        for ex in tqdm(
            todo, desc="rrhf candidates", disable=not progress, initial=len(chosen) - len(todo), total=len(chosen)
        ):
            prompt = tok.encode(ex.prompt, bos=True)
            labels = labels_for(tok, len(ex.checkpoint_ids), len(ex.lora_ids), cfg.data.max_loras)
            decoder = Decoder(logits, prompt, labels, n_loras=len(ex.lora_ids))
            proposals = propose(
                decoder, r, seed=cfg.seed * 100_003 + ex.image_id, reference=(ex.answer_checkpoint, ex.answer_loras)
            )
            built = [rebuild(ex, ck, loras) for ck, loras, _, _ in proposals]
            if image_reward is not None:
                rewards = image_reward(ex.request, [call for call, _, _ in built])
            else:
                rewards = [
                    agreement_reward(call, ex.target, ex.target_lora_ids, checkpoint_model_id=mid, mismatched=mis)
                    for call, mid, mis in built
                ]
            pc = PromptCandidates(
                image_id=ex.image_id,
                reward=reward_name,
                candidates=[
                    Candidate(checkpoint=ck, loras=list(loras), source=src, logprob=lp, reward=rew)
                    for (ck, loras, src, lp), rew in zip(proposals, rewards, strict=True)
                ],
            )
            write(pc.model_dump(mode="json"))
            have[ex.image_id] = pc
    return [have[e.image_id] for e in chosen]


def torch_logits(model) -> LogitsFn:
    """Next-token logits from a torch model (no KV cache; for tests and small models)."""
    import torch

    from diffagent.training.model import device_of

    device = device_of(model)

    def fn(tokens: list[int]) -> np.ndarray:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([tokens], device=device), logits_to_keep=1, use_cache=False)
        return out.logits[0, -1].float().cpu().numpy()

    return fn


# ---------------------------------------------------------------------------------- training
def _cache_kwarg(model) -> str:
    # transformers 5 renamed past_key_values to cache in model forwards
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def shared_prompt_logprobs(model, prompt: list[int], answers: list[list[int]], *, bf16: bool = False):
    """Per-token log-probabilities [m, A] (and mask) of m answers after one shared prompt.

    The prompt runs once (its KV cache keeps the autograd graph, so gradients flow through it to
    the LoRA weights of every layer); the cache is repeated m times and the answers run as one
    batch after it. Equal to running the m full sequences (tested).
    """
    import torch

    from diffagent.training.model import device_of

    if not answers or min(len(a) for a in answers) < 1:
        raise ValueError("every answer needs at least one token")
    m, A = len(answers), max(len(a) for a in answers)
    dev = device_of(model)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        first = model(input_ids=torch.tensor([prompt], device=dev), use_cache=True, logits_to_keep=1)
    lp_first = torch.log_softmax(first.logits[0, -1].float(), dim=-1)  # predicts every answer's 1st token
    lp_rest = None
    if A > 1:
        ids = torch.zeros((m, A - 1), dtype=torch.long)
        for i, a in enumerate(answers):
            ids[i, : len(a) - 1] = torch.tensor(a[:-1], dtype=torch.long)
        ids = ids.to(dev)
        cache = first["cache"] if "cache" in first else first.past_key_values  # renamed in transformers 5
        cache.batch_repeat_interleave(m)
        pos = torch.arange(len(prompt), len(prompt) + A - 1, device=dev).unsqueeze(0).expand(m, -1)
        # right padding: a real token never attends to the pads after it, so no attention mask
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, position_ids=pos, use_cache=True, **{_cache_kwarg(model): cache})
        lp_rest = torch.log_softmax(out.logits.float(), dim=-1)  # [m, A-1, V]
    rows, mask = [], torch.zeros((m, A), device=dev)
    for i, a in enumerate(answers):
        parts = [lp_first[a[0]].unsqueeze(0)]
        if len(a) > 1:
            tail = torch.tensor(a[1:], device=dev).unsqueeze(-1)
            parts.append(lp_rest[i, : len(a) - 1].gather(-1, tail).squeeze(-1))
        parts.append(torch.zeros(A - len(a), device=dev))
        rows.append(torch.cat(parts))
        mask[i, : len(a)] = 1
    return torch.stack(rows), mask


class RRHFReport(BaseModel):
    reward: str
    prompts: int
    informative_prompts: int
    candidates_mean: float
    steps: int
    seconds: float
    first_loss: float | None
    last_loss: float | None
    mean_reward_by_source: dict[str, float]
    adapter: str


def train_rrhf(
    model,
    tok: Tokenizer,
    examples: list[Example],
    candidates: list[PromptCandidates],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    progress: bool = True,
) -> RRHFReport:
    """Train the (SFT-initialized) peft ``model`` in place; the adapter lands in ``out_dir/adapter``."""
    by_id = {e.image_id: e for e in examples}
    units = []
    for pc in candidates:
        if not pc.informative:
            continue
        ex = by_id[pc.image_id]
        prompt = tok.encode(ex.prompt, bos=True)
        answers = [answer_ids(tok, c.checkpoint, c.loras) for c in pc.candidates]
        units.append((prompt, answers, [c.reward.total for c in pc.candidates]))
    if not units:
        raise UserInputError(
            f"none of the {len(candidates)} prompts has candidates that differ in reward; "
            "raise rrhf.n_sample / rrhf.temperature or rrhf.prompts"
        )
    r = cfg.rrhf

    def loss_fn(m, unit):
        prompt, answers, rewards = unit
        lp, mask = shared_prompt_logprobs(m, prompt, answers, bf16=r.bf16)
        total, rank, sft = rrhf_loss(lp, mask, rewards, sft_weight=r.sft_weight)
        return total, {"rank": float(rank.detach()), "sft": float(sft.detach())}

    loop = LoopSettings(
        epochs=r.epochs,
        max_steps=r.max_steps,
        grad_accum=r.grad_accum,
        lr=r.lr,
        warmup_steps=r.warmup_steps,
        checkpoint_every=r.checkpoint_every,
        seed=cfg.seed,
    )
    state = train_loop(model, units, loss_fn, out_dir, loop, progress=progress, desc="rrhf")
    by_source: dict[str, list[float]] = {}
    for pc in candidates:
        for c in pc.candidates:
            by_source.setdefault(c.source, []).append(c.reward.total)
    return RRHFReport(
        reward=candidates[0].reward,
        prompts=len(candidates),
        informative_prompts=len(units),
        candidates_mean=round(sum(len(pc.candidates) for pc in candidates) / len(candidates), 2),
        steps=state.step,
        seconds=round(state.seconds, 1),
        first_loss=state.losses[0] if state.losses else None,
        last_loss=state.losses[-1] if state.losses else None,
        mean_reward_by_source={k: round(sum(v) / len(v), 4) for k, v in by_source.items()},
        adapter=str(Path(out_dir) / "adapter"),
    )
