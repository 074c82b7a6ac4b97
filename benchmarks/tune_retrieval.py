"""Tune the second stage of checkpoint retrieval on creators' pairs (val), from cached first-stage hits.

The first stage (the registry's hybrid search) is the slow part; it runs once per pair and its hits are pickled
to ``--cache``. Each setting of ``RetrievalWeights`` is then scored by re-ranking the cached hits with
``agent.retrieve.second_stage``, what the selector runs after its search: checkpoint top-1 / top-5 and model-page
top-1 / top-5, overall, for natural-sentence prompts and for pairs whose checkpoint no creator prompt in the registry
reaches ("unvoted": only its card can find it). It also says where the pairs whose checkpoint page has no train image
are lost (``unseen_ceiling``).

With ``--card-encoder`` each cached hit gets the ``card`` signal of that encoder (its cosine with the hit's card
vector, as ``Registry.search`` computes it) and the settings weighing it on the ranker's logit are added.

    python benchmarks/tune_retrieval.py --pairs pairs.jsonl.gz --registry big.db --split val --limit 1000 \
        [--card-encoder diffagent/agent/cards/card_encoder.npz [--pooled]] [--ranker ranker.json]
"""

from __future__ import annotations

import argparse
import pickle
import random
from dataclasses import replace
from pathlib import Path

import numpy as np

from diffagent.agent.cards import CardEncoder
from diffagent.agent.ranker import load_setting
from diffagent.agent.retrieve import RetrievalWeights, first_stage, pool_size, request_intent, second_stage
from diffagent.bench.pairs import load_pairs, train_checkpoint_pages
from diffagent.families import parse_base_constraint
from diffagent.prompttext import strip_resource_tags
from diffagent.registry.store import Registry

SETTINGS = {
    "no kind term": None,
    "shipped": {},
    "acceptable 0.25 everywhere": {"acceptable_natural": 0.25},
    "acceptable 1.0 everywhere": {"acceptable_tags": 1.0},
    "acceptable natural 0.5": {"acceptable_natural": 0.5},
    "acceptable natural 0.75": {"acceptable_natural": 0.75},
    "natural 1.5": {"kind_natural": 1.5, "kind_fused_natural": 0.5},
    "natural 6": {"kind_natural": 6.0, "kind_fused_natural": 2.0},
    "tags 0": {"kind_tags": 0.0, "kind_fused_tags": 0.0},
    "tags 0.5": {"kind_tags": 0.5, "kind_fused_tags": 0.15},
    "no bonuses": {"primary_bonus": 0.0, "family_bonus": 0.0},
}
CARD_SETTINGS = {
    f"card on the ranker's logit x {w:g}": {"card_ranked": w}
    for w in (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 32.0)
} | {
    f"card x {w:g}, unvoted penalty {p:g}": {"card_ranked": w, "unvoted_penalty": p}
    for w in (10.0, 15.0, 20.0)
    for p in (0.0, 1.0, 1.5, 2.0)
}


def add_card_signal(reg: Registry, rows: list, encoder: CardEncoder) -> None:
    """Give every cached hit the ``card`` signal (clipped cosine of the request's card vector with the hit's card
    vector: the stock one, or the encoder's own for a two-tower encoder)."""
    idx = reg._load_index()  # noqa: SLF001 - the registry's own card vectors
    cards = reg.card_vectors(encoder)
    q = encoder.encode(reg.embedder, [r[0] for r in rows])
    for (_request, _vid, _mid, hits, _intent), v in zip(rows, q, strict=True):
        for h in hits:
            h.signals["card"] = float(np.clip(cards[idx.pos[h.version.id]] @ v, 0, 1))


