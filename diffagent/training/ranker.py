"""``diffagent train ranker``: fit the checkpoint ranker on what creators chose.

For each sampled pair the first stage (the registry's hybrid search) runs exactly as the selector runs
it, with the pair's own model page left out of the votes for train pairs (``exclude_page``: the view a
held-out page gets); the ranker features of its top ``POOL`` hits (and of the checkpoints whose cards match
best, ``RetrievalWeights.card_pool``) are recorded with a label: is this the creator's checkpoint version.

The ``card`` feature must look on train pairs as it looks on unseen requests. The shipped card encoder learned
from every train page, so on train pairs its cosine is too good; the train pairs' card feature comes instead
from an encoder trained on the other half of the train pages (``train cards --pages even`` and ``--pages odd``,
then ``train ranker --card-encoder even.npz --card-encoder odd.npz``), and val pairs use the shipped encoder.

A gradient-boosted tree ensemble (scikit-learn, monotone in every signal) is fitted on the train split, checked
on the val split against the first stage's own order, and written as JSON for ``diffagent.agent.ranker``.
Collected features are cached next to the output, keyed by what they were collected from, so refitting does not
search again.

Collecting is the slow part: ~0.03 s a pair on a registry without sentence vectors, ~0.1 s with them.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffagent.agent.cards import CardEncoder
from diffagent.agent.ranker import FEATURES, MONOTONE, POOL, TreeEnsemble, features
from diffagent.agent.retrieve import RetrievalWeights, first_stage
from diffagent.atomic import write_atomic
from diffagent.bench.pairs import Pair, load_pairs
from diffagent.bench.split import page_half
from diffagent.errors import UserInputError
from diffagent.families import parse_base_constraint
from diffagent.prompttext import strip_resource_tags
from diffagent.registry.location import identity
from diffagent.registry.store import Registry
from diffagent.training.data import select_pairs
from diffagent.training.io import write_json_atomic


@dataclass
class Collected:
    """Rows of all pairs stacked; ``group[i]`` is the pair of row i (pairs without hits have no rows)."""

    X: np.ndarray
    y: np.ndarray  # 1 where the row is the creator's checkpoint version
    group: np.ndarray
    model: np.ndarray  # the row's model page
    target_model: np.ndarray  # per pair
    pairs: int

    def save(self, path: Path) -> None:
        write_atomic(
            path,
            lambda tmp: np.savez_compressed(
                tmp,
                X=self.X,
                y=self.y,
                group=self.group,
                model=self.model,
                target_model=self.target_model,
                pairs=np.array([self.pairs]),
            ),
        )

    @classmethod
    def concat(cls, parts: list[Collected]) -> Collected:
        """The pairs of ``parts`` one after another (group numbers shifted)."""
        offsets = np.cumsum([0] + [c.pairs for c in parts[:-1]])
        return cls(
            X=np.vstack([c.X for c in parts]),
            y=np.concatenate([c.y for c in parts]),
            group=np.concatenate([c.group + o for c, o in zip(parts, offsets, strict=True)]),
            model=np.concatenate([c.model for c in parts]),
            target_model=np.concatenate([c.target_model for c in parts]),
            pairs=sum(c.pairs for c in parts),
        )

    @classmethod
    def load(cls, path: Path) -> Collected:
        with np.load(path) as z:
            return cls(
                X=z["X"],
                y=z["y"],
                group=z["group"],
                model=z["model"],
                target_model=z["target_model"],
                pairs=int(z["pairs"][0]),
            )


def collect(
    registry: Registry,
    pairs: list[Pair],
    *,
    leave_page_out: bool,
    weights: RetrievalWeights | None = None,
    card: CardEncoder | None = None,
    progress: bool = False,
) -> Collected:
    from tqdm import tqdm

    X, y, group, model = [], [], [], []
    base = parse_base_constraint("any")
    for j, pair in enumerate(tqdm(pairs, desc="searching", disable=not progress, leave=False)):
        hits = first_stage(
            registry,
            strip_resource_tags(pair.instruction),
            base=base,
            limit=POOL,
            weights=weights,
            exclude_page=pair.page_model_id if leave_page_out else None,
            card=card,
        )
        if not hits:
            continue
        X.append(features(hits))
        y += [h.version.id == pair.target.checkpoint_version_id for h in hits]
        group += [j] * len(hits)
        model += [h.version.model_id for h in hits]
    return Collected(
        X=np.vstack(X) if X else np.zeros((0, len(FEATURES))),
        y=np.asarray(y, dtype=np.int8),
        group=np.asarray(group, dtype=np.int64),
        model=np.asarray(model, dtype=np.int64),
        target_model=np.asarray([p.target.checkpoint_model_id for p in pairs], dtype=np.int64),
        pairs=len(pairs),
    )


def agreement(data: Collected, scores: np.ndarray) -> dict[str, float]:
    """Checkpoint top-1/top-5 (version and model page) when each pair's rows are ordered by ``scores``
    (ties keep the first stage's order); pairs without rows count as misses."""
    hits = {"top1": 0, "top5": 0, "model_top1": 0, "model_top5": 0}
    starts = np.flatnonzero(np.r_[True, data.group[1:] != data.group[:-1]]) if len(data.group) else []
    ends = [*starts[1:], len(data.group)]
    for a, b in zip(starts, ends):
        order = a + np.argsort(-scores[a:b], kind="stable")
        hits["top1"] += bool(data.y[order[0]])
        hits["top5"] += bool(data.y[order[:5]].any())
        pages = list(dict.fromkeys(data.model[order].tolist()))
        target = data.target_model[data.group[a]]
        hits["model_top1"] += int(pages[0] == target)
        hits["model_top5"] += int(target in pages[:5])
    return {k: round(v / max(data.pairs, 1), 4) for k, v in hits.items()}


def fit(
    data: Collected, *, seed: int = 0, max_iter: int = 200, learning_rate: float = 0.05, max_leaf_nodes: int = 15
) -> tuple[TreeEnsemble, object]:
    """A monotone gradient-boosted classifier of "is the creator's checkpoint" over the rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    if not data.y.any():
        raise UserInputError(
            "no train pair had its creator's checkpoint among the searched hits; use more "
            "pairs or check that the registry holds the pairs' checkpoints"
        )
    clf = HistGradientBoostingClassifier(
        learning_rate=learning_rate,
        max_iter=max_iter,
        max_leaf_nodes=max_leaf_nodes,
        monotonic_cst=list(MONOTONE),
        early_stopping=False,
        random_state=seed,
    )
    clf.fit(data.X, data.y)
    return TreeEnsemble.from_sklearn(clf, FEATURES), clf


def _cached(
    registry: Registry,
    pairs_path: Path,
    split: str,
    limit: int,
    seed: int,
    cache_dir: Path,
    progress: bool,
    *,
    card: CardEncoder | None,
    pages: str,
    weights: RetrievalWeights,
) -> Collected:
    key = {
        "pairs": str(Path(pairs_path).resolve()),
        "registry": identity(registry.path),
        "registry_state": registry.fingerprint(),  # a re-imported registry gives other features
        "allow_nsfw": registry.allow_nsfw,
        "split": split,
        "limit": limit,
        "seed": seed,
        "features": list(FEATURES),
        "pool": POOL,
        "card": card.digest() if card else None,
        "pages": pages,
        "card_pool": weights.card_pool,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"ranker-features-{split}-{digest}.npz"
    if path.is_file():
        return Collected.load(path)
    pairs = page_half(list(load_pairs(pairs_path, splits={split})), pages)
    pairs = select_pairs(pairs, limit=limit, seed=seed, dedupe=False)
    if not pairs:
        raise UserInputError(f"no {split} pairs in {pairs_path}; build them with `diffagent bench build`")
    data = collect(registry, pairs, leave_page_out=split == "train", weights=weights, card=card, progress=progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data.save(path)
    return data


def fold_half(card: CardEncoder) -> str:
    """The train pages whose pairs a fold encoder scores: the half it was not trained on (its ``fold``)."""
    trained_on = card.meta.get("fold")
    if trained_on not in ("even", "odd"):
        raise UserInputError(
            f"the card encoder was trained on {trained_on or 'all'} train pages; the ranker needs one "
            "trained on half of them (`diffagent train cards --pages even`), whose cosine on the "
            "other half looks as it does on new requests"
        )
    return "odd" if trained_on == "even" else "even"


def train_ranker(
    registry: Registry,
    pairs_path: Path,
    out: Path,
    *,
    work_dir: Path,
    limit: int = 14000,
    val_limit: int = 2000,
    seed: int = 0,
    max_iter: int = 200,
    progress: bool = False,
    card_folds: list[CardEncoder] | None = None,
    card_val: CardEncoder | None = None,
    weights: RetrievalWeights | None = None,
) -> dict:
    """Collect (or reuse, from ``work_dir``) features, fit, compare with the first stage on val, and write
    the model to ``out`` and a report beside it.

    ``card_folds``: card encoders each trained on one half of the train pages (``train cards --pages even`` /
    ``odd``); each gives the card feature of ``limit`` train pairs from the other half. ``card_val`` gives the val
    pairs' (the shipped encoder). Without folds the ranker learns from ``limit`` pairs of every train page with the
    card feature 0, as on a registry without sentence vectors."""
    w = weights or RetrievalWeights()
    t0 = time.perf_counter()
    cache = Path(work_dir)
    folds = [(fold_half(c), c) for c in card_folds or []] or [("all", None)]
    train = Collected.concat(
        [
            _cached(registry, pairs_path, "train", limit, seed, cache, progress, card=card, pages=pages, weights=w)
            for pages, card in folds
        ]
    )
    val = _cached(registry, pairs_path, "val", val_limit, seed, cache, progress, card=card_val, pages="all", weights=w)
    t1 = time.perf_counter()
    model, _ = fit(train, seed=seed, max_iter=max_iter)
    first_stage_order = -np.arange(len(val.group), dtype=np.float64)  # rows are stored in search order
    card = val.X[:, FEATURES.index("card")]
    report = {
        "registry": registry.where,
        "pairs": str(pairs_path),
        "train_pairs": train.pairs,
        "train_pages": [pages for pages, _ in folds],
        "card_val": "given" if card_val else None,
        "card_pool": w.card_pool,
        "train_rows": int(len(train.y)),
        "train_positives": int(train.y.sum()),
        "val_pairs": val.pairs,
        "val_first_stage": agreement(val, first_stage_order),
        "val_ranker": agreement(val, model.raw(val.X)),
        f"val_ranker_plus_{w.card_ranked:g}_card": agreement(val, model.raw(val.X) + w.card_ranked * card),
        "collect_s": round(t1 - t0, 1),
        "fit_s": round(time.perf_counter() - t1, 1),
        "trees": len(model.roots),
        "seed": seed,
    }
    model = TreeEnsemble(**{**model.__dict__, "meta": {"trained_on": report}})
    write_json_atomic(Path(out), model.to_json(), indent=None)
    write_json_atomic(Path(out).with_suffix(".report.json"), report)
    return report
