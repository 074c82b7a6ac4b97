"""``diffagent train cards``: fit the card adapter (``agent/cards.py``) on creators' choices.

Data: the train split of ``bench build`` pairs, at most ``per_page`` prompts per model page (popular pages
would otherwise dominate), each paired with the registry's card vector of the checkpoint version the creator
used. Loss: InfoNCE of the adapted prompt vector against *every* checkpoint card in the registry (a full
softmax over a few thousand cards is cheap), so the adapter learns to rank cards, not to separate a batch.
Evaluation on val (and test) pairs at the model-page level, reported separately for pairs whose checkpoint
page has no train-split image: the models only their card can reach.

Costs on two cores: embedding the prompts is the slow part (about 60 prompts/s; cached in ``work_dir``);
fitting 400 steps takes about a minute.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from diffagent.agent.cards import CardAdapter
from diffagent.atomic import write_atomic
from diffagent.bench.pairs import Pair, load_pairs
from diffagent.errors import UserInputError
from diffagent.prompttext import strip_resource_tags
from diffagent.registry.store import Registry


def card_matrix(registry: Registry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(version ids, model page ids, unit card vectors) of every renderable checkpoint with a card vector."""
    idx = registry._load_index()  # noqa: SLF001 - the index is the registry's own matrix of card vectors
    if idx.vec is None:
        raise UserInputError(f"{registry.path} has no sentence vectors; import it without --no-vectors first")
    rows = np.flatnonzero((idx.types == "checkpoint") & idx.renderable & (np.abs(idx.vec).sum(axis=1) > 0))
    ids = idx.ids[rows]
    pages = registry.versions([int(v) for v in ids])
    model_ids = np.array([pages[int(v)].model_id if int(v) in pages else -1 for v in ids], dtype=np.int64)
    return ids, model_ids, np.ascontiguousarray(idx.vec[rows])


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


def embed_cached(embedder, texts: list[str], cache: Path, progress: bool = False) -> np.ndarray:
    """Sentence vectors of ``texts``, cached by a digest of the texts and the embedder."""
    key = hashlib.sha256(("\n".join(texts) + "\0" + embedder.name).encode()).hexdigest()[:16]
    path = cache / f"prompts-{key}.npy"
    if path.is_file():
        return np.load(path)
    vecs = embedder.encode(texts, batch_size=128, show_progress=progress).astype(np.float32)
    write_atomic(path, lambda tmp: np.save(tmp, vecs))
    return vecs


def fit(q: np.ndarray, pos: np.ndarray, cards: np.ndarray, *, steps: int = 400, batch: int = 64, lr: float = 2e-3,
        tau: float = 0.05, weight_decay: float = 1e-4, seed: int = 0, progress: bool = False) -> np.ndarray:
    """The residual map ``W`` minimising InfoNCE of ``normalize(q + qW)`` against all ``cards`` (``pos``: row of
    each prompt's card)."""
    import torch

    torch.manual_seed(seed)
    qt, ct, pt = torch.from_numpy(q), torch.from_numpy(cards), torch.from_numpy(pos.astype(np.int64))
    w = torch.zeros(q.shape[1], q.shape[1], requires_grad=True)
    opt = torch.optim.AdamW([w], lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        b = torch.randint(0, len(qt), (batch,), generator=gen)
        z = qt[b] + qt[b] @ w
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        loss = torch.nn.functional.cross_entropy(z @ ct.T / tau, pt[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress and (step + 1) % 50 == 0:
            print(f"step {step + 1}/{steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return w.detach().numpy()


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


def train_cards(registry: Registry, pairs_path: Path, out: Path, *, work_dir: Path, per_page: int = 15,
                steps: int = 400, eval_limit: int = 2000, seed: int = 0, progress: bool = False) -> dict:
    ids, model_ids, cards = card_matrix(registry)
    row_of = {int(v): i for i, v in enumerate(ids)}
    all_pairs = list(load_pairs(pairs_path, splits={"train", "val", "test"}))
    train = [p for p in all_pairs if p.split == "train" and p.target.checkpoint_version_id in row_of]
    train_pages = {p.target.checkpoint_model_id for p in train}
    train = sample_train(train, per_page, seed)
    if not train:
        raise UserInputError(f"no train pair in {pairs_path} names a checkpoint of {registry.path} with a card vector")
    work_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    q = embed_cached(registry.embedder, [strip_resource_tags(p.instruction) for p in train], work_dir, progress)
    pos = np.array([row_of[p.target.checkpoint_version_id] for p in train])
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    w = fit(q, pos, cards, steps=steps, seed=seed, progress=progress)
    fit_s = time.perf_counter() - t0
    adapter = CardAdapter(w)
    results = {}
    for split in ("val", "test"):
        rng = random.Random(seed)
        held = [p for p in all_pairs if p.split == split]
        held = rng.sample(held, min(eval_limit, len(held)))
        if not held:
            continue
        qe = embed_cached(registry.embedder, [strip_resource_tags(p.instruction) for p in held], work_dir, progress)
        pages = np.array([p.target.checkpoint_model_id for p in held])
        unseen = np.array([pg not in train_pages for pg in pages])
        for name, mask in (("all", np.ones(len(held), bool)), ("no_train_image", unseen)):
            results[f"{split}/{name}"] = {"stock": evaluate(qe[mask], pages[mask], model_ids, cards),
                                          "adapted": evaluate(adapter.transform(qe[mask]), pages[mask], model_ids,
                                                              cards)}
    adapter.meta = {"embedder": registry.embedder.name, "trained_on": str(pairs_path), "registry": str(registry.path),
                    "train_pairs": len(train), "per_page": per_page, "steps": steps, "cards": len(ids),
                    "embed_seconds": round(embed_s, 1), "fit_seconds": round(fit_s, 1), "results": results}
    adapter.save(out)
    return {"out": str(out), **adapter.meta}


def results_table(meta: dict) -> str:
    lines = ["| split / pairs | n | stock top-1 | stock top-5 | adapted top-1 | adapted top-5 |", "|---" * 6 + "|"]
    for key, r in meta.get("results", {}).items():
        s, a = r["stock"], r["adapted"]
        lines.append(f"| {key} | {s['n']} | {s['model_top1']} | {s['model_top5']} "
                     f"| {a['model_top1']} | {a['model_top5']} |")
    return "\n".join(lines)


def dump(meta: dict, path: Path) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8"))
