"""Training examples: a creator's (instruction, checkpoint, LoRAs) pair in the selector's own prompt.

For each pair, retrieval runs exactly as ``Selector._llm_choices`` runs it (K checkpoints for the
request, LoRAs for the top checkpoint), the prompt is rendered by ``render_prompt``, and the target
answer is the label of the creator's checkpoint among the candidates plus the labels of the
creator's LoRAs that are among the LoRA candidates. The model thus learns to choose among what
retrieval offers. A pair whose checkpoint is not retrieved cannot be taught; it is kept in the
cache as skipped, so that retrieval recall is reported.

Train pairs come from pages whose sample images are in the registry, so the retrieval's "creators
wrote prompts like this" vote would find the pair's own prompt and nearly always rank the right
checkpoint first (measured: first in 78 % of train examples against 13 % of test pairs). The model
would learn to trust that position. Each example therefore retrieves with ``exclude_page`` set to its
own model page, the view a test pair gets: that page's images do not vote (kNN and creator votes).

Retrieval is the slow part (~0.1-0.3 s a pair), so examples are cached to a JSONL file that a
rerun resumes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from diffagent.agent.cards import CardEncoder
from diffagent.agent.cards import load_setting as load_card
from diffagent.agent.prompt import CHECKPOINT_LABELS, LORA_LABELS, answer_text, render_prompt
from diffagent.agent.ranker import TreeEnsemble
from diffagent.agent.ranker import load_setting as load_ranker
from diffagent.agent.retrieve import RetrievalWeights, evidenced_loras, request_intent, retrieve_checkpoints
from diffagent.agent.selector import LORA_CANDIDATES
from diffagent.bench.pairs import Pair, Target, load_pairs
from diffagent.errors import UserInputError
from diffagent.families import parse_base_constraint
from diffagent.prompttext import strip_resource_tags
from diffagent.registry.location import identity
from diffagent.registry.store import Registry
from diffagent.training.io import AppendLog, write_json_atomic


class Example(BaseModel):
    image_id: int
    request: str  # the instruction, resource tags stripped (what the selector sees)
    prompt: str = ""  # rendered exactly as the selector renders it
    checkpoint_ids: list[int] = Field(default_factory=list)  # candidate i has label CHECKPOINT_LABELS[i]
    lora_ids: list[int] = Field(default_factory=list)  # candidate j has label LORA_LABELS[j]
    target: Target
    target_lora_ids: list[int] = Field(default_factory=list)  # the creator's LoRAs that the registry knows
    answer_checkpoint: int | None = None  # index into checkpoint_ids; None: not retrieved (skipped)
    answer_loras: list[int] = Field(default_factory=list)  # indices into lora_ids, in candidate order

    @property
    def usable(self) -> bool:
        return self.answer_checkpoint is not None

    @property
    def answer(self) -> str:
        if self.answer_checkpoint is None:
            raise ValueError(f"example {self.image_id} has no answer: its checkpoint was not retrieved")
        return answer_text(CHECKPOINT_LABELS[self.answer_checkpoint], [LORA_LABELS[j] for j in self.answer_loras])


def build_example(
    registry: Registry,
    pair: Pair,
    lora_index: dict[str, int],
    *,
    candidates_k: int,
    max_loras: int,
    weights: RetrievalWeights | None = None,
    leave_page_out: bool = False,
    ranker: TreeEnsemble | None = None,
    card: CardEncoder | None = None,
) -> Example:
    """One pair -> one example, with the candidates the selector would show for its instruction
    (with the pair's own model page left out of the registry's votes when ``leave_page_out``)."""
    weights = weights or RetrievalWeights()
    page = pair.page_model_id if leave_page_out else None
    request = strip_resource_tags(pair.instruction)
    # the same calls, in the same order and with the same arguments, as Selector.select_many with
    # SelectOptions(base="any", style=None) -- the options `bench select` evaluates with
    checkpoints = retrieve_checkpoints(
        registry,
        request,
        base=parse_base_constraint("any"),
        k=candidates_k,
        weights=weights,
        exclude_page=page,
        ranker=ranker,
        intent=request_intent(registry, request),
        card=card,
    )
    target_loras = [lora_index[lo.name.lower()] for lo in pair.target.loras if lo.name.lower() in lora_index]
    ex = Example(
        image_id=pair.image_id, request=request, target=pair.target, target_lora_ids=list(dict.fromkeys(target_loras))
    )
    if not checkpoints:
        return ex
    loras = (
        evidenced_loras(
            registry, request, checkpoints[0].version, k=min(LORA_CANDIDATES, 12), weights=weights, exclude_page=page
        )
        if max_loras
        else []
    )
    rendered = render_prompt(request, checkpoints, loras, style=None)
    ex.prompt = rendered.text
    ex.checkpoint_ids = [c.version.id for c in checkpoints]
    ex.lora_ids = [c.version.id for c in loras]
    if pair.target.checkpoint_version_id in ex.checkpoint_ids:
        ex.answer_checkpoint = ex.checkpoint_ids.index(pair.target.checkpoint_version_id)
        wanted = set(ex.target_lora_ids)
        ex.answer_loras = [j for j, vid in enumerate(ex.lora_ids) if vid in wanted][:max_loras]
    return ex


def select_pairs(pairs: Iterable[Pair], *, limit: int, seed: int, dedupe: bool) -> list[Pair]:
    """A seeded random sample (the same on every run, so a rerun resumes the same list)."""
    pool = list(pairs)
    if dedupe:
        seen: dict[str, Pair] = {}
        for p in sorted(pool, key=lambda p: p.image_id):
            seen.setdefault(" ".join(p.instruction.lower().split()), p)
        pool = list(seen.values())
    pool.sort(key=lambda p: p.image_id)
    random.Random(seed).shuffle(pool)
    return pool[:limit]


class DataReport(BaseModel):
    pairs: int
    examples: int  # usable: the creator's checkpoint is among the candidates
    skipped_not_retrieved: int
    checkpoint_recall: float | None  # share of pairs whose checkpoint was retrieved
    lora_recall: float | None  # share of the creators' known LoRAs among the LoRA candidates
    answers_with_loras: int

    @classmethod
    def of(cls, examples: list[Example]) -> DataReport:
        usable = [e for e in examples if e.usable]
        gt = sum(len(e.target_lora_ids) for e in usable)
        hit = sum(len(set(e.target_lora_ids) & set(e.lora_ids)) for e in usable)
        return cls(
            pairs=len(examples),
            examples=len(usable),
            skipped_not_retrieved=len(examples) - len(usable),
            checkpoint_recall=round(len(usable) / len(examples), 4) if examples else None,
            lora_recall=round(hit / gt, 4) if gt else None,
            answers_with_loras=sum(1 for e in usable if e.answer_loras),
        )


def build_examples(
    pairs_path: Path,
    registry: Registry,
    out: Path,
    *,
    split: str,
    limit: int,
    seed: int,
    dedupe: bool,
    candidates_k: int,
    max_loras: int,
    leave_page_out: bool = True,
    ranker: str | None = None,
    card_adapter: str | None = None,
    progress: bool = False,
) -> DataReport:
    """Build (or resume building) the example cache ``out``; returns its report.

    ``out.meta.json`` records what the cache was built from; a different request is refused rather
    than mixed into the old file. ``limit`` is not part of it: a larger limit extends the same seeded
    sample.
    """
    from tqdm import tqdm

    from diffagent.registry.stats import lora_name_index

    model = load_ranker(ranker)
    card = load_card(card_adapter)
    meta = {
        "pairs": str(Path(pairs_path).resolve()),
        "registry": identity(registry.path),
        "split": split,
        "seed": seed,
        "dedupe": dedupe,
        "candidates_k": candidates_k,
        "max_loras": max_loras,
        "allow_nsfw": registry.allow_nsfw,
        "leave_page_out": leave_page_out,
        # the trees, not the setting: "default" names whichever file this version bundles
        "ranker": model.digest() if model is not None else None,
        "card_adapter": card.digest() if card is not None else None,
    }
    meta_path = out.with_name(out.name + ".meta.json")
    if meta_path.exists() and out.exists():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if old != meta:
            diff = {k: (old.get(k), meta.get(k)) for k in sorted(old.keys() | meta.keys()) if old.get(k) != meta.get(k)}
            raise UserInputError(
                f"{out} was built with other settings {diff}; delete it (and {meta_path.name}) or use another work dir"
            )
    write_json_atomic(meta_path, meta)
    selected = select_pairs(load_pairs(pairs_path, splits={split}), limit=limit, seed=seed, dedupe=dedupe)
    if not selected:
        raise UserInputError(f"no {split} pairs in {pairs_path}; build them with `diffagent bench build`")
    log = AppendLog(out)
    done = {int(r["image_id"]) for r in log.records()}
    todo = [p for p in selected if p.image_id not in done]
    if todo:
        with registry.engine.connect() as conn:
            lora_index = lora_name_index(conn)
        with log.open() as write:
            for pair in tqdm(
                todo, desc="examples", disable=not progress, initial=len(selected) - len(todo), total=len(selected)
            ):
                ex = build_example(
                    registry,
                    pair,
                    lora_index,
                    candidates_k=candidates_k,
                    max_loras=max_loras,
                    leave_page_out=leave_page_out,
                    ranker=model,
                    card=card,
                )
                write(ex.model_dump(mode="json"))
    wanted = {p.image_id for p in selected}
    return DataReport.of([e for e in load_examples(out) if e.image_id in wanted])


def load_examples(path: Path) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"examples {path} not found; build them with `diffagent train data`")
    return [Example.model_validate(r) for r in AppendLog(path).records()]


def usable(examples: Iterable[Example]) -> Iterator[Example]:
    return (e for e in examples if e.usable)


def shuffle_candidates(examples: list[Example], registry: Registry, *, share: float, seed: int) -> list[Example]:
    """A seeded ``share`` of the examples with their candidates in a random order (prompt re-rendered,
    answer remapped to the same versions).

    Retrieval's first candidate is the creator's in about half of the examples, so a model trained
    only on retrieval order can score well by learning that position and nothing else; shuffled
    copies make it match the request against the candidates' names and tags. At inference the
    selector still fuses the model's log-probabilities with the retrieval score.
    """
    from diffagent.agent.retrieve import Candidate

    rng = random.Random(seed)
    out = []
    for ex in examples:
        if not ex.usable or rng.random() >= share:
            out.append(ex)
            continue
        ck_order = rng.sample(range(len(ex.checkpoint_ids)), len(ex.checkpoint_ids))
        lo_order = rng.sample(range(len(ex.lora_ids)), len(ex.lora_ids))
        ck_ids = [ex.checkpoint_ids[i] for i in ck_order]
        lo_ids = [ex.lora_ids[j] for j in lo_order]
        infos = registry.versions(ck_ids + lo_ids)
        if len(infos) < len(set(ck_ids + lo_ids)):
            raise UserInputError(
                f"example {ex.image_id} names versions the registry lacks; rebuild the examples against this registry"
            )
        rendered = render_prompt(
            ex.request,
            [Candidate(infos[i], 0.0) for i in ck_ids],
            [Candidate(infos[j], 0.0) for j in lo_ids],
            style=None,
        )
        wanted = {ex.lora_ids[j] for j in ex.answer_loras}
        out.append(
            ex.model_copy(
                update={
                    "prompt": rendered.text,
                    "checkpoint_ids": ck_ids,
                    "lora_ids": lo_ids,
                    "answer_checkpoint": ck_ids.index(ex.checkpoint_ids[ex.answer_checkpoint]),
                    "answer_loras": [k for k, vid in enumerate(lo_ids) if vid in wanted],
                }
            )
        )
    return out
