"""Retrieval: the short list of checkpoints and LoRAs the LLM chooses from (and the whole decision
in retrieval-only mode).

Checkpoints are ranked by the registry's hybrid search, which includes a vote of the creators' sample
prompts most similar to the request ("models whose users wrote prompts like this one") and of the
checkpoints that the authors of add-ons named by trigger word use; a learned ranker
(``diffagent.agent.ranker``) then reorders the search's top hits. LoRAs must match
the checkpoint's ecosystem; those creators used with the checkpoint get a boost.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

from diffagent.agent.cards import CardEncoder
from diffagent.agent.intent import Intent, style_intent
from diffagent.agent.ranker import POOL, TreeEnsemble, applies, rerank, voted
from diffagent.families import RENDERABLE, RENDERER_ECOSYSTEMS, ecosystem_of
from diffagent.registry.info import VersionInfo
from diffagent.registry.kinds import name_phrase
from diffagent.registry.query import contains_words, query_words
from diffagent.registry.store import Registry

_WORDS = re.compile(r"[a-z0-9]+")


def _padded(request: str) -> str:
    """The request lowercased, whitespace collapsed, with a space at each end (for ``contains_words``)."""
    return f" {' '.join(request.lower().split())} "


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
    #: a LoRA is added only on evidence (``lora_evidence``): its trigger words or concepts in the request, or
    #: creators' use of it with this checkpoint for similar prompts (share of the kNN vote, calibrated on val)
    lora_knn_min: float = 0.5
    #: a trigger word is evidence only if creators who typed it used the LoRA at least this often (val 1,000:
    #: 0.05 / 0.1 / 0.2 -> LoRA precision 0.286 / 0.293 / 0.298 at recall 0.328 / 0.328 / 0.321)
    #: (``Registry.trigger_use``; words typed too rarely to tell, or a registry without images, keep the rule)
    lora_trigger_use_min: float = 0.1
    #: how much the request's style intent (``agent/intent.py``) moves a checkpoint, per grade step: on the
    #: ranker's logit, or on the fused score; natural requests vs creators' tag lists
    kind_natural: float = 3.0
    kind_tags: float = 0.25
    kind_fused_natural: float = 1.0
    kind_fused_tags: float = 0.08
    #: among fitting models: the model's strongest kind is the one asked for; an SDXL-architecture model
    #: for a natural request (the better family when the caller did not restrict it)
    primary_bonus: float = 0.5
    family_bonus: float = 0.25
    #: the penalty of an acceptable (or unlabelled) kind, on the scale where a wrong kind costs 2: natural
    #: requests want a good kind; creators' tag lists often name models whose labels say little
    acceptable_natural: float = 0.75
    acceptable_tags: float = 0.25
    #: the card encoder's cosine (``agent/cards.py``): in the fused score, and on the ranker's logit besides the
    #: ranker's own ``card`` feature (for the ranker without that feature, 0 -> 8 moved val top-1 / top-5 0.244 /
    #: 0.382 -> 0.259 / 0.395; with it, the weight was chosen with the pool below)
    card_fused: float = 0.0
    #: with the two-tower encoder (session 14), val 1,000, weight 4 / 10 / 20 on creators' tag lists: top-1 / top-5
    #: 0.269 / 0.420, 0.270 / 0.432, 0.270 / 0.425; pages without a train image 0.096 / 0.105 / 0.128. Natural
    #: requests keep 4: at 20 the card's literal matches sent "a photo of a computer keyboard" to "Stylized RPG game
    #: icons" (fit held-out on the dump: wrong kind 3.0 -> 3.8 %, mean fit 1.90 -> 1.82)
    card_ranked: float = 20.0
    card_ranked_natural: float = 4.0
    #: the checkpoints whose cards match the request best join the ranker's pool (``Registry.search`` card_pool): a
    #: model no creator's image shows is rarely among the first stage's 60 (7 % of val pairs whose checkpoint page
    #: has no train image; 16 % with 10 card hits). With the ranker trained on the ``card`` feature, val 2,000:
    #: pool 0 / 10 / 20 / 30 and card_ranked 0 / 2 / 4 -> top-1 / top-5 0.271 / 0.398 (pool 0, weight 0), 0.273 /
    #: 0.425 (10, 4), 0.2745 / 0.419 (20, 0), 0.2755 / 0.423 (30, 2); pages without train images, model top-1
    #: 0 / 0.046 / 0.009 / 0.024 (the shipped ranker + 8 card: 0.266 / 0.394, 0)
    card_pool: int = 10
    #: a checkpoint no creator prompt votes for (no ``knn`` or ``creators`` signal) ranks this much lower on the
    #: ranker's logit unless the request names it (``named_by_request``). Creators' tag lists rarely leave the
    #: winner unvoted (10 % of val's top picks) and when they do, the right one is usually named (80 % of the correct
    #: ones); natural requests leave it unvoted far more often (130 of the fit set's 360), and there the ranker's
    #: card match alone picked novelty models: a celebrity Dreambooth for "a plastic toy and a fluffy pillow",
    #: "Stylized RPG game icons" for "a photo of two frisbees". Val 2,000, penalty 0 / 2 / 3 / 5: top-1 / top-5
    #: 0.2845 / 0.436, 0.2865 / 0.4345, 0.2865 / 0.4275, 0.2865 / 0.422 (pages without train images 0.085 at each);
    #: unvoted top picks on the fit set 130 / 30 / 20 / 13
    unvoted_penalty: float = 3.0
    #: a request word names a checkpoint if it is in the model's name or trigger words and in fewer than this share
    #: of the registry's creator prompts ("ghibli", "lamborghini"; not "car", "glass", "photography"): val as above
    #: with shares 1 / 0.01 / 0.003 / 0.001 (penalty 2): top-1 0.2855 / 0.2855 / 0.2865 / 0.2865, fit unvoted
    #: picks 65 / 44 / 35 / 30
    distinctive_share: float = 0.001

    def kind_weight(self, intent: Intent, ranked: bool) -> float:
        if ranked:
            return self.kind_natural if intent.natural else self.kind_tags
        return self.kind_fused_natural if intent.natural else self.kind_fused_tags


#: how much stronger a family renders natural requests, in units of ``family_bonus``: SDXL over SD 1.x, and where the
#: caller allows them (``Settings.large_families``, ``--base flux / sd3``) SD 3.5 and FLUX.1 over SDXL
FAMILY_STRENGTH = {"sdxl": 1.0, "sd3": 1.5, "flux": 2.0}


def kind_fit(intent: Intent, v: VersionInfo, weights: RetrievalWeights | None = None) -> float:
    """How well a checkpoint's kinds fit the request: 0 for a good kind, ``-acceptable`` for an acceptable one
    (or an unlabelled model), -2 for a wrong one; for natural requests plus a bonus when its strongest kind is
    the one asked for, and one for the stronger families (``FAMILY_STRENGTH``) when the caller did not restrict it."""
    w = weights or RetrievalWeights()
    grade = intent.grade(v.kinds)
    g = {2: 0.0, 1: -(w.acceptable_natural if intent.natural else w.acceptable_tags)}.get(grade, -2.0)
    # tag lists: creators' votes decide; a raw base model is never the best pick for a natural request
    if grade == 2 and intent.natural and intent.primary_fits(v.kinds) and "base" not in v.kinds:
        g += w.primary_bonus
        g += w.family_bonus * FAMILY_STRENGTH.get(str(v.family), 0.0)
    return g


#: name words that say what kind of model it is, not which one
_GENERIC_NAME_WORDS = frozenset(
    {
        "mix",
        "mixed",
        "merge",
        "model",
        "models",
        "diffusion",
        "realistic",
        "real",
        "photo",
        "photorealistic",
        "art",
        "anime",
        "style",
        "styles",
        "base",
        "checkpoint",
        "ckpt",
        "final",
        "beta",
        "alpha",
        "new",
        "dreambooth",
        "lora",
        "version",
        "the",
        "and",
        "for",
        "with",
        "sdxl",
        "pruned",
        "fp16",
        "fp32",
        "ema",
        "safetensors",
    }
)


def named_by_request(registry: Registry, request: str, hits, weights: RetrievalWeights | None = None) -> set[int]:
    """Version ids of the unvoted ``hits`` that ``request`` names: a word of the model's name or trigger words,
    not generic ("mix", "realistic"), used in fewer than ``weights.distinctive_share`` of the registry's creator
    prompts. A registry without sample images has no votes at all, and the ranker (and this rule) stays out."""
    w = weights or RetrievalWeights()
    asked = set(query_words(request))
    named: set[int] = set()
    for h in hits:
        if voted(h.signals):
            continue
        v = h.version
        words = {
            x
            for x in query_words(" ".join([v.model_name, *v.trained_words]))
            if len(x) >= 3 and x not in _GENERIC_NAME_WORDS and not x.isdigit()
        }
        if any(registry.prompt_word_share(x) < w.distinctive_share for x in asked & words):
            named.add(v.id)
    return named


def lora_evidence(c: Candidate, request: str, weights: RetrievalWeights | None = None) -> str | None:
    """Why this LoRA belongs in the call, or None: a LoRA needs the request to ask for what it does.

    - ``trigger``: one of its *distinctive* trigger words is in the request (creators type them to activate the
      LoRA; "gaogenxie" or "hatsune miku" name it; "green" or "couch", which creators also list, and words that
      several add-ons claim, do not), unless creators who typed its triggers rarely used it ("nerdy", "hanfu");
    - ``concept``: the request names its style, subject or purpose (``kinds.py`` concepts such as "pixel art",
      or the LoRA's own name);
    - ``creators``: creators used it with this checkpoint in prompts like this one (kNN share and use
      with the checkpoint), which only creators' tag-list prompts reach in practice.
    Detail, lighting and speed LoRAs follow the same rule: asked for, never added on a guess."""
    w = weights or RetrievalWeights()
    low = _padded(request)
    v = c.version
    triggers = {t.lower().strip(" ,") for t in v.trained_words}
    # the trigger signal already leaves out words that several add-ons claim ("masterpiece", "pastel colors")
    use = c.signals.get("trigger_use", -1.0)  # -1: creators typed its triggers too rarely to tell
    if (
        c.signals.get("trigger", 0.0) > 0
        and (use < 0 or use >= w.lora_trigger_use_min)
        and any(len(t) >= 3 and distinctive(t) and contains_words(low, t) for t in triggers)
    ):
        return "trigger"
    if any(len(p) >= 3 and contains_words(low, p) for p in (*v.concepts, name_phrase(v.model_name))):
        return "concept"
    if c.signals.get("knn", 0.0) >= w.lora_knn_min and c.signals.get("cooccurrence", 0.0) > 0:
        return "creators"
    return None


_COMMON: frozenset[str] | None = None


def common_words() -> frozenset[str]:
    """Everyday English words: the whole-word entries of the sentence encoder's WordPiece vocabulary (22,501
    words; a made-up trigger such as "gaogenxie" or "zarch" is split into pieces, so it is not one of them)."""
    global _COMMON
    if _COMMON is None:
        try:
            from diffagent.registry.embeddings import default_model_dir

            lines = (default_model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
            _COMMON = frozenset(t for t in lines if t.isalpha() and not t.startswith("##"))
        except Exception:  # noqa: BLE001 - without the vocabulary every trigger counts, as before
            _COMMON = frozenset()
    return _COMMON


def distinctive(phrase: str) -> bool:
    """A trigger phrase that names something: at least one word of it is not an everyday word."""
    common = common_words()
    words = [w for w in _WORDS.findall(phrase.lower()) if len(w) >= 3 and not w.isdigit()]
    return any(w not in common for w in words)


def request_intent(registry: Registry, request: str) -> Intent:
    """The request's style intent (``intent.style_intent``), where a request with no style cue of its own that
    names an add-on by a coined trigger word ("GasLampFantasyAI castle", "sp4c3sh1p") counts as one that asks for
    a look: the add-on's creators, through their votes, know which checkpoints render it, so the kind fit
    weighs as little as for a tag list."""
    intent = style_intent(request)
    if intent.natural and not intent.cues and names_addon(registry, request):
        intent = dataclasses.replace(intent, natural=False, cues=("add-on trigger word",))
    return intent


_COINED = re.compile(r"[a-z][A-Z]|[A-Za-z]\d|\d[A-Za-z]|_")


def names_addon(registry: Registry, request: str) -> bool:
    """The request contains a coined trigger word of an add-on (camelCase, letters mixed with digits, or an
    underscore: "GasLampFantasyAI", "st41nedg"), not an everyday word that some add-on also lists."""
    from diffagent.registry.creators import ADDON_TYPES

    matches = registry.trigger_matches(request, types=ADDON_TYPES)
    if not matches:
        return False
    low = _padded(request)
    return any(
        _COINED.search(t) and contains_words(low, t.lower().strip(" ,"))
        for v in registry.versions(list(matches)).values()
        for t in v.trained_words
        if len(t.strip()) >= 4
    )


def first_stage(
    registry: Registry,
    prompt: str,
    *,
    base: set[str] | None,
    limit: int,
    weights: RetrievalWeights | None = None,
    exclude_page: int | None = None,
    card: CardEncoder | None = None,
    local_only: bool = False,
) -> list:
    """The registry's hybrid search over renderable checkpoints: the hits a ranker reorders. With a card
    encoder (and a registry embedded by the encoder's embedder) hits carry the ``card`` signal."""
    w = weights or RetrievalWeights()
    ecosystems = (base or RENDERABLE) & RENDERER_ECOSYSTEMS  # base None ("any"): the families every machine runs
    card_vector = card_space = None
    if card is not None and prompt.strip() and registry.has_vectors and card.embedder in (None, registry.embedder.name):
        card_vector = card.encode_query(registry.embedder, prompt)
        card_space = registry.card_vectors(card)
    return registry.search(
        prompt,
        types=["checkpoint"],
        base=ecosystems,
        limit=limit,
        weights={"knn": w.knn, "creators": w.creators, "card": w.card_fused},
        exclude_page=exclude_page,
        renderable_only=True,
        card_vector=card_vector,
        local_only=local_only,
        card_pool=w.card_pool if card_vector is not None else 0,
        card_space=card_space,
    )


def retrieve_checkpoints(
    registry: Registry,
    prompt: str,
    *,
    base: set[str] | None,
    k: int,
    weights: RetrievalWeights | None = None,
    exclude_page: int | None = None,
    ranker: TreeEnsemble | None = None,
    intent: Intent | None = None,
    card: CardEncoder | None = None,
    local_only: bool = False,
) -> list[Candidate]:
    """The ``k`` best checkpoints for ``prompt``. ``exclude_page`` hides one model page's sample images
    (training examples see the registry as a held-out benchmark page does).

    With a ``ranker`` the first stage's top ``ranker.POOL`` hits are reordered by it (when creators'
    votes reached them, see ``ranker.applies``), and a candidate's score is the ranker's probability
    that creators would choose it; otherwise the score is the first stage's weighted sum of signals.

    With an ``intent`` every score moves by how well the checkpoint's kinds fit the request (``kind_fit``):
    a wrong kind ranks below every fitting one unless retrieval is far more certain about it."""
    w = weights or RetrievalWeights()
    hits = first_stage(
        registry,
        prompt,
        base=base,
        limit=pool_size(k, ranker, intent),
        weights=w,
        exclude_page=exclude_page,
        card=card,
        local_only=local_only,
    )
    return second_stage(registry, prompt, hits, k=k, weights=w, ranker=ranker, intent=intent)


def second_stage(
    registry: Registry,
    request: str,
    hits: list,
    *,
    k: int,
    weights: RetrievalWeights | None = None,
    ranker: TreeEnsemble | None = None,
    intent: Intent | None = None,
) -> list[Candidate]:
    """``rank_hits`` on first-stage ``hits`` of ``request``, with the unvoted hits the request names looked up
    (what ``retrieve_checkpoints`` does after its search; benchmarks and training call it on cached hits)."""
    w = weights or RetrievalWeights()
    named = named_by_request(registry, request, hits, w) if ranker is not None and w.unvoted_penalty else set()
    return rank_hits(hits, k=k, weights=w, ranker=ranker, intent=intent, named=named)


def pool_size(k: int, ranker: TreeEnsemble | None, intent: Intent | None) -> int:
    """How many first-stage hits ``rank_hits`` sees: the ranker's pool, doubled so that a request's kind can
    reach past it."""
    return max(POOL if ranker else 4 * k, k, 40) * (2 if intent is not None else 1)


def rank_hits(
    hits: list,
    *,
    k: int,
    weights: RetrievalWeights | None = None,
    ranker: TreeEnsemble | None = None,
    intent: Intent | None = None,
    named: set[int] | None = None,
) -> list[Candidate]:
    """The second stage of ``retrieve_checkpoints`` on first-stage hits (pure: benchmarks re-rank cached hits).
    ``named``: the unvoted hits the request names (``named_by_request``); the other unvoted ones pay
    ``weights.unvoted_penalty`` under the ranker."""
    w = weights or RetrievalWeights()
    if ranker is not None and applies(hits):
        # the pool the ranker was trained on: the first stage's best, and the checkpoints the card search added
        pool = [h for i, h in enumerate(hits) if i < POOL or h.signals.get("card_pool")]
        rest = [h for i, h in enumerate(hits) if i >= POOL and not h.signals.get("card_pool")]
        scored = rerank(ranker, pool)
        card_weight = w.card_ranked_natural if intent is not None and intent.natural else w.card_ranked
        if card_weight:
            scored = [(h, raw + card_weight * h.signals.get("card", 0.0)) for h, raw in scored]
        if w.unvoted_penalty:
            named = named or set()
            scored = [
                (h, raw - (w.unvoted_penalty if not voted(h.signals) and h.version.id not in named else 0.0))
                for h, raw in scored
            ]
        scored.sort(key=lambda x: -x[1])
        floor = min(raw for _, raw in scored) - 1.0
        # hits past the pool stay below it, in first-stage order: reachable for a request whose kind they fit
        scored += [(h, floor - 0.01 * i) for i, h in enumerate(rest)]
        if intent is not None:
            kw = w.kind_weight(intent, ranked=True)
            scored = [(h, raw + kw * kind_fit(intent, h.version, w)) for h, raw in scored]
            scored.sort(key=lambda x: -x[1])
        return [
            Candidate(h.version, 1.0 / (1.0 + math.exp(-raw)), {**h.signals, "ranker": raw}) for h, raw in scored[:k]
        ]
    cands = {h.version.id: Candidate(h.version, h.score, dict(h.signals)) for h in hits}
    if intent is not None:
        kw = w.kind_weight(intent, ranked=False)
        for c in cands.values():
            c.signals["kind"] = kind_fit(intent, c.version, w)
            c.score += kw * c.signals["kind"]
    ranked = sorted(cands.values(), key=lambda c: (-c.score, -c.version.downloads, c.version.id))
    return ranked[:k]


def retrieve_loras(
    registry: Registry,
    prompt: str,
    checkpoint: VersionInfo,
    *,
    k: int,
    weights: RetrievalWeights | None = None,
    exclude_page: int | None = None,
    local_only: bool = False,
) -> list[Candidate]:
    """LoRAs compatible with ``checkpoint`` for ``prompt`` (best first): what creators used in similar
    prompts, what they used with this checkpoint, and what the registry text search finds."""
    if k <= 0:
        return []
    w = weights or RetrievalWeights()
    eco = ecosystem_of(checkpoint.family)
    cands: dict[int, Candidate] = {}
    for h in registry.search(
        prompt,
        types=["lora"],
        base={eco},
        limit=max(3 * k, 20),
        weights={"knn": 0.0, "creators": 0.0},
        renderable_only=True,
        local_only=local_only,
    ):
        cands[h.version.id] = Candidate(h.version, w.lora_search * h.score, {"search": h.score})
    votes = registry.lora_neighbours(prompt, exclude_page=exclude_page)
    triggers = registry.trigger_matches(prompt)
    missing = [v for v in {**votes, **triggers} if v not in cands]
    for vid, info in registry.versions(missing).items():
        if (
            info.type in ("lora", "locon")
            and ecosystem_of(info.family) == eco
            and (registry.allow_nsfw or not info.nsfw)
            and registry.is_renderable(vid)
            and (not local_only or registry.is_local(vid))
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
        use = registry.trigger_use(vid) if c.signals["trigger"] > 0 else None
        c.signals["trigger_use"] = -1.0 if use is None else use
        c.score += (
            w.lora_knn * c.signals["knn"]
            + w.lora_trigger * c.signals["trigger"]
            + w.lora_cooccurrence * c.signals["cooccurrence"]
        )
    out = sorted(cands.values(), key=lambda c: (-c.score, c.version.id))
    return out[:k]


def evidenced_loras(
    registry: Registry,
    request: str,
    checkpoint: VersionInfo,
    *,
    k: int,
    weights: RetrievalWeights | None = None,
    exclude_page: int | None = None,
    local_only: bool = False,
) -> list[Candidate]:
    """The retrieved LoRAs that the request asks for (``lora_evidence``), best first, each with its reason in
    ``signals["evidence"]``. Most plain requests get none: no LoRA is the right answer for them."""
    if k <= 0:
        return []
    out = []
    for c in retrieve_loras(
        registry, request, checkpoint, k=k, weights=weights, exclude_page=exclude_page, local_only=local_only
    ):
        why = lora_evidence(c, request, weights)
        if why is not None:
            c.signals["evidence"] = why
            out.append(c)
    return out
