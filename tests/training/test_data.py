"""Training examples: the selector's own prompt and candidates, the creators' answer, a resumable cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_llm import VOCAB, ToyTokenizer

from diffagent.agent.cards import load_setting as load_card
from diffagent.agent.prompt import answer_text
from diffagent.agent.ranker import load_setting as load_ranker
from diffagent.agent.selector import Selector
from diffagent.bench.pairs import Pair, Target, TargetLora
from diffagent.errors import UserInputError
from diffagent.registry.stats import lora_name_index
from diffagent.settings import Settings
from diffagent.tools import SelectOptions
from diffagent.training.data import DataReport, build_example, build_examples, load_examples
from diffagent.training.tokens import answer_ids, labels_for

FOX = "watercolor painting of a fox in a misty forest, paper texture"


def fox_pair(**kw) -> Pair:
    target = Target(
        checkpoint_version_id=1003,
        checkpoint_model_id=103,
        loras=[TargetLora(name="watercolorStyle_v1")],
        sampler="DPM++ 2M Karras",
        steps=28,
        cfg_scale=7,
        width=512,
        height=768,
    )
    return Pair(
        **{"image_id": 9021, "page_model_id": 103, "split": "train", "instruction": FOX, "target": target, **kw}
    )


class FakeBackend:
    """What the selector needs from llama.cpp, over the toy tokenizer (flat logits)."""

    def __init__(self):
        self.tok = ToyTokenizer()

    def tokenize(self, text, *, bos=False):
        return self.tok.encode(text, bos=bos)

    def single_token(self, text):
        (tok,) = self.tokenize(text)
        return tok

    def logits(self, tokens):
        return np.zeros(VOCAB, dtype=np.float32)


@pytest.fixture()
def lora_index(tiny_registry):
    with tiny_registry.engine.connect() as conn:
        return lora_name_index(conn)


def test_example_prompt_is_exactly_what_the_selector_renders(tiny_registry, tiny_registry_path, lora_index):
    settings = Settings(registry=tiny_registry_path, selector="llm")
    ex = build_example(
        tiny_registry,
        fox_pair(),
        lora_index,
        candidates_k=settings.candidates_k,
        max_loras=2,
        ranker=load_ranker(settings.ranker),
        card=load_card(settings.card_adapter),
    )
    sel = Selector(tiny_registry, settings, backend=FakeBackend()).select_many(FOX, SelectOptions(seed=0))
    assert ex.prompt == sel.prompt.text
    assert ex.usable and ex.checkpoint_ids[ex.answer_checkpoint] == 1003
    assert [ex.lora_ids[j] for j in ex.answer_loras] == [2002]  # the creator's LoRA, found among the candidates
    assert ex.answer == answer_text("ABCDEFGHIJKL"[ex.answer_checkpoint], ["MNOPQRSTUVWX"[ex.answer_loras[0]]])


def test_answer_tokens_are_the_decoders_label_tokens(tiny_registry, lora_index):
    tok = ToyTokenizer()
    ex = build_example(tiny_registry, fox_pair(), lora_index, candidates_k=6, max_loras=2)
    labels = labels_for(tok, len(ex.checkpoint_ids), len(ex.lora_ids), max_loras=2)
    ids = answer_ids(tok, ex.answer_checkpoint, ex.answer_loras)
    assert ids[0] == labels.checkpoints[ex.answer_checkpoint]
    assert tuple(ids[1 : 1 + len(labels.between)]) == labels.between
    assert ids[1 + len(labels.between)] == labels.loras[ex.answer_loras[0]]
    assert ids[-1] == labels.end
    assert answer_ids(tok, 0, [])[-1] == labels.none


def test_a_pair_whose_checkpoint_is_not_retrieved_is_kept_as_skipped(tiny_registry, lora_index):
    pair = fox_pair(target=Target(checkpoint_version_id=999_999, checkpoint_model_id=1))
    ex = build_example(tiny_registry, pair, lora_index, candidates_k=6, max_loras=2)
    assert not ex.usable and ex.prompt
    with pytest.raises(ValueError, match="not retrieved"):
        _ = ex.answer
    assert DataReport.of([ex]).checkpoint_recall == 0.0


def test_leaving_the_page_out_retrieves_as_a_held_out_page_would(tiny_registry, lora_index, monkeypatch):
    from diffagent.training import data

    seen = []
    real = data.retrieve_checkpoints

    def spy(*args, **kw):
        seen.append(kw["exclude_page"])
        return real(*args, **kw)

    monkeypatch.setattr(data, "retrieve_checkpoints", spy)
    kept = build_example(tiny_registry, fox_pair(), lora_index, candidates_k=6, max_loras=2)
    left = build_example(tiny_registry, fox_pair(), lora_index, candidates_k=6, max_loras=2, leave_page_out=True)
    assert seen == [None, 103]
    assert kept.checkpoint_ids[0] == 1003  # the pair's own page votes for its checkpoint...
    # ...and without it the creators' vote for it comes from other pages only
    assert tiny_registry.prompt_neighbours(FOX, k=50, exclude_page=103).get(
        1003, 0.0
    ) < tiny_registry.prompt_neighbours(FOX, k=50).get(1003, 0.0)
    assert left.checkpoint_ids  # the watercolor request still finds candidates (its kind fits without the vote)


def _pairs_file(path, n=4):
    prompts = [
        FOX,
        "portrait photo of an old fisherman, 85mm, film grain",
        "1girl, solo, school uniform",
        "cinematic photo of a lighthouse in a storm",
        "a fox",
    ]
    targets = [(1003, 103), (1001, 101), (1002, 102), (1004, 104), (1003, 103)]
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(
                Pair(
                    image_id=100 + i,
                    page_model_id=500 + i,
                    split="train",
                    instruction=prompts[i],
                    target=Target(checkpoint_version_id=targets[i][0], checkpoint_model_id=targets[i][1]),
                ).model_dump_json()
                + "\n"
            )
    return path


def test_example_cache_resumes_and_refuses_other_settings(tiny_registry, tmp_path):
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    out = tmp_path / "data" / "examples.jsonl"
    kw = dict(split="train", seed=0, dedupe=True, candidates_k=6, max_loras=2)
    first = build_examples(pairs, tiny_registry, out, limit=2, **kw)
    assert first.pairs == 2
    with open(out, "a") as fh:
        fh.write('{"image_id": 1, "trunc')  # a run killed mid-line
    report = build_examples(pairs, tiny_registry, out, limit=4, **kw)  # a larger limit extends the sample
    assert report.pairs == 4
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)  # the torn line is gone
    assert {e.image_id for e in load_examples(out)} == {100, 101, 102, 103}
    with pytest.raises(UserInputError, match="candidates_k"):
        build_examples(pairs, tiny_registry, out, limit=4, **{**kw, "candidates_k": 3})
    with pytest.raises(UserInputError, match="ranker"):  # shortlists ordered by trees the cache was not
        build_examples(pairs, tiny_registry, out, limit=4, ranker="default", **kw)


def test_shuffled_candidates_keep_the_answer_on_the_same_versions(tiny_registry, lora_index):
    from diffagent.training.data import shuffle_candidates

    ex = build_example(tiny_registry, fox_pair(), lora_index, candidates_k=6, max_loras=2)
    assert shuffle_candidates([ex], tiny_registry, share=0.0, seed=0) == [ex]
    moved = [s for seed in range(8) for s in shuffle_candidates([ex], tiny_registry, share=1.0, seed=seed)]
    assert any(s.checkpoint_ids != ex.checkpoint_ids for s in moved)
    for s in moved:
        assert sorted(s.checkpoint_ids) == sorted(ex.checkpoint_ids) and sorted(s.lora_ids) == sorted(ex.lora_ids)
        assert s.checkpoint_ids[s.answer_checkpoint] == 1003
        assert [s.lora_ids[j] for j in s.answer_loras] == [2002]
        label = "ABCDEF"[s.answer_checkpoint]
        assert f'\n{label}: "Aquarelle' in s.prompt  # the prompt lists the candidates in the new order
