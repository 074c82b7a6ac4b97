"""Second-stage ranking of retrieved checkpoints by a small learned tree ensemble.

The registry's hybrid search (first stage) sums its signals with fixed weights. A gradient-boosted
tree ensemble, trained on what real creators chose (``diffagent train ranker``), reorders its top
``POOL`` hits from the same signals plus a few features of the hit list. On the val split a logistic
regression over these features gained nothing over the fixed weights; the trees gain 1.4 points of
top-1 and 2 of top-5 (docs/benchmarks.md), so what they add is the non-linear part. The model is plain
JSON: trees as parallel arrays, evaluated here with numpy, so serving needs no scikit-learn and no
pickle. Every signal enters with a monotone-increasing constraint: a stronger signal never lowers a
checkpoint's score.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffagent.errors import UserInputError

#: hits of the first stage that the ranker reorders
POOL = 60
#: the registry's signals (0 when a registry lacks one, e.g. no sentence vectors); ``card`` is the card encoder's
#: cosine (``agent/cards.py``), learned from an encoder that never saw the train pair's page (``train ranker``)
#:
#: ``prompts`` (the request's cosine with the mean of a checkpoint's first sampled creator prompts) is fused by the
#: first stage but is not a ranker feature: a train pair's own image and its page-mates are among those prompts, so
#: on train pairs it is far stronger than on a new request (the creator's checkpoint: 0.68 mean on train, 0.54 on val,
#: where it no longer beats the other hits' 0.55), and trees that learned from it buried every checkpoint without
#: sample prompts. Without it, val 2,000 top-1 0.2725 -> 0.2845 and pages without a train image 0.046 -> 0.094.
SIGNALS = ("prior", "lexical", "semantic", "knn", "creators", "card")
FEATURES = (*SIGNALS, "log_downloads", "page_versions", "newest_of_page")
#: +1: the ensemble may only raise a checkpoint's score as this feature grows
MONOTONE = tuple(1 if f in SIGNALS else 0 for f in FEATURES)
FORMAT = 1
DEFAULT = Path(__file__).parent / "rankers" / "civitai-2023-07.json"


def features(hits) -> np.ndarray:
    """One row per hit (objects with ``.version`` and ``.signals``), columns as in ``FEATURES``.

    ``page_versions`` counts the hit's model page among the hits (several versions of one page
    retrieved together is evidence for the page); ``newest_of_page`` marks the newest of those."""
    per_page = Counter(h.version.model_id for h in hits)
    newest: dict[int, int] = defaultdict(int)
    for h in hits:
        newest[h.version.model_id] = max(newest[h.version.model_id], h.version.id)
    rows = [
        [h.signals.get(s, 0.0) for s in SIGNALS]
        + [
            math.log1p(max(h.version.downloads, 0)),
            per_page[h.version.model_id],
            float(h.version.id == newest[h.version.model_id]),
        ]
        for h in hits
    ]
    return np.asarray(rows, dtype=np.float64).reshape(len(hits), len(FEATURES))


@dataclass(frozen=True)
class TreeEnsemble:
    """Additive trees: ``raw(x) = baseline + sum over trees of the leaf value x reaches``.

    Node arrays of all trees are concatenated; ``roots`` holds each tree's first node. At a split
    node, ``x[feature] <= threshold`` goes to ``left``, otherwise ``right`` (absolute indices)."""

    features: tuple[str, ...]
    baseline: float
    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    leaf: np.ndarray
    meta: dict

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Log-odds that each row is the creators' checkpoint (higher is better)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ValueError(f"expected rows of {len(self.features)} features, got shape {X.shape}")
        if not len(X):
            return np.zeros(0)
        node = np.broadcast_to(self.roots, (len(X), len(self.roots))).copy()
        rows = np.arange(len(X))[:, None]
        while True:
            inner = ~self.leaf[node]
            if not inner.any():
                break
            go_left = X[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
        return self.baseline + self.value[node].sum(axis=1)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "features": list(self.features),
            "baseline": self.baseline,
            "roots": self.roots.tolist(),
            "feature": self.feature.tolist(),
            "threshold": [float(t) for t in self.threshold],
            "left": self.left.tolist(),
            "right": self.right.tolist(),
            "value": [float(v) for v in self.value],
            "leaf": self.leaf.astype(int).tolist(),
            "meta": self.meta,
        }

    def digest(self) -> str:
        """SHA-256 of the trees and features (not ``meta``): what a cache built with this ranker
        records, so a retrained or replaced ranker file invalidates it."""
        body = {k: v for k, v in self.to_json().items() if k != "meta"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_json(cls, data: dict) -> TreeEnsemble:
        if data.get("format") != FORMAT:
            raise UserInputError(
                f"ranker format {data.get('format')!r} is not {FORMAT}; retrain it with `diffagent train ranker`"
            )
        n = len(data["feature"])
        arrays = {k: np.asarray(data[k]) for k in ("feature", "threshold", "left", "right", "value", "leaf")}
        if any(len(a) != n for a in arrays.values()):
            raise UserInputError("ranker file is corrupt: its node arrays differ in length")
        return cls(
            features=tuple(data["features"]),
            baseline=float(data["baseline"]),
            roots=np.asarray(data["roots"], dtype=np.int64),
            feature=arrays["feature"].astype(np.int64),
            threshold=arrays["threshold"].astype(np.float64),
            left=arrays["left"].astype(np.int64),
            right=arrays["right"].astype(np.int64),
            value=arrays["value"].astype(np.float64),
            leaf=arrays["leaf"].astype(bool),
            meta=data.get("meta", {}),
        )

    @classmethod
    def from_sklearn(cls, model, feature_names: tuple[str, ...], meta: dict | None = None) -> TreeEnsemble:
        """Convert a fitted binary ``HistGradientBoostingClassifier`` (numeric features, no NaN)."""
        parts = {k: [] for k in ("feature", "threshold", "left", "right", "value", "leaf")}
        roots = []
        offset = 0
        for (predictor,) in model._predictors:
            nodes = predictor.nodes
            roots.append(offset)
            parts["feature"].append(nodes["feature_idx"].astype(np.int64))
            parts["threshold"].append(nodes["num_threshold"].astype(np.float64))
            parts["left"].append(nodes["left"].astype(np.int64) + offset)
            parts["right"].append(nodes["right"].astype(np.int64) + offset)
            parts["value"].append(nodes["value"].astype(np.float64))
            parts["leaf"].append(nodes["is_leaf"].astype(bool))
            offset += len(nodes)
        cat = {k: np.concatenate(v) for k, v in parts.items()}
        return cls(
            features=tuple(feature_names),
            baseline=float(np.ravel(model._baseline_prediction)[0]),
            roots=np.asarray(roots, dtype=np.int64),
            meta=meta or {},
            **cat,
        )

    @classmethod
    def load(cls, path: Path) -> TreeEnsemble:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserInputError(
                f"ranker file {path} does not exist; train one with `diffagent train ranker` "
                "or set DIFFAGENT_RANKER=none"
            ) from None
        except json.JSONDecodeError as e:
            raise UserInputError(f"ranker file {path} is not JSON ({e}); retrain it") from None
        model = cls.from_json(data)
        if model.features != FEATURES:
            raise UserInputError(
                f"ranker {path} uses features {model.features}, this version computes "
                f"{FEATURES}; retrain it with `diffagent train ranker`"
            )
        return model


_loaded: dict[Path, TreeEnsemble] = {}


def load_setting(value: str | None) -> TreeEnsemble | None:
    """``Settings.ranker`` -> the model: 'default' is the bundled file, 'none' (or empty) disables it.
    Loaded once per path and process."""
    if value is None or value.strip().lower() in ("", "none", "off"):
        return None
    path = DEFAULT if value.strip().lower() == "default" else Path(value).expanduser()
    if path not in _loaded:
        _loaded[path] = TreeEnsemble.load(path)
    return _loaded[path]


def applies(hits) -> bool:
    """The ranker learned from searches in which creators' votes (kNN over sample prompts, add-on
    creators) reached some hit: 99.2 % of its training searches. A search where no hit has a vote (a
    registry without sample images, such as the default one) is outside what it learned, and there it
    falls back to popularity (measured on DrawBench over the default registry: one checkpoint for 64 %
    of prompts); the first stage's order stands instead."""
    return any(voted(h.signals) for h in hits)


def voted(signals: dict[str, float]) -> bool:
    """Some creator prompt like the request voted for this checkpoint (kNN), or the creators of add-ons it names do."""
    return signals.get("knn", 0.0) > 0 or signals.get("creators", 0.0) > 0


def rerank(model: TreeEnsemble, hits: list) -> list[tuple[object, float]]:
    """``hits`` with their ranker scores (log-odds), best first; ties keep the first stage's order."""
    if not hits:
        return []
    scores = model.raw(features(hits))
    order = np.argsort(-scores, kind="stable")
    return [(hits[i], float(scores[i])) for i in order]
