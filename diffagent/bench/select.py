"""``bench select``: how well each method reproduces what real creators chose.

Methods: ``popularity`` (most downloaded checkpoints), ``knn`` (TF-IDF nearest neighbours over the
training prompts, voting for their checkpoints), ``retrieval`` (the selector without the LLM) and
``llm`` (the full selector). Each produces a ranked checkpoint list and a full ``ApiCall``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffagent.apicall import ApiCall
from diffagent.bench.pairs import Pair, creator_loras
from diffagent.families import compatible
from diffagent.registry.store import Registry

METHODS = ("popularity", "knn", "retrieval", "llm")


@dataclass
class Prediction:
    ranked: list[int]  # checkpoint version ids, best first
    call: ApiCall | None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Scores:
    n: int = 0
    top1: int = 0
    top5: int = 0
    model_top1: int = 0
    model_top5: int = 0
    lora_tp: int = 0
    lora_pred: int = 0
    lora_gt: int = 0
    #: the same with the LoRA whose own page shows the image counted as used (``pairs.creator_loras``)
    showcase_tp: int = 0
    showcase_gt: int = 0
    args: Counter = field(default_factory=Counter)
    args_n: int = 0
    hallucinated_ids: int = 0
    mismatched: int = 0
    invalid: int = 0
    latencies: list[float] = field(default_factory=list)
    chosen: Counter = field(default_factory=Counter)
    #: pairs whose checkpoint's page has no train-split image: only the model's card can lead to it
    unseen: int = 0
    unseen_model_top1: int = 0
    unseen_model_top5: int = 0

    def row(self) -> dict:
        p = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
        lat = sorted(self.latencies)
        return {
            "n": self.n,
            "checkpoint_top1": p(self.top1, self.n),
            "checkpoint_top5": p(self.top5, self.n),
            "model_top1": p(self.model_top1, self.n),
            "model_top5": p(self.model_top5, self.n),
            "lora_precision": p(self.lora_tp, self.lora_pred),
            "lora_recall": p(self.lora_tp, self.lora_gt),
            "lora_precision_showcase": p(self.showcase_tp, self.lora_pred),
            "lora_recall_showcase": p(self.showcase_tp, self.showcase_gt),
            **{f"arg_{k}": p(self.args[k], self.args_n) for k in ("sampler", "steps", "cfg", "size", "clip_skip")},
            "hallucinated_ids": self.hallucinated_ids,
            "lora_base_mismatch": self.mismatched,
            "invalid_calls": self.invalid,
            "hallucination_rate": p(self.hallucinated_ids + self.mismatched + self.invalid, self.n),
            "distinct_checkpoints": len(self.chosen),
            "no_train_image_n": self.unseen,
            "no_train_image_model_top1": p(self.unseen_model_top1, self.unseen),
            "no_train_image_model_top5": p(self.unseen_model_top5, self.unseen),
            "latency_p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
            "latency_p95_ms": round(1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1) if lat else None,
        }


class KnnBaseline:
    """TF-IDF nearest neighbours over training instructions; neighbours vote for their checkpoint."""

    def __init__(self, train: list[Pair], k: int = 20):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.k = k
        self.vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2), max_features=200_000)
        self.matrix = self.vectorizer.fit_transform([p.instruction for p in train])
        self.labels = np.array([p.target.checkpoint_version_id for p in train])

    def rank(self, instruction: str) -> list[int]:
        sims = (self.matrix @ self.vectorizer.transform([instruction]).T).toarray().ravel()
        top = np.argsort(-sims)[: self.k]
        votes: dict[int, float] = defaultdict(float)
        for i in top:
            if sims[i] > 0:
                votes[int(self.labels[i])] += float(sims[i])
        return [v for v, _ in sorted(votes.items(), key=lambda x: -x[1])]


def evaluate(
    pairs: list[Pair],
    predict: Callable[[Pair], Prediction],
    registry: Registry,
    lora_index: dict[str, int],
    progress: bool = False,
    train_pages: set[int] | None = None,
    lora_ids: frozenset[int] = frozenset(),
) -> Scores:
    """Scores of ``predict`` on ``pairs``; with ``train_pages`` (the checkpoint pages train-split images show),
    the pairs whose checkpoint page is not among them are also scored apart."""
    from tqdm import tqdm

    model_of: dict[int, int] = {}
    s = Scores()
    for pair in tqdm(pairs, disable=not progress, desc="evaluating", leave=False):
        t = time.perf_counter()
        try:
            pred = predict(pair)
        except Exception as e:  # an invalid call counts against the method, it does not stop the benchmark
            pred = Prediction(ranked=[], call=None, error=f"{type(e).__name__}: {e}")
        pred.seconds = pred.seconds or time.perf_counter() - t
        s.n += 1
        s.latencies.append(pred.seconds)
        tgt = pair.target
        if pred.error or pred.call is None:
            s.invalid += 1
            continue
        ranked = pred.ranked
        s.top1 += bool(ranked and ranked[0] == tgt.checkpoint_version_id)
        s.top5 += tgt.checkpoint_version_id in ranked[:5]
        models = _models(ranked, registry, model_of)
        s.model_top1 += bool(models and models[0] == tgt.checkpoint_model_id)
        s.model_top5 += tgt.checkpoint_model_id in models[:5]
        if train_pages is not None and tgt.checkpoint_model_id not in train_pages:
            s.unseen += 1
            s.unseen_model_top1 += bool(models and models[0] == tgt.checkpoint_model_id)
            s.unseen_model_top5 += tgt.checkpoint_model_id in models[:5]
        call = pred.call
        s.chosen[call.checkpoint.id] += 1
        ids = [call.checkpoint.id, *(lo.id for lo in call.loras)]
        known = registry.versions(ids)
        s.hallucinated_ids += sum(1 for i in ids if i not in known)
        if call.checkpoint.id in known:
            fam = known[call.checkpoint.id].family
            s.mismatched += sum(1 for lo in call.loras if lo.id in known and not compatible(fam, known[lo.id].family))
        gt_loras = creator_loras(pair, lora_index)
        pred_loras = {lo.id for lo in call.loras}
        s.lora_tp += len(gt_loras & pred_loras)
        s.lora_pred += len(pred_loras)
        s.lora_gt += len(gt_loras)
        shown = creator_loras(pair, lora_index, lora_ids)
        s.showcase_tp += len(shown & pred_loras)
        s.showcase_gt += len(shown)
        s.args_n += 1
        s.args["sampler"] += tgt.sampler is not None and call.sampler == tgt.sampler
        s.args["steps"] += tgt.steps is not None and abs(call.steps - tgt.steps) <= 5
        s.args["cfg"] += tgt.cfg_scale is not None and abs(call.cfg_scale - tgt.cfg_scale) <= 1
        s.args["size"] += (call.width, call.height) == (tgt.width, tgt.height)
        s.args["clip_skip"] += call.clip_skip == (tgt.clip_skip or 1)
    return s


def predictor(
    method: str, registry: Registry, settings, *, max_loras: int, train_pairs: Path | None = None
) -> Callable[[Pair], Prediction]:
    """The predictor of one method: ``popularity``, ``knn`` (TF-IDF over ``train_pairs``' prompts), or a selector
    mode (``retrieval``, ``llm``) run as ``select_t2i_api`` runs it."""
    from diffagent.agent.options import SelectOptions
    from diffagent.agent.rebuild import build_call
    from diffagent.agent.selector import Selector
    from diffagent.bench.pairs import load_pairs

    def from_ranking(ranked: list[int]) -> Prediction:
        known = registry.versions(ranked[:5])
        ranked = [r for r in ranked if r in known] or registry.popular(types=["checkpoint"], limit=5)
        info = known.get(ranked[0]) or registry.version(ranked[0], with_files=False)
        return Prediction(ranked=ranked, call=build_call("x", info, registry.usage(info.id), [], seed=0))

    if method == "popularity":
        # the most downloaded version of each of the most downloaded checkpoint pages
        ids = registry.popular(types=["checkpoint"], limit=200)
        infos = registry.versions(ids)
        pages: dict[int, int] = {}
        for v in ids:
            pages.setdefault(infos[v].model_id, v)
        fixed = from_ranking(list(pages.values())[:20])
        return lambda p: Prediction(fixed.ranked, fixed.call, seconds=1e-6)
    if method == "knn":
        if train_pairs is None:
            raise ValueError("the knn baseline needs train pairs")
        knn = KnnBaseline(list(load_pairs(train_pairs, splits={"train"})))
        return lambda p: from_ranking(knn.rank(p.instruction) or [])
    selector = Selector(registry, settings.model_copy(update={"selector": method}))
    selector.warm()
    options = SelectOptions(base="any", max_loras=max_loras, n_candidates=5, seed=0)

    def predict(p: Pair) -> Prediction:
        t = time.perf_counter()
        call = selector.select_many(p.instruction, options).calls[0]
        ranked = [call.checkpoint.id] + [a.checkpoint.id for a in call.alternatives]
        return Prediction(ranked=ranked, call=call, seconds=time.perf_counter() - t)

    return predict


def compare(
    methods: list[str],
    pairs: list[Pair],
    registry: Registry,
    settings,
    *,
    max_loras: int,
    train_pairs: Path | None = None,
    progress: bool = False,
) -> dict[str, dict]:
    """Every method's scores on ``pairs`` (``Scores.row()`` plus its wall time)."""
    from diffagent.bench.pairs import train_checkpoint_pages
    from diffagent.registry.stats import lora_name_index, lora_versions

    with registry.engine.connect() as conn:
        loras, lora_ids = lora_name_index(conn), lora_versions(conn)
    train_pages = train_checkpoint_pages(train_pairs) if train_pairs is not None else None
    results: dict[str, dict] = {}
    for method in methods:
        t0 = time.perf_counter()
        predict = predictor(method, registry, settings, max_loras=max_loras, train_pairs=train_pairs)
        scores = evaluate(
            pairs, predict, registry, loras, progress=progress, train_pages=train_pages or None, lora_ids=lora_ids
        )
        results[method] = scores.row() | {"wall_s": round(time.perf_counter() - t0, 1)}
        if progress:
            print(f"{method}: {json.dumps(results[method])}", file=sys.stderr)
    return results


def _models(ranked: list[int], registry: Registry, model_of: dict[int, int]) -> list[int]:
    """The distinct model pages of a ranked version list, in order (a page counts once, at its best version)."""
    missing = [v for v in ranked if v not in model_of]
    if missing:
        model_of.update({v: info.model_id for v, info in registry.versions(missing).items()})
    return list(dict.fromkeys(model_of[v] for v in ranked if v in model_of))


def markdown_table(results: dict[str, dict]) -> str:
    cols = [
        "n",
        "checkpoint_top1",
        "checkpoint_top5",
        "model_top1",
        "model_top5",
        "lora_precision",
        "lora_recall",
        "lora_precision_showcase",
        "lora_recall_showcase",
        "arg_sampler",
        "arg_steps",
        "arg_cfg",
        "arg_size",
        "arg_clip_skip",
        "hallucination_rate",
        "distinct_checkpoints",
        "no_train_image_n",
        "no_train_image_model_top1",
        "latency_p50_ms",
        "latency_p95_ms",
    ]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, row in results.items():
        cells = [
            "-" if row.get(c) is None else (f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])) for c in cols
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [
        "checkpoint_top1",
        "checkpoint_top5",
        "model_top1",
        "model_top5",
        "lora_recall",
        "arg_sampler",
        "arg_size",
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    x = np.arange(len(metrics))
    width = 0.8 / max(len(results), 1)
    for i, (method, row) in enumerate(results.items()):
        axes[0].bar(x + i * width, [row.get(m) or 0 for m in metrics], width, label=method)
        axes[1].bar(i, row.get("latency_p50_ms") or 0, label=method)
    axes[0].set_xticks(x + width * (len(results) - 1) / 2, metrics, rotation=30, ha="right")
    axes[0].set_ylim(0, 1)
    axes[0].set_title("agreement with creators (test split)")
    axes[0].legend()
    axes[1].set_xticks(range(len(results)), list(results))
    axes[1].set_ylabel("ms")
    axes[1].set_title("latency p50")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def dump(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
