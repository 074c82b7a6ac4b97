"""The selector's LLM as a conditional language model of creators' prompts given a model card (issue 15).

In the label format (``training/sft.py``) one token per example carries the learning signal, and SFT learned
label positions rather than content. Here every token of a creator's prompt is a target: the model reads the
card of the checkpoint the creator used (name, version, tags, trigger words, 300 characters of description,
``registry/index.version_text``) and learns to write the creator's prompt after it. A request then scores each
shortlisted checkpoint as a generative classifier:

    PMI(card, request) = log p(request | card) - log p(request | no card)

and, because a card is text, the score reaches models no creator image shows.

``diffagent train cardlm`` builds the (card, prompt) pairs from the train split (at most ``per_page`` prompts per
model page, so popular pages do not dominate), trains a LoRA on the base GGUF model's weights with the shared
resumable loop (``training/loop.py``: a killed run continues from its last checkpoint), and evaluates on held-out
pairs whose creator's checkpoint is in the selector's shortlist, before and after training: PMI top-1 within the
shortlist against the retrieval ranker's, their fusion, and the mean per-token NLL of a prompt under its
creator's card and under another shortlisted card (a model that ignores the card scores the two alike).

The language-model loss alone teaches creators' prompt language far faster than it teaches the card's part in
it (session 6: after 2,400 pairs a prompt was 0.009 nats a token likelier under its own card than another). With
``negatives`` > 0 each pair is also scored under that many *hard negative* cards, the checkpoints whose stock card
vectors are nearest its own (from other model pages, as a shortlist's rivals are), and a contrastive term

    L_contrast = -log softmax_j( log p(prompt | card_j) )[own card]

over the own card and the negatives is added with ``contrast_weight``. The request tokens are the same under
every card, so the summed log-probabilities differ exactly as the PMI scores that rank a shortlist do.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from diffagent.errors import UserInputError
from diffagent.registry.index import version_text

#: what precedes the prompt with and without a card (kept short: the card carries the signal)
CARD_HEAD = "Model: {card}\nA prompt written for this model:"
NO_CARD = "A prompt written for an image model:"
#: prompts are cut to this many tokens (creators' tag lists run long; the first tokens say the most)
MAX_REQUEST_TOKENS = 64
#: characters of card text by default (about 150 tokens); 160 keeps the name, tags and trigger words (about 40)
CARD_CHARS = 600


def card_prefix(info, chars: int = CARD_CHARS) -> str:
    """The text a candidate's card contributes (``info``: a registry ``VersionInfo``): name, version, tags,
    trigger words and description, cut to ``chars`` characters."""
    card = version_text(info.model_name, info.name, list(info.tags)[:12], list(info.trained_words), info.description)
    return CARD_HEAD.format(card=" ".join(card.split())[:chars])


@dataclass(frozen=True)
class CardPair:
    card: str  # card_prefix of the creator's checkpoint
    request: str
    negatives: tuple[str, ...] = ()  # card_prefix of hard negative checkpoints (other pages)


@dataclass(frozen=True)
class EvalItem:
    request: str
    cards: tuple[str, ...]  # card_prefix of each shortlisted checkpoint, in the ranker's order
    ranker: tuple[float, ...]  # the ranker's probability (or fused score) of each
    target: int  # index of the creator's checkpoint in the shortlist
    target_has_prompts: bool  # whether creators' prompts in the registry reach the creator's checkpoint


class CardLMConfig(BaseModel):
    steps: int = Field(300, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    checkpoint_every: int = Field(25, ge=1)
    seed: int = 0
    negatives: int = Field(0, ge=0, description="hard negative cards a pair is also scored under (0: LM loss only)")
    contrast_weight: float = Field(1.0, ge=0, description="weight of the contrastive term beside the LM loss")
    device: str = Field("cpu", description="'cpu', or 'cuda' on a GPU machine (see docs/training-gpu.md)")
    card_chars: int = Field(CARD_CHARS, ge=20, description="characters of each card the model reads")


def encode(tok, prefix: str, request: str) -> tuple[list[int], list[int]]:
    """(prefix tokens with BOS, request tokens cut to ``MAX_REQUEST_TOKENS``); the request starts with a space."""
    return tok.encode(prefix, bos=True), tok.encode(" " + request.strip())[:MAX_REQUEST_TOKENS]


def request_logprobs(model, tok, prefixes: Sequence[str], request: str) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of ``request`` after each prefix, in one batched forward pass."""
    import torch

    from diffagent.training.model import answer_logprobs, make_batch

    seqs = [encode(tok, p, request) for p in prefixes]
    seqs = [(p, a) for p, a in seqs if a]
    if len(seqs) != len(prefixes):
        raise UserInputError(f"the request {request[:60]!r} has no tokens")
    with torch.no_grad():
        lp = answer_logprobs(model, make_batch(seqs))
    return [(float(lp[i].sum()), len(seqs[i][1])) for i in range(len(seqs))]


