"""``diffagent train cards``: fine-tune the card encoder (``agent/cards.py``) on creators' choices.

Data: the train split of ``bench build`` pairs, at most ``per_page`` prompts per model page (popular pages
would otherwise dominate), each paired with the registry's (frozen, stock) card vector of the checkpoint version
the creator used. Model: all-MiniLM-L6-v2 with LoRA on every linear layer of its six blocks. Loss: InfoNCE of the
prompt's vector against every card that is some train prompt's positive, so the encoder learns to rank cards by
what they say; cards that no train prompt chose are left out of the softmax (as negatives they would only teach it
to bury the models it has never seen, which are the ones the card signal is for).

``--towers both`` (the shipped encoder since session 14) reads the cards with the same updated encoder: the request
and the card text both move, so the encoder learns what in a card (its name, tags, trigger words, description)
says who uses it, and that transfers to cards no creator chose. The softmax then runs over the batch's cards plus
random chosen ones (64 a step; other versions of the positive's page masked), as every card is encoded anew each
step. On the pairs whose checkpoint page has no train image it ranks the creator's page first about twice as often
as the request-only encoder (test 0.114 -> 0.237), at a cost on pages creators use a lot, which the ranker's kNN
votes cover; a registry's cards are encoded again once for it (``Registry.card_vectors``, cached).
Evaluation on val (and test) pairs at the model-page level, ranking every checkpoint card by the request alone,
reported separately for pairs whose checkpoint page has no train-split image.

Costs on two cores: about 1.2 s a step of 32 prompts with ``--towers query`` (1,200 steps, 25 minutes), about 4 s
with ``--towers both`` (300 steps, 20 minutes), resumable; on a GPU (``--device cuda``) the same recipes take
about a minute, and larger batches (``--batch-size 256``, ``--cards-per-step 512``) are the first thing to try
there.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from diffagent.agent.cards import CardEncoder
from diffagent.atomic import write_atomic
from diffagent.bench.pairs import Pair, load_pairs
from diffagent.bench.split import PAGES, page_half
from diffagent.errors import UserInputError
from diffagent.prompttext import strip_resource_tags
from diffagent.registry.location import identity
from diffagent.registry.store import Registry


def card_matrix(registry: Registry, encoder: CardEncoder | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(version ids, model page ids, unit card vectors) of every renderable checkpoint with a card vector: the
    registry's stock vectors, or, for a two-tower ``encoder``, the cards as it reads them."""
    idx = registry._load_index()  # noqa: SLF001 - the index is the registry's own matrix of card vectors
    if idx.vec is None:
        raise UserInputError(f"{registry.where} has no sentence vectors; import it without --no-vectors first")
    rows = np.flatnonzero((idx.types == "checkpoint") & idx.renderable & (np.abs(idx.vec).sum(axis=1) > 0))
    ids = idx.ids[rows]
    pages = registry.versions([int(v) for v in ids])
    model_ids = np.array([pages[int(v)].model_id if int(v) in pages else -1 for v in ids], dtype=np.int64)
    space = idx.vec if encoder is None else registry.card_vectors(encoder)
    return ids, model_ids, np.ascontiguousarray(space[rows])


def card_texts(registry: Registry, ids: np.ndarray) -> list[str]:
    """The card text of each checkpoint version in ``ids`` (what its stock vector embeds)."""
    from diffagent.registry.index import version_texts

    with registry.engine.connect() as conn:
        texts = version_texts(conn, ("checkpoint",))
    return [texts[int(v)] for v in ids]


def sample_train(pairs: list[Pair], per_page: int, seed: int) -> list[Pair]:
    by_page: dict[int, list[Pair]] = defaultdict(list)
    for p in pairs:
        by_page[p.page_model_id].append(p)
    rng = random.Random(seed)
    out = []
    for page in sorted(by_page):
        group = by_page[page]
        rng.shuffle(group)
        out += group[:per_page]
    rng.shuffle(out)
    return out