def unseen_ceiling(rows: list, train_pages: set[int]) -> str:
    """Where the pairs whose checkpoint page no train image shows are lost: the share whose page is among the cached
    hits at all (the ranker cannot pick what the first stage missed), and whose page the best card among them is
    (the card alone over the registry's checkpoints: the card pool holds the registry's best cards)."""
    unseen = [(mid, hits) for _request, _vid, mid, hits, _intent in rows if mid not in train_pages]
    if not unseen:
        return "no pair's checkpoint page lacks a train image"
    n = len(unseen)
    reached = sum(any(h.version.model_id == mid for h in hits) for mid, hits in unseen)
    card_best = sum(
        bool(hits) and max(hits, key=lambda h: h.signals.get("card", 0.0)).version.model_id == mid
        for mid, hits in unseen
    )
    return (
        f"{n} pairs whose checkpoint page has no train image: the page is among the hits for {reached / n:.3f}, "
        f"the best card among them is the page for {card_best / n:.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/diffagent-tune-hits.pkl"))
    ap.add_argument("--card-encoder", type=Path, default=None, help="add the card signal of this encoder")
    ap.add_argument(
        "--pooled",
        action="store_true",
        help="search with the card encoder (its best cards join each pool, as the selector does) instead of adding "
        "its signal to hits searched without it",
    )
    ap.add_argument("--ranker", default="default", help="a ranker JSON (default: the bundled one)")
    args = ap.parse_args()

    ranker = load_setting(args.ranker)
    reg = Registry.open(args.registry, allow_nsfw=True)
    card = CardEncoder.load(args.card_encoder) if args.card_encoder else None
    if args.cache.is_file():
        rows = pickle.loads(args.cache.read_bytes())
    else:
        pairs = list(load_pairs(args.pairs, splits={args.split}))
        pairs = random.Random(args.seed).sample(pairs, min(args.limit, len(pairs)))
        rows = []
        for p in pairs:
            request = strip_resource_tags(p.instruction)
            intent = request_intent(reg, request)
            hits = first_stage(
                reg,
                request,
                base=parse_base_constraint("any"),
                limit=pool_size(6, ranker, intent),
                card=card if args.pooled else None,
            )
            rows.append((request, p.target.checkpoint_version_id, p.target.checkpoint_model_id, hits, intent))
        args.cache.write_bytes(pickle.dumps(rows))
    settings = dict(SETTINGS)
    if card is not None:
        if not args.pooled:
            add_card_signal(reg, rows, card)
        settings = {"shipped": {}, **CARD_SETTINGS}
    print(unseen_ceiling(rows, train_checkpoint_pages(args.pairs)))
    unvoted = [not reg.has_creator_prompts(r[1]) for r in rows]
    n_nat, n_unv = sum(r[4].natural for r in rows), sum(unvoted)
    print(f"{len(rows)} {args.split} pairs ({n_nat} natural sentences, {n_unv} unvoted checkpoints)")
    print(
        "| setting | top-1 | top-5 | model top-1 | model top-5 | natural top-1 | unvoted model top-1 |\n"
        "|---|---|---|---|---|---|---|"
    )
    for name, over in settings.items():
        w = replace(RetrievalWeights(), **(over or {}))
        t1 = t5 = m1 = m5 = nat = unv = 0
        for (request, vid, mid, hits, cached_intent), no_votes in zip(rows, unvoted, strict=True):
            intent = cached_intent if over is not None else None
            ranked = second_stage(reg, request, hits, k=60, weights=w, ranker=ranker, intent=intent)
            ids = [c.version.id for c in ranked]
            pages = list(dict.fromkeys(c.version.model_id for c in ranked))
            t1 += ids[:1] == [vid]
            t5 += vid in ids[:5]
            m1 += pages[:1] == [mid]
            m5 += mid in pages[:5]
            nat += ids[:1] == [vid] and cached_intent.natural
            unv += pages[:1] == [mid] and no_votes
        n = len(rows)
        print(
            f"| {name} | {t1 / n:.3f} | {t5 / n:.3f} | {m1 / n:.3f} | {m5 / n:.3f} | {nat / max(n_nat, 1):.3f} "
            f"| {unv / max(n_unv, 1):.3f} |"
        )


if __name__ == "__main__":
    main()