def shortlist_scores(
    logprob: Callable[[Sequence[str], str], list[tuple[float, int]]], item: EvalItem
) -> tuple[list[float], float, float, int]:
    """PMI of each shortlisted card, the per-token NLL of the request under its creator's card and under
    another (seeded) card of the shortlist, and the request's token count."""
    scored = logprob([NO_CARD, *item.cards], item.request)
    (base, n), cards = scored[0], scored[1:]
    pmi = [lp - base for lp, _ in cards]
    other = random.Random(item.request).choice([j for j in range(len(item.cards)) if j != item.target])
    return pmi, -cards[item.target][0] / n, -cards[other][0] / n, n


def evaluate(
    logprob: Callable[[Sequence[str], str], list[tuple[float, int]]],
    items: Sequence[EvalItem],
    betas: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
) -> dict:
    """PMI top-1 within the shortlist against the ranker's, their fusion (ranker logit + beta * PMI per request
    token), and the NLL of the request under its creator's card vs another card; for all items and for those
    whose creator's checkpoint no creator prompt reaches."""
    rows = [(it, *shortlist_scores(logprob, it)) for it in items]

    def top1(subset, fuse: float | None) -> float | None:
        if not subset:
            return None
        hits = 0
        for it, pmi, _, _, n_tok in subset:
            if fuse is None:
                score = pmi
            else:
                score = [
                    math.log(max(r, 1e-6) / max(1 - r, 1e-6)) + fuse * p / n_tok
                    for r, p in zip(it.ranker, pmi, strict=True)
                ]
            hits += max(range(len(score)), key=score.__getitem__) == it.target
        return round(hits / len(subset), 4)

    def summary(subset) -> dict:
        if not subset:
            return {"n": 0}
        return {
            "n": len(subset),
            "ranker_top1": round(
                sum(max(range(len(it.ranker)), key=it.ranker.__getitem__) == it.target for it, *_ in subset)
                / len(subset),
                4,
            ),
            "pmi_top1": top1(subset, None),
            "fused_top1": {str(b): top1(subset, b) for b in betas},
            "nll_creator_card": round(sum(r[2] for r in subset) / len(subset), 4),
            "nll_other_card": round(sum(r[3] for r in subset) / len(subset), 4),
            "chance": round(sum(1 / len(it.cards) for it, *_ in subset) / len(subset), 4),
        }

    return {"all": summary(rows), "no_creator_prompts": summary([r for r in rows if not r[0].target_has_prompts])}


def hard_negatives(
    registry, version_ids: Sequence[int], k: int, *, pool: int = 10, seed: int = 0
) -> dict[int, list[int]]:
    """For each version, ``k`` checkpoint versions drawn from the ``pool`` whose stock card vectors are nearest
    its own, never of its own model page (the rivals a shortlist puts beside it)."""
    import numpy as np

    from diffagent.training.cards import card_matrix

    ids, pages, vecs = card_matrix(registry)
    at = {int(v): i for i, v in enumerate(ids)}
    norm = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-6)
    rng = random.Random(seed)
    out: dict[int, list[int]] = {}
    for vid in sorted(set(version_ids)):
        i = at.get(int(vid))
        if i is None:
            continue
        sims = norm @ norm[i]
        sims[pages == pages[i]] = -np.inf  # the own page's versions are not negatives
        near = [int(ids[j]) for j in np.argsort(-sims)[:pool] if np.isfinite(sims[j])]
        out[int(vid)] = rng.sample(near, min(k, len(near)))
    return out