@dataclass
class ExtraPairs:
    """Train prompts paired with cards outside the checkpoint matrix (the LoRAs their creators used), for a
    two-tower run: ``lora_prompts`` of them join every step, and their cards are read by the same card tower."""

    texts: list[str]
    pos: np.ndarray  # per prompt: its card's index in ``cards``
    cards: list[str]  # card text of each LoRA version
    card_pages: np.ndarray  # model page of each card
    #: per prompt: the model pages of every resource of its image, never its negatives
    related: list[frozenset[int]]


class LoraUse:
    """The registry LoRAs a train image was made with (``bench.pairs.creator_loras``), their cards and pages."""

    def __init__(self, registry: Registry):
        from diffagent.registry.index import version_texts
        from diffagent.registry.stats import lora_name_index, lora_versions

        with registry.engine.connect() as conn:
            self.by_stem, self.ids = lora_name_index(conn), lora_versions(conn)
            self.texts = version_texts(conn, ("lora", "locon"))
        self.page_of = {v: info.model_id for v, info in registry.versions(sorted(self.ids)).items()}

    def used(self, pair: Pair) -> set[int]:
        from diffagent.bench.pairs import creator_loras

        return {v for v in creator_loras(pair, self.by_stem, self.ids) if v in self.texts and v in self.page_of}

    def related(self, pair: Pair) -> frozenset[int]:
        """The model pages of every resource of the image (its checkpoint's and its LoRAs')."""
        return frozenset({pair.target.checkpoint_model_id} | {self.page_of[v] for v in self.used(pair)})

    def pairs(self, train: list[Pair], per_page: int, seed: int) -> ExtraPairs:
        """(prompt, card of a LoRA the creator used) from ``train``: the LoRA whose page shows the image where the
        registry holds it, else the first one the image names; at most ``per_page`` prompts a LoRA page."""
        by_page: dict[int, list[tuple[Pair, int]]] = defaultdict(list)
        for p in train:
            used = self.used(p)
            if not used:
                continue
            named = [v for v in (self.by_stem.get(lo.name.lower()) for lo in p.target.loras) if v in used]
            first = p.page_version_id if p.page_version_id in used else named[0] if named else min(used)
            by_page[self.page_of[first]].append((p, first))
        rng = random.Random(seed)
        kept = []
        for page in sorted(by_page):
            group = by_page[page]
            rng.shuffle(group)
            kept += group[:per_page]
        rng.shuffle(kept)
        card_ids = sorted({v for _, v in kept})
        row = {v: i for i, v in enumerate(card_ids)}
        return ExtraPairs(
            texts=[strip_resource_tags(p.instruction) for p, _ in kept],
            pos=np.array([row[v] for _, v in kept], dtype=np.int64),
            cards=[self.texts[v] for v in card_ids],
            card_pages=np.array([self.page_of[v] for v in card_ids], dtype=np.int64),
            related=[self.related(p) for p, _ in kept],
        )


def embed_cached(embedder, texts: list[str], cache: Path, progress: bool = False) -> np.ndarray:
    """Sentence vectors of ``texts``, cached by a digest of the texts and the embedder."""
    key = hashlib.sha256(("\n".join(texts) + "\0" + embedder.name).encode()).hexdigest()[:16]
    path = cache / f"prompts-{key}.npy"
    if path.is_file():
        return np.load(path)
    vecs = embedder.encode(texts, show_progress=progress).astype(np.float32)
    write_atomic(path, lambda tmp: np.save(tmp, vecs))
    return vecs


#: the linear layers of each BERT block that get low-rank updates (their names in ``NumpyBert`` and in
#: transformers' ``BertModel``)
TARGETS = (
    r"encoder\.layer\.\d+\."
    r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
)


