"""Retrieval: the short list of checkpoints and LoRAs the LLM chooses from (and the whole decision
in retrieval-only mode).

Checkpoints are ranked by the registry's hybrid search, which includes a vote of the creators' sample
prompts most similar to the request ("models whose users wrote prompts like this one") and of the
checkpoints that the authors of add-ons named by trigger word use; a learned ranker
(``diffagent.agent.ranker``) then reorders the search's top hits. LoRAs must match
the checkpoint's ecosystem; those creators used with the checkpoint get a boost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from diffagent.agent.ranker import POOL, TreeEnsemble, applies, rerank
from diffagent.families import RENDERABLE, ecosystem_of
from diffagent.registry.store import Registry, VersionInfo


@dataclass
class Candidate:
    version: VersionInfo
    score: float
    signals: dict[str, float] = field(default_factory=dict)


@dataclass
class RetrievalWeights:
    """Fusion weights, tuned on the val split (checkpoint top-1 / recall of the shortlist)."""

    knn: float = 1.0
    creators: float = 0.5
    lora_search: float = 0.3
    lora_knn: float = 1.0
    lora_trigger: float = 1.0
    lora_cooccurrence: float = 0.2
    #: retrieval-only mode adds a LoRA when its trigger words are in the prompt or half the similar
    #: creator prompts used it (measured on the val split: precision 0.07, recall 0.19 vs creators)
    lora_trigger_min: float = 0.65
    lora_knn_min: float = 0.5

    def confident(self, c: Candidate) -> bool:
        return c.signals.get("trigger", 0.0) >= self.lora_trigger_min or c.signals.get("knn", 0.0) >= self.lora_knn_min


def first_stage(registry: Registry, prompt: str, *, base: set[str] | None, limit: int,
                weights: RetrievalWeights | None = None, exclude_page: int | None = None) -> list:
    """The registry's hybrid search over renderable checkpoints: the hits a ranker reorders."""
    w = weights or RetrievalWeights()
    ecosystems = (base or RENDERABLE) & RENDERABLE
    return registry.search(prompt, types=["checkpoint"], base=ecosystems, limit=limit,
                           weights={"knn": w.knn, "creators": w.creators}, exclude_page=exclude_page)


def retrieve_checkpoints(registry: Registry, prompt: str, *, base: set[str] | None, k: int,
                         weights: RetrievalWeights | None = None, exclude_page: int | None = None,
                         ranker: TreeEnsemble | None = None) -> list[Candidate]:
    """The ``k`` best checkpoints for ``prompt``. ``exclude_page`` hides one model page's sample images
    (training examples see the registry as a held-out benchmark page does).

    With a ``ranker`` the first stage's top ``ranker.POOL`` hits are reordered by it (when creators'
    votes reached them, see ``ranker.applies``), and a candidate's score is the ranker's probability
    that creators would choose it; otherwise the score is the first stage's weighted sum of signals."""
    hits = first_stage(registry, prompt, base=base, limit=max(POOL if ranker else 4 * k, k, 40), weights=weights,
                       exclude_page=exclude_page)
    if ranker is not None and applies(hits):
        return [Candidate(h.version, 1.0 / (1.0 + math.exp(-raw)), {**h.signals, "ranker": raw})
                for h, raw in rerank(ranker, hits)[:k]]
    cands = {h.version.id: Candidate(h.version, h.score, dict(h.signals)) for h in hits}
    ranked = sorted(cands.values(), key=lambda c: (-c.score, -c.version.downloads, c.version.id))
    return ranked[:k]


def retrieve_loras(registry: Registry, prompt: str, checkpoint: VersionInfo, *, k: int,
                   weights: RetrievalWeights | None = None, exclude_page: int | None = None) -> list[Candidate]:
    """LoRAs compatible with ``checkpoint`` for ``prompt`` (best first): what creators used in similar
    prompts, what they used with this checkpoint, and what the registry text search finds."""
    if k <= 0:
        return []
    w = weights or RetrievalWeights()
    eco = ecosystem_of(checkpoint.family)
    cands: dict[int, Candidate] = {}
    for h in registry.search(prompt, types=["lora"], base={eco}, limit=max(3 * k, 20),
                             weights={"knn": 0.0, "creators": 0.0}):
        cands[h.version.id] = Candidate(h.version, w.lora_search * h.score, {"search": h.score})
    votes = registry.lora_neighbours(prompt, exclude_page=exclude_page)
    triggers = registry.trigger_matches(prompt)
    missing = [v for v in {**votes, **triggers} if v not in cands]
    for vid, info in registry.versions(missing).items():
        if info.type in ("lora", "locon") and ecosystem_of(info.family) == eco and (
            registry.allow_nsfw or not info.nsfw
        ):
            cands[vid] = Candidate(info, 0.0, {"search": 0.0})
    usage = registry.usage(checkpoint.id)
    co = (usage.loras if usage else {}) or {}
    total = max((v["count"] for v in co.values()), default=0)
    for vid, c in cands.items():
        used = co.get(str(vid))
        c.signals["knn"] = votes.get(vid, 0.0)
        c.signals["trigger"] = triggers.get(vid, 0.0)
        c.signals["cooccurrence"] = (used["count"] / total) if used and total else 0.0
        c.score += (w.lora_knn * c.signals["knn"] + w.lora_trigger * c.signals["trigger"]
                    + w.lora_cooccurrence * c.signals["cooccurrence"])
    out = sorted(cands.values(), key=lambda c: (-c.score, c.version.id))
    return out[:k]