def train_pairs(
    pairs_path: Path,
    registry,
    *,
    per_page: int,
    limit: int,
    seed: int,
    negatives: int = 0,
    card_chars: int = CARD_CHARS,
) -> list[CardPair]:
    """(card of the creator's checkpoint, creator's prompt) for train-split pairs whose checkpoint the registry
    holds, at most ``per_page`` per model page; with ``negatives``, that many hard negative cards each
    (``hard_negatives``)."""
    from diffagent.bench.pairs import load_pairs
    from diffagent.prompttext import strip_resource_tags
    from diffagent.training.cards import sample_train

    train = sample_train(list(load_pairs(pairs_path, splits={"train"})), per_page, seed)[:limit]
    targets = sorted({p.target.checkpoint_version_id for p in train})
    negs = hard_negatives(registry, targets, negatives, seed=seed) if negatives else {}
    infos = registry.versions(sorted(set(targets) | {n for ns in negs.values() for n in ns}))
    out = [
        CardPair(
            card_prefix(infos[p.target.checkpoint_version_id], card_chars),
            strip_resource_tags(p.instruction),
            tuple(
                card_prefix(infos[n], card_chars) for n in negs.get(p.target.checkpoint_version_id, []) if n in infos
            ),
        )
        for p in train
        if p.target.checkpoint_version_id in infos
    ]
    out = [p for p in out if p.request.strip() and len(p.negatives) == negatives]
    if not out:
        raise UserInputError(f"no train pair in {pairs_path} names a checkpoint {registry.where} holds")
    return out


def eval_items(
    pairs_path: Path,
    registry,
    *,
    split: str,
    limit: int,
    seed: int,
    shortlist: int = 6,
    card_chars: int = CARD_CHARS,
    progress: bool = False,
) -> list[EvalItem]:
    """Held-out pairs with the selector's shortlist (the ranker's order, natural-request intent included),
    kept when the creator's checkpoint is in it: the LLM can only choose within the shortlist."""
    from tqdm import tqdm

    from diffagent.agent.ranker import load_setting
    from diffagent.agent.retrieve import RetrievalWeights, first_stage, pool_size, request_intent, second_stage
    from diffagent.bench.pairs import load_pairs
    from diffagent.families import parse_base_constraint
    from diffagent.prompttext import strip_resource_tags

    ranker = load_setting("default")
    pairs = list(load_pairs(pairs_path, splits={split}))
    random.Random(seed).shuffle(pairs)
    items: list[EvalItem] = []
    bar = tqdm(total=limit, desc=f"{split} shortlists", disable=not progress)
    for p in pairs:
        if len(items) >= limit:
            break
        request = strip_resource_tags(p.instruction)
        if not request.strip():
            continue
        intent = request_intent(registry, request)
        hits = first_stage(
            registry, request, base=parse_base_constraint("any"), limit=pool_size(shortlist, ranker, intent)
        )
        short = second_stage(
            registry, request, hits, k=shortlist, weights=RetrievalWeights(), ranker=ranker, intent=intent
        )
        ids = [c.version.id for c in short]
        if p.target.checkpoint_version_id not in ids or len(ids) < 2:
            continue
        target = ids.index(p.target.checkpoint_version_id)
        items.append(
            EvalItem(
                request=request,
                cards=tuple(card_prefix(c.version, card_chars) for c in short),
                ranker=tuple(float(c.score) for c in short),
                target=target,
                target_has_prompts=registry.has_creator_prompts(ids[target]),
            )
        )
        bar.update(1)
    bar.close()
    return items


def train_cardlm(model, tok, pairs: Sequence[CardPair], cfg: CardLMConfig, out_dir: Path, *, progress: bool = True):
    """Train the peft ``model`` to write each creator's prompt after its checkpoint's card (loss on the prompt's
    tokens only), plus, where pairs carry negatives, the contrastive term of the module docstring; resumable
    through ``training/loop.py``. Returns the loop's state."""
    import torch

    from diffagent.training.loop import LoopSettings, train_loop
    from diffagent.training.losses import sft_loss
    from diffagent.training.model import answer_logprobs, device_of, make_batch

    # one example: the own card's sequence, then one per negative card (the same request tokens after each)
    examples = []
    for p in pairs:
        own = encode(tok, p.card, p.request)
        if own[1]:
            examples.append([own] + [(tok.encode(n, bos=True), own[1]) for n in p.negatives])
    order = sorted(range(len(examples)), key=lambda i: (sum(len(a) + len(b) for a, b in examples[i]), i))
    units = [[examples[i] for i in order[k : k + cfg.batch_size]] for k in range(0, len(order), cfg.batch_size)]
    random.Random(cfg.seed).shuffle(units)

    def loss_fn(m, unit):
        width = len(unit[0])
        b = make_batch([seq for ex in unit for seq in ex]).to(device_of(m))
        lp = answer_logprobs(m, b)
        own = torch.arange(len(unit), device=lp.device) * width
        lm = sft_loss(lp[own], b.mask[own])
        if width == 1 or cfg.contrast_weight == 0:
            return lm, {"lm": float(lm.detach())}
        scores = lp.sum(dim=1).view(len(unit), width)  # [pairs, own + negatives]
        gold = torch.zeros(len(unit), dtype=torch.long, device=lp.device)
        contrast = torch.nn.functional.cross_entropy(scores, gold)
        return lm + cfg.contrast_weight * contrast, {"lm": float(lm.detach()), "contrast": float(contrast.detach())}

    epochs = max(1, math.ceil(cfg.steps * cfg.grad_accum / max(len(units), 1)))
    loop = LoopSettings(
        epochs=epochs,
        max_steps=cfg.steps,
        grad_accum=cfg.grad_accum,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        checkpoint_every=cfg.checkpoint_every,
        seed=cfg.seed,
    )
    return train_loop(model, units, loss_fn, Path(out_dir), loop, progress=progress, desc="cardlm")