class CardsConfig(BaseModel):
    """How the card encoder is trained (defaults: the shipped run, about 1.2 s a step on two cores)."""

    steps: int = Field(1200, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(5e-4, gt=0)
    tau: float = Field(0.05, gt=0, description="softmax temperature of the cosine logits")
    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    max_length: int = Field(64, ge=8, description="prompt tokens seen in training (queries use the embedder's)")
    per_page: int = Field(15, ge=1, description="most train prompts per model page")
    towers: str = Field(
        "query",
        pattern="^(query|both)$",
        description="query: LoRA on the request side only, against the registry's stock card vectors (a full "
        "softmax over the cards creators chose); both: the cards are read by the same updated encoder (negatives: "
        "the batch's cards and random chosen cards), which reaches models no creator chose far better and needs "
        "the registry's cards encoded again (``Registry.card_vectors``, cached)",
    )
    cards_per_step: int = Field(64, ge=2, description="towers=both: cards encoded a step (the batch's and random)")
    card_length: int = Field(96, ge=8, description="towers=both: card tokens seen in training")
    hard_negatives: int = Field(
        0,
        ge=0,
        description="towers=both: per prompt, that many of the chosen cards of other pages nearest to it under "
        "the encoder as it was at the bank's last refresh join the step's cards (ANCE); 0: random cards only",
    )
    refresh_every: int = Field(50, ge=1, description="hard negatives: steps between re-encoding the card bank")
    lora_prompts: int = Field(
        0,
        ge=0,
        description="towers=both: per step, that many more train prompts paired with the card of a LoRA their "
        "creator used (many more distinct pages, most with trigger words and subjects, read by the same card "
        "tower); 0: checkpoint cards only",
    )
    pages: str = Field(
        "all",
        pattern=f"^({'|'.join(PAGES)})$",
        description="train pages used: all, or one half by page id (the encoder that gives the ranker's "
        "train pairs on the other half their card feature, ``train ranker --card-encoder``)",
    )
    checkpoint_every: int = Field(50, ge=1)
    seed: int = 0
    device: str = Field("cpu", description="'cpu', or 'cuda' on a GPU machine (the same recipe, larger batches)")


def _mean_pool(model, tok, texts: list[str], max_length: int, device: str):
    import torch

    t = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    hidden = model(**t).last_hidden_state
    m = t["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)


def lora_model(model_dir: Path, cfg: CardsConfig):
    """(peft model, tokenizer): the sentence model's BERT with LoRA on ``TARGETS``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    base = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=TARGETS)
    return get_peft_model(base, lora).to(cfg.device), tok


def factors_of(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The LoRA factors of a peft model, keyed by the layer's ``NumpyBert`` name."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            key = name.removeprefix("base_model.model.")
            out[key] = (
                module.lora_A["default"].weight.detach().float().cpu().numpy(),
                module.lora_B["default"].weight.detach().float().cpu().numpy(),
            )
    return out


class CardBank:
    """The chosen cards' unit vectors under the encoder being trained, re-encoded every ``every`` steps: the pool
    hard negatives are drawn from. A resumed run encodes the bank afresh at its first step."""

    def __init__(self, tok, texts: list[str], rows: np.ndarray, pages: np.ndarray, cfg: CardsConfig):
        self.tok, self.texts, self.rows, self.cfg = tok, texts, rows, cfg
        self.row_pages = pages[rows]  # the model page of each bank row
        self.vecs = None
        self.age = 0
        self.refreshes = 0

    def refresh(self, model) -> None:
        import torch

        was_training = model.training
        model.eval()  # no dropout: the bank is what the encoder reads now
        with torch.no_grad():
            chunks = [
                _mean_pool(
                    model,
                    self.tok,
                    [self.texts[r] for r in self.rows[i : i + 128]],
                    self.cfg.card_length,
                    self.cfg.device,
                )
                for i in range(0, len(self.rows), 128)
            ]
        model.train(was_training)
        self.vecs = torch.cat(chunks)
        self.age = 0
        self.refreshes += 1

    def nearest(self, model, zq, own_pages: np.ndarray, k: int) -> list[int]:
        """Card rows (indices into the card matrix) nearest each query of ``zq`` outside its own page, the
        nearest first, ``k`` a query, without repeats."""
        import torch

        if self.vecs is None or self.age >= self.cfg.refresh_every:
            self.refresh(model)
        self.age += 1
        sims = zq.detach() @ self.vecs.T
        same = torch.from_numpy(self.row_pages[None, :] == own_pages[:, None]).to(sims.device)
        top = sims.masked_fill(same, -2.0).topk(min(k, len(self.rows)), dim=1).indices.cpu().numpy()
        return list(dict.fromkeys(int(self.rows[j]) for j in top.T.reshape(-1)))


def fit_encoder(
    texts: list[str],
    pos: np.ndarray,
    cards: np.ndarray,
    model_dir: Path,
    out_dir: Path,
    cfg: CardsConfig,
    progress: bool = False,
    *,
    texts_of_cards: list[str] | None = None,
    card_pages: np.ndarray | None = None,
    extra: ExtraPairs | None = None,
    related: list[frozenset[int]] | None = None,
) -> tuple[CardEncoder, dict]:
    """Train LoRA updates of the sentence model so that ``normalize(mean_pool(prompt))`` ranks the card of its
    creator's checkpoint first: InfoNCE over every card that is some train prompt's positive (cards no train
    prompt chose never appear as negatives, so the model is not taught to bury the models it has not seen).
    With ``cfg.towers == "both"`` the cards (``texts_of_cards``) go through the same updated encoder, and the
    softmax runs over the batch's cards plus random chosen ones, other versions of the positive's page
    (``card_pages``) masked out. ``extra`` (two towers, ``cfg.lora_prompts`` > 0) adds that many prompts paired with
    LoRA cards to every step; ``related`` gives each checkpoint prompt the pages of its image's other resources,
    which are never its negatives.
    Resumable: a killed run continues from ``out_dir/checkpoint`` (the shared loop, ``training/loop.py``)."""
    import torch

    from diffagent.training.loop import LoopSettings, train_loop

    positives = np.unique(pos)
    col = {int(c): i for i, c in enumerate(positives)}
    cand = torch.from_numpy(np.ascontiguousarray(cards[positives])).to(cfg.device)
    target = np.array([col[int(p)] for p in pos])
    order = np.random.default_rng(cfg.seed).permutation(len(texts))
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]
    if not batches:
        raise UserInputError(f"{len(texts)} train prompts make no batch of {cfg.batch_size}; lower --batch-size")
    if cfg.towers == "both" and (texts_of_cards is None or card_pages is None):
        raise ValueError("towers=both needs the cards' texts and model pages")
    related = list(related) if related is not None else [frozenset()] * len(texts)
    texts = list(texts)
    if extra is not None and cfg.lora_prompts and len(extra.texts):
        if cfg.towers != "both":
            raise ValueError("LoRA prompts need towers=both (their cards are read by the card tower)")
        start, k = len(texts), min(cfg.lora_prompts, len(extra.texts))
        texts += extra.texts
        pos = np.concatenate([pos, extra.pos + len(texts_of_cards)])
        texts_of_cards = list(texts_of_cards) + extra.cards
        card_pages = np.concatenate([card_pages, extra.card_pages])
        related += extra.related
        cycle = np.random.default_rng(cfg.seed + 1).permutation(len(extra.texts)) + start
        batches = [np.concatenate([b, cycle[(np.arange(k) + i * k) % len(cycle)]]) for i, b in enumerate(batches)]
    model, tok = lora_model(model_dir, cfg)

    def loss_fn(m, batch):
        z = _mean_pool(m, tok, [texts[i] for i in batch], cfg.max_length, cfg.device)
        logits = z @ cand.T / cfg.tau
        return torch.nn.functional.cross_entropy(logits, torch.from_numpy(target[batch]).to(cfg.device)), {}

    bank = CardBank(tok, texts_of_cards, positives, card_pages, cfg) if cfg.hard_negatives else None

    def two_tower_loss(m, batch):
        mine = list(dict.fromkeys(int(pos[i]) for i in batch))
        zq = _mean_pool(m, tok, [texts[i] for i in batch], cfg.max_length, cfg.device)
        room = max(0, cfg.cards_per_step - len(mine))
        hard = [] if bank is None else bank.nearest(m, zq, card_pages[pos[batch]], cfg.hard_negatives)
        own = set(mine)
        cols = mine + [c for c in hard if c not in own][:room]
        rng = np.random.default_rng(int(batch[0]))  # the same random cards when a resumed run repeats the step
        drawn = rng.choice(positives, size=min(len(positives), cfg.cards_per_step * 2), replace=False)
        taken = set(cols)
        cols += [int(c) for c in drawn if int(c) not in taken][: max(0, cfg.cards_per_step - len(cols))]
        zc = _mean_pool(m, tok, [texts_of_cards[c] for c in cols], cfg.card_length, cfg.device)
        logits = zq @ zc.T / cfg.tau
        where = {c: j for j, c in enumerate(cols)}
        gold = torch.tensor([where[int(pos[i])] for i in batch], device=cfg.device)
        col_pages = card_pages[cols]
        same_page = col_pages[None, :] == card_pages[pos[batch]][:, None]  # other versions of the page
        same_page |= np.array([[pg in related[i] for pg in col_pages] for i in batch])  # the image's other resources
        mask = torch.from_numpy(same_page).to(cfg.device)
        mask[torch.arange(len(batch)), gold] = False
        return torch.nn.functional.cross_entropy(logits.masked_fill(mask, -1e4), gold), {}

    epochs = -(-cfg.steps // len(batches))
    loop = LoopSettings(
        epochs=epochs,
        max_steps=cfg.steps,
        lr=cfg.lr,
        warmup_steps=min(50, cfg.steps // 10),
        checkpoint_every=cfg.checkpoint_every,
        seed=cfg.seed,
    )
    step = two_tower_loss if cfg.towers == "both" else loss_fn
    state = train_loop(model, batches, step, out_dir, loop, progress=progress, desc="card encoder")
    encoder = CardEncoder(factors_of(model), cfg.alpha / cfg.rank, {"towers": cfg.towers})
    last = state.losses[-50:]
    return encoder, {
        "seconds": round(state.seconds, 1),
        "final_loss": round(float(np.mean(last)), 4) if last else None,
        "positive_cards": len(positives),
        **({"lora_pairs": len(extra.texts), "lora_cards": len(extra.cards)} if extra is not None else {}),
        **({"bank_refreshes": bank.refreshes} if bank is not None else {}),
    }


def evaluate(q: np.ndarray, target_pages: np.ndarray, model_ids: np.ndarray, cards: np.ndarray) -> dict:
    """Model-page top-1 / top-5 of ranking every card by cosine with ``q``."""
    sims = q @ cards.T
    top1 = top5 = 0
    for i in range(len(q)):
        order = np.argsort(-sims[i])[:200]
        pages = list(dict.fromkeys(model_ids[order].tolist()))
        top1 += pages[:1] == [int(target_pages[i])]
        top5 += int(target_pages[i]) in pages[:5]
    n = max(len(q), 1)
    return {"n": len(q), "model_top1": round(top1 / n, 4), "model_top5": round(top5 / n, 4)}


def train_cards(
    registry: Registry,
    pairs_path: Path,
    out: Path,
    *,
    work_dir: Path,
    cfg: CardsConfig | None = None,
    eval_limit: int = 2000,
    progress: bool = False,
) -> dict:
    """Train the card encoder on the train split and report model-page top-1 / top-5 of ranking every checkpoint
    card by the request alone, stock vs trained, on val and test (all pairs, and those whose checkpoint page has
    no train-split image: the models only their card can reach)."""
    cfg = cfg or CardsConfig()
    if cfg.lora_prompts and cfg.towers != "both":
        raise UserInputError("--lora-prompts needs --towers both (the LoRA cards are read by the card tower)")
    ids, model_ids, cards = card_matrix(registry)
    row_of = {int(v): i for i, v in enumerate(ids)}
    all_pairs = list(load_pairs(pairs_path, splits={"train", "val", "test"}))
    train = [p for p in all_pairs if p.split == "train" and p.target.checkpoint_version_id in row_of]
    train_pages = {p.target.checkpoint_model_id for p in train}
    train = page_half(train, cfg.pages)
    train = sample_train(train, cfg.per_page, cfg.seed)
    if not train:
        raise UserInputError(f"no train pair in {pairs_path} names a checkpoint of {registry.where} with a card vector")
    work_dir.mkdir(parents=True, exist_ok=True)
    texts = [strip_resource_tags(p.instruction) for p in train]
    pos = np.array([row_of[p.target.checkpoint_version_id] for p in train])
    model_dir = registry.embedder.check()
    both = cfg.towers == "both"
    extra = related = None
    if cfg.lora_prompts:
        use = LoraUse(registry)
        train_all = [p for p in all_pairs if p.split == "train"]
        extra = use.pairs(page_half(train_all, cfg.pages), cfg.per_page, cfg.seed)
        related = [use.related(p) for p in train]
    encoder, fit_info = fit_encoder(
        texts,
        pos,
        cards,
        model_dir,
        work_dir / "run",
        cfg,
        progress,
        texts_of_cards=card_texts(registry, ids) if both else None,
        card_pages=model_ids if both else None,
        extra=extra,
        related=related,
    )
    adapted_cards = card_matrix(registry, encoder)[2] if both else cards
    results = {}
    for split in ("val", "test"):
        held = [p for p in all_pairs if p.split == split]
        held = random.Random(cfg.seed).sample(held, min(eval_limit, len(held)))
        if not held:
            continue
        prompts = [strip_resource_tags(p.instruction) for p in held]
        stock = embed_cached(registry.embedder, prompts, work_dir, progress)
        tuned = encoder.encode(registry.embedder, prompts)
        pages = np.array([p.target.checkpoint_model_id for p in held])
        unseen = np.array([pg not in train_pages for pg in pages])
        for name, mask in (("all", np.ones(len(held), bool)), ("no_train_image", unseen)):
            results[f"{split}/{name}"] = {
                "stock": evaluate(stock[mask], pages[mask], model_ids, cards),
                "adapted": evaluate(tuned[mask], pages[mask], model_ids, adapted_cards),
            }
    encoder.meta = {
        "embedder": registry.embedder.name,
        "towers": cfg.towers,
        "trained_on": Path(pairs_path).name,
        "fold": cfg.pages,
        "registry": identity(registry.path).rsplit("/", 1)[-1],
        "train_pairs": len(train),
        "cards": len(ids),
        "config": cfg.model_dump(),
        **fit_info,
        "results": results,
    }
    encoder.save(out)
    return {"out": str(out), **encoder.meta}


def results_table(meta: dict) -> str:
    lines = ["| split / pairs | n | stock top-1 | stock top-5 | adapted top-1 | adapted top-5 |", "|---" * 6 + "|"]
    for key, r in meta.get("results", {}).items():
        s, a = r["stock"], r["adapted"]
        lines.append(
            f"| {key} | {s['n']} | {s['model_top1']} | {s['model_top5']} | {a['model_top1']} | {a['model_top5']} |"
        )
    return "\n".join(lines)


def dump(meta: dict, path: Path) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8"))
