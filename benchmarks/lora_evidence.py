"""Calibrate the LoRA evidence rule on creators' pairs: precision and recall of each kind of evidence.

For each pair the selector's retrieval picks a checkpoint; the LoRAs retrieved for it are kept when the rule
(``agent/retrieve.lora_evidence``) finds evidence. This prints, for each rule variant and kNN threshold, the
LoRA precision / recall against the LoRAs the creator used (resolved by file name), so the shipped thresholds
are chosen on val, never on test.

    python benchmarks/lora_evidence.py --pairs pairs.jsonl.gz --registry big.db --split val --limit 1000
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace

from diffagent.agent.ranker import load_setting
from diffagent.agent.retrieve import (
    RetrievalWeights,
    lora_evidence,
    request_intent,
    retrieve_checkpoints,
    retrieve_loras,
)
from diffagent.bench.pairs import creator_loras, load_pairs
from diffagent.families import parse_base_constraint
from diffagent.prompttext import strip_resource_tags
from diffagent.registry.stats import lora_name_index, lora_versions
from diffagent.registry.store import Registry

K = 3  # LoRA candidates per request, as the selector retrieves them (selector.LORA_CANDIDATES)
#: the previous release's rule: a trigger-word score of 0.65, or half the similar creators' prompts
OLD_TRIGGER_MIN, OLD_KNN_MIN = 0.65, 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-loras", type=int, default=2)
    args = ap.parse_args()

    reg = Registry.open(args.registry, allow_nsfw=True)
    with reg.engine.connect() as conn:
        names, lora_ids = lora_name_index(conn), lora_versions(conn)
    pairs = list(load_pairs(args.pairs, splits={args.split}))
    random.Random(args.seed).shuffle(pairs)
    pairs = pairs[: args.limit]
    ranker = load_setting("default")
    w = RetrievalWeights()
    rows = []  # (request, LoRAs the metadata names, the same + the LoRA whose page shows the image, candidates)
    for p in pairs:
        request = strip_resource_tags(p.instruction)
        cks = retrieve_checkpoints(
            reg,
            request,
            base=parse_base_constraint("any"),
            k=5,
            weights=w,
            ranker=ranker,
            intent=request_intent(reg, request),
        )
        if not cks:
            continue
        cands = retrieve_loras(reg, request, cks[0].version, k=K, weights=w)
        rows.append((request, creator_loras(p, names), creator_loras(p, names, lora_ids), cands))

    def score(keep) -> tuple[float, float, float, float, int]:
        tp = tp_s = pred = gt_n = gt_s = 0
        for request, gt, shown, cands in rows:
            chosen = set([c.version.id for c in cands if keep(c, request)][: args.max_loras])
            tp, tp_s, pred = tp + len(gt & chosen), tp_s + len(shown & chosen), pred + len(chosen)
            gt_n, gt_s = gt_n + len(gt), gt_s + len(shown)
        return (
            (tp / pred if pred else 0.0),
            (tp / gt_n if gt_n else 0.0),
            (tp_s / pred if pred else 0.0),
            (tp_s / gt_s if gt_s else 0.0),
            pred,
        )

    print(
        f"{len(rows)} {args.split} pairs, {sum(len(r[1]) for r in rows)} LoRAs named by the images' metadata, "
        f"{sum(len(r[2]) for r in rows)} with the LoRA whose page shows the image"
    )
    print(
        "| rule | precision | recall | precision (+ page's LoRA) | recall (+ page's LoRA) | LoRAs added |\n"
        "|---|---|---|---|---|---|"
    )
    old = lambda c, r: c.signals["trigger"] >= OLD_TRIGGER_MIN or c.signals["knn"] >= OLD_KNN_MIN  # noqa: E731
    variants = {
        "before: trigger or kNN >= 0.5 (no evidence rule)": old,
        "trigger only": lambda c, r: c.signals["trigger"] >= OLD_TRIGGER_MIN,
    }
    for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        wt = replace(w, lora_knn_min=t)
        variants[f"evidence rule, kNN >= {t}"] = lambda c, r, wt=wt: lora_evidence(c, r, wt) is not None
    for t in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        wt = replace(w, lora_trigger_use_min=t)
        variants[f"evidence rule, trigger use >= {t}"] = lambda c, r, wt=wt: lora_evidence(c, r, wt) is not None
    why = lambda c, r: lora_evidence(c, r, w)  # noqa: E731
    variants |= {
        "evidence: trigger word only": lambda c, r: why(c, r) == "trigger",
        "evidence: concept only": lambda c, r: why(c, r) == "concept",
        "evidence: creators only": lambda c, r: why(c, r) == "creators",
        "evidence: trigger or creators": lambda c, r: why(c, r) in ("trigger", "creators"),
        "evidence, a trigger only where creators' use is known": lambda c, r: (
            why(c, r) is not None and (why(c, r) != "trigger" or c.signals["trigger_use"] >= 0)
        ),
        "evidence, a trigger with known use >= 0.3": lambda c, r: (
            why(c, r) is not None and (why(c, r) != "trigger" or c.signals["trigger_use"] >= 0.3)
        ),
        "evidence, a trigger with known use >= 0.5": lambda c, r: (
            why(c, r) is not None and (why(c, r) != "trigger" or c.signals["trigger_use"] >= 0.5)
        ),
        "evidence + creators used it with this checkpoint": lambda c, r: (
            why(c, r) is not None and c.signals["cooccurrence"] > 0
        ),
        "evidence + some kNN vote": lambda c, r: why(c, r) is not None and c.signals["knn"] > 0,
        "trigger word + some kNN vote or use with the checkpoint": lambda c, r: (
            why(c, r) == "trigger" and (c.signals["knn"] > 0 or c.signals["cooccurrence"] > 0)
        ),
    }
    for name, keep in variants.items():
        prec, rec, prec_s, rec_s, n = score(keep)
        print(f"| {name} | {prec:.3f} | {rec:.3f} | {prec_s:.3f} | {rec_s:.3f} | {n} |")


if __name__ == "__main__":
    main()