def _items_from_json(rows: list[dict]) -> list[EvalItem]:
    return [EvalItem(**{**r, "cards": tuple(r["cards"]), "ranker": tuple(r["ranker"])}) for r in rows]


def run_cardlm(
    settings,
    pairs_path: Path,
    work_dir: Path,
    *,
    cfg: CardLMConfig,
    per_page: int = 3,
    train_limit: int = 20000,
    eval_split: str = "val",
    eval_limit: int = 150,
    threads: int = 1,
    init_adapter: Path | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate the starting model (the base, or the base with ``init_adapter``, an earlier run's adapter to
    continue from), train, evaluate again; every step's result is kept in ``work_dir``, so a rerun after a kill
    skips what is done and the training resumes from its last checkpoint."""
    import dataclasses
    import json
    import time

    from diffagent.registry.store import Registry
    from diffagent.training.config import LoraShape, TrainConfig
    from diffagent.training.io import write_json_atomic
    from diffagent.training.model import add_lora, ensure_hf_base, load_base, load_lora
    from diffagent.training.pipeline import _setup_torch, base_gguf, layout
    from diffagent.training.tokens import GGUFTokenizer

    def read_json(path: Path):
        return json.loads(Path(path).read_text(encoding="utf-8"))

    # the same base model, converted folder, threads and seed as the other training stages
    stages = TrainConfig(threads=threads, seed=cfg.seed, device=cfg.device)
    _setup_torch(stages)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry.from_settings(settings)
    gguf = base_gguf(stages, settings)
    hf = ensure_hf_base(gguf, layout(stages, settings).base_hf)
    tok = GGUFTokenizer(gguf)

    items_file = work_dir / f"eval_items_{eval_split}_{cfg.card_chars}chars.json"
    if items_file.is_file():
        items = _items_from_json(read_json(items_file))
    else:
        items = eval_items(
            pairs_path,
            registry,
            split=eval_split,
            limit=eval_limit,
            seed=cfg.seed,
            card_chars=cfg.card_chars,
            progress=progress,
        )
        write_json_atomic(items_file, [dataclasses.asdict(it) for it in items])
    if not items:
        raise UserInputError(f"no {eval_split} pair of {pairs_path} has its checkpoint in the shortlist")

    def scored(model):
        model.eval()
        return evaluate(lambda prefixes, request: request_logprobs(model, tok, prefixes, request), items)

    def start():
        if init_adapter is None:
            return add_lora(load_base(hf, cfg.device), LoraShape())
        return load_lora(load_base(hf, cfg.device), Path(init_adapter), trainable=True)

    base_file = work_dir / "eval_base.json"
    if not base_file.is_file():
        t0 = time.perf_counter()
        result = scored(start()) | {"seconds": round(time.perf_counter() - t0, 1)}
        write_json_atomic(base_file, result)
    base = read_json(base_file)

    train = train_pairs(
        pairs_path,
        registry,
        per_page=per_page,
        limit=train_limit,
        seed=cfg.seed,
        negatives=cfg.negatives,
        card_chars=cfg.card_chars,
    )
    model = start()
    model.train()
    state = train_cardlm(model, tok, train, cfg, work_dir / "train", progress=progress)
    t0 = time.perf_counter()
    trained = scored(model) | {"seconds": round(time.perf_counter() - t0, 1)}
    report = {
        "pairs": str(pairs_path),
        "registry": registry.where,
        "base_model": str(gguf),
        "init_adapter": str(init_adapter) if init_adapter else None,
        "train_pairs": len(train),
        "per_page": per_page,
        "config": json.loads(cfg.model_dump_json()),
        "steps": state.step,
        "train_seconds": round(state.seconds, 1),
        "first_loss": state.losses[0] if state.losses else None,
        "last_loss": state.losses[-1] if state.losses else None,
        "eval_split": eval_split,
        "base": base,
        "trained": trained,
        "adapter": str(work_dir / "train" / "adapter"),
    }
    write_json_atomic(work_dir / "report.json", report)
    return report
