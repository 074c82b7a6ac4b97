"""DiffAgent's selector: prompt -> ranked, complete ``ApiCall``s, choosing only registry models.

    normalize prompt -> retrieve candidates -> LLM chooses among labels (constrained decoding)
    -> validate + rebuild full calls from usage statistics -> rank, dedupe

``selector="retrieval"`` skips the LLM (the fallback and the baseline): the top retrieved
checkpoint and the LoRAs whose retrieval score clears a threshold.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field

from diffagent.agent.cards import load_setting as load_card
from diffagent.agent.decode import Decoded, Decoder, dedupe
from diffagent.agent.direct import NameTrie, decode_name, direct_prompt
from diffagent.agent.llm import BackendPool, LlamaBackend
from diffagent.agent.options import SelectOptions
from diffagent.agent.prompt import RenderedPrompt, prompt_labels, render_prompt
from diffagent.agent.ranker import load_setting as load_ranker
from diffagent.agent.rebuild import build_call, lora_weight
from diffagent.agent.retrieve import Candidate, RetrievalWeights, evidenced_loras, request_intent, retrieve_checkpoints
from diffagent.apicall import LORA_WEIGHT_MAX, LORA_WEIGHT_MIN, MAX_LORAS, Alternative, ApiCall
from diffagent.errors import NotFoundError, UserInputError
from diffagent.families import FLOW, RENDERABLE, RENDERER_ECOSYSTEMS, compatible, parse_base_constraint
from diffagent.prompttext import lora_tags, strip_resource_tags
from diffagent.registry.info import VersionInfo
from diffagent.registry.store import Registry
from diffagent.settings import Settings

log = logging.getLogger(__name__)

#: weight of the retrieval score against the LLM's log-probability when ranking choices: with the
#: ranker, of the log of its probability (a product of the two models); without, of the search score
RANKER_BETA = 1.0
RETRIEVAL_BETA = 2.0
LORA_CANDIDATES = 3


@dataclass
class Choice:
    """One decision: checkpoint + LoRAs, with the evidence for it."""

    checkpoint: Candidate
    loras: list[Candidate]
    score: float
    llm_logprob: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Selection:
    calls: list[ApiCall]
    choices: list[Choice]
    timings: dict[str, float]
    prompt: RenderedPrompt | None = None


class Selector:
    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        backend: LlamaBackend | None = None,
        weights: RetrievalWeights | None = None,
    ):
        self.registry = registry
        self.settings = settings
        self.weights = weights or RetrievalWeights()
        self._pool = BackendPool.of(backend) if backend is not None else None
        self._tries: dict = {}
        self.ranker = load_ranker(settings.ranker)
        self.card = load_card(settings.card_adapter)
        self._lock = threading.Lock()

    @property
    def mode(self) -> str:
        return self.settings.selector

    @property
    def any_base(self) -> set[str]:
        """The ecosystems base "any" offers: SD 1.x and SDXL, and FLUX.1 / SD 3 where ``large_families`` allows."""
        return RENDERABLE | FLOW if self.settings.large_families else set(RENDERABLE)

    @property
    def pool(self) -> BackendPool:
        """The LLM copies (``llm_instances``), loaded on first use; a request borrows one for its decode."""
        with self._lock:
            if self._pool is None:
                s = self.settings
                self._pool = BackendPool(
                    lambda: LlamaBackend(s.llm_model, lora_path=s.llm_lora, n_ctx=s.llm_ctx, n_threads=s.llm_threads),
                    s.llm_instances,
                )
            return self._pool

    @property
    def backend(self) -> LlamaBackend:
        """A loaded copy of the LLM for tokenizing (decoding borrows one from ``pool``)."""
        return self.pool.first

    def warm(self) -> None:
        """Load the index, the embedder, a two-tower card encoder's card vectors and (LLM mode) the model, and cache
        the fixed prompt prefix."""
        self.registry.warm()
        if self.card is not None and self.registry.has_vectors:
            self.registry.card_vectors(self.card)
        if self.mode == "llm":
            self.select_many("a photo of a cat", SelectOptions(n_candidates=1))

    # ------------------------------------------------------------------ public API
    def select(self, prompt: str, options: SelectOptions) -> ApiCall:
        return self.select_many(prompt, options).calls[0]

    def select_many(self, prompt: str, options: SelectOptions) -> Selection:
        t0 = time.perf_counter()
        request = strip_resource_tags(prompt)
        query = f"{request} {options.style}" if options.style else request
        base = parse_base_constraint(options.base) or self.any_base
        intent = request_intent(self.registry, query)
        local = self._local(options)
        checkpoints = retrieve_checkpoints(
            self.registry,
            query,
            base=base,
            k=max(self.settings.candidates_k, options.n_candidates, 5),
            weights=self.weights,
            ranker=self.ranker,
            intent=intent,
            card=self.card,
            local_only=local,
        )
        if not checkpoints:
            raise NotFoundError(
                f"the registry has no {options.base if options.base != 'any' else 'renderable'} checkpoint"
                f"{' on this machine (run diffagent registry scan on your model folders)' if local else ''} "
                "that the current policy allows; import models (diffagent registry import) or relax --base"
            )
        timings = {"retrieve": time.perf_counter() - t0}
        rendered = None
        if self.mode == "retrieval":
            choices = self._retrieval_choices(query, checkpoints, options)
        elif self.settings.llm_design == "direct":
            choices = self._direct_choices(request, query, checkpoints, base, options, timings)
        else:
            shortlist = checkpoints[: self.settings.candidates_k]
            choices, rendered = self._llm_choices(request, query, shortlist, options, timings)
            # retrieval ranks past the LLM's shortlist follow as further alternatives
            floor = min((c.score for c in choices), default=0.0)
            choices += [
                Choice(c, [], floor - 1.0 - i, notes=["retrieval"]) for i, c in enumerate(checkpoints[len(shortlist) :])
            ]
        cue = f"style cues: {', '.join(intent.cues)}" if intent.cues else "no style cue"
        for ch in choices:
            kinds = "/".join(ch.checkpoint.version.kinds) or "unlabelled"
            ch.notes.insert(0, f"{cue}; a {kinds} model (fit {intent.grade(ch.checkpoint.version.kinds)}/2)")
        t1 = time.perf_counter()
        calls = self._build_calls(request, self._requested_loras(prompt), choices, options)
        timings["rebuild"] = time.perf_counter() - t1
        timings["total"] = time.perf_counter() - t0
        return Selection(calls=calls, choices=choices, timings=timings, prompt=rendered)

    # ------------------------------------------------------------------ retrieval-only
    def _retrieval_choices(self, query: str, checkpoints: list[Candidate], options: SelectOptions) -> list[Choice]:
        return [
            Choice(
                ck,
                self._evidenced_loras(query, ck.version, options.max_loras, self._local(options)),
                ck.score,
                notes=["retrieval"],
            )
            for ck in checkpoints[: options.n_candidates]
        ]

    def _local(self, options: SelectOptions) -> bool:
        """Only models on this machine: the request's option, else the setting."""
        return self.settings.local_only if options.local_only is None else options.local_only

    def _evidenced_loras(
        self, query: str, checkpoint: VersionInfo, limit: int, local_only: bool = False
    ) -> list[Candidate]:
        return evidenced_loras(
            self.registry, query, checkpoint, k=LORA_CANDIDATES, weights=self.weights, local_only=local_only
        )[:limit]

    # ------------------------------------------------------------------ LLM
    def _llm_choices(
        self, request: str, query: str, checkpoints: list[Candidate], options: SelectOptions, timings: dict[str, float]
    ) -> tuple[list[Choice], RenderedPrompt]:
        t = time.perf_counter()
        # LoRAs are offered for the best retrieved checkpoint's ecosystem; a choice of a checkpoint
        # from another ecosystem drops incompatible ones in validation.
        loras = (
            self._evidenced_loras(query, checkpoints[0].version, LORA_CANDIDATES, self._local(options))
            if options.max_loras
            else []
        )
        rendered = render_prompt(request, checkpoints, loras, style=options.style)
        with self.pool.borrow() as backend:  # one request per copy: its KV cache holds this prompt's prefix
            labels = prompt_labels(
                backend.single_token,
                backend.tokenize,
                n_checkpoints=len(checkpoints),
                n_loras=len(loras),
                max_loras=options.max_loras,
            )
            tokens = backend.tokenize(rendered.text, bos=True)
            decoder = Decoder(backend.logits, tokens, labels, n_loras=len(loras))
            timings["prepare"] = time.perf_counter() - t
            t = time.perf_counter()
            ck_lp = decoder.checkpoint_logprobs()
            timings["llm_prompt"] = time.perf_counter() - t
            t = time.perf_counter()
            strategy = options.strategy
            if strategy == "sample":
                decoded = decoder.sample(
                    max(options.n_candidates * 2, 4), temperature=options.temperature, seed=options.seed or 0
                )
            elif strategy == "beam":
                decoded = decoder.diverse_beam_search(
                    groups=max(options.n_candidates, 2), beams_per_group=1, diversity_penalty=1.0
                )
            else:  # "rank": exact ranking of every checkpoint label, LoRAs decoded greedily for the best
                best = decoder.greedy()
                decoded = [best] + [
                    Decoded(checkpoint=i, loras=(), logprob=float(lp))
                    for i, lp in enumerate(ck_lp)
                    if i != best.checkpoint
                ]
        timings["llm_decode"] = time.perf_counter() - t
        choices = []
        for d in dedupe(decoded):
            ck = checkpoints[d.checkpoint]
            score = float(ck_lp[d.checkpoint]) + retrieval_term(ck)
            chosen = [loras[j] for j in d.loras]
            choices.append(
                Choice(ck, chosen, score, llm_logprob=d.logprob, notes=[f"llm p={math.exp(ck_lp[d.checkpoint]):.2f}"])
            )
        choices.sort(key=lambda c: -c.score)
        return choices, rendered

    # ------------------------------------------------------------------ LLM, direct design
    def _trie(self, base: set[str] | None) -> NameTrie:
        key = (frozenset(base or ()), self.registry.allow_nsfw)
        with self._lock:
            trie = self._tries.get(key)
        if trie is None:
            ids = self.registry.popular(
                types=["checkpoint"], base=(base or RENDERABLE) & RENDERER_ECOSYSTEMS, limit=10**6
            )
            infos = self.registry.versions(ids)
            trie = NameTrie(self.backend, {vid: infos[vid].display_name for vid in ids if vid in infos})
            with self._lock:
                self._tries[key] = trie
        return trie

    def _direct_choices(
        self,
        request: str,
        query: str,
        checkpoints: list[Candidate],
        base,
        options: SelectOptions,
        timings: dict[str, float],
    ) -> list[Choice]:
        t = time.perf_counter()
        trie = self._trie(base)
        with self.pool.borrow() as backend:
            tokens = backend.tokenize(direct_prompt(request), bos=True)
            vid, logprob = decode_name(backend, trie, tokens)
        timings["llm_decode"] = time.perf_counter() - t
        info = self.registry.versions([vid])[vid]
        first = next((c for c in checkpoints if c.version.id == vid), None) or Candidate(info, 0.0, {})
        loras = self._evidenced_loras(query, info, options.max_loras, self._local(options))
        rest = [Choice(c, [], c.score - 100.0, notes=["retrieval"]) for c in checkpoints if c.version.id != vid]
        return [Choice(first, loras, 0.0, llm_logprob=logprob, notes=[f"llm named it (logprob {logprob:.2f})"]), *rest]

    # ------------------------------------------------------------------ rebuild
    def _requested_loras(self, prompt: str) -> list[tuple[VersionInfo, float]]:
        """LoRAs the user named with A1111 tags (``<lora:file_stem:0.7>``) that the registry holds, each once.
        A weight outside what ``LoraRef`` allows or more tags than a call may carry is the caller's error."""
        by_name = self.registry.addons_by_trigger(("lora", "locon"))
        out: dict[int, tuple[VersionInfo, float]] = {}
        for name, weight in lora_tags(prompt):
            if not LORA_WEIGHT_MIN <= weight <= LORA_WEIGHT_MAX:
                raise UserInputError(
                    f"<lora:{name}:{weight:g}>: a LoRA weight must be between {LORA_WEIGHT_MIN:g} "
                    f"and {LORA_WEIGHT_MAX:g} (A1111 users use 0.3 to 1.2)"
                )
            if name.lower() in by_name:
                v = by_name[name.lower()]
                out.setdefault(v.id, (v, weight))
        if len(out) > MAX_LORAS:
            raise UserInputError(
                f"the prompt names {len(out)} LoRAs with <lora:...> tags; a call takes at most {MAX_LORAS}"
            )
        return list(out.values())

    def _build_calls(
        self, prompt: str, requested: list[tuple[VersionInfo, float]], choices: list[Choice], options: SelectOptions
    ) -> list[ApiCall]:
        embeddings = self.registry.addons_by_trigger(("embedding",))
        calls: list[ApiCall] = []
        seen = set()
        for ch in choices:
            ck = ch.checkpoint.version
            if ck.id in seen:
                continue
            seen.add(ck.id)
            usage = self.registry.usage(ck.id)
            # the user's own <lora:...> tags come first; compatibility is checked in build_call
            loras = [(v, w) for v, w in requested if compatible(ck.family, v.family)]
            loras += [
                (lo.version, lora_weight(lo.version, usage, self.registry.usage(lo.version.id)))
                for lo in ch.loras
                if lo.version.id not in {v.id for v, _ in loras}
            ]
            loras = loras[: max(options.max_loras, len(requested))]
            why = _rationale(ch, usage.n_images if usage else 0)
            calls.append(build_call(prompt, ck, usage, loras, seed=options.seed, embeddings=embeddings, rationale=why))
            if len(calls) >= options.n_candidates:
                break
        alternatives = [
            Alternative(checkpoint=c.checkpoint.version.ref(), score=round(c.score, 4))
            for c in choices[1 : 1 + max(options.n_candidates, 3)]
        ]
        calls[0] = calls[0].model_copy(update={"alternatives": alternatives})
        return calls


def retrieval_term(c: Candidate) -> float:
    """What retrieval adds to the LLM's log-probability of choosing ``c``."""
    if "ranker" in c.signals:
        return RANKER_BETA * math.log(max(c.score, 1e-9))
    return RETRIEVAL_BETA * c.score


def _rationale(ch: Choice, n_images: int) -> str:
    v = ch.checkpoint.version
    sig = ch.checkpoint.signals
    strongest = max(
        (k for k in ("lexical", "semantic", "prompts", "knn") if k in sig), key=lambda k: sig[k], default=None
    )
    why = {
        "lexical": "its name and tags match the request",
        "semantic": "its description is closest in meaning",
        "prompts": "its creators' prompts resemble the request",
        "knn": "creators wrote similar prompts with it",
        None: "it is popular",
    }[strongest]
    parts = [f"{v.display_name} ({v.base_model}): {why}"]
    if ch.notes:
        parts.append("; ".join(ch.notes))
    if ch.loras:
        parts.append("LoRAs: " + ", ".join(lo.version.display_name for lo in ch.loras))
    parts.append(f"settings from {n_images} creator images" if n_images >= 3 else "settings from defaults")
    return ". ".join(parts)[:2000]
