"""RRHF: candidates from the model through the selector's decoder, rebuilt as at inference, scored by the
agreement-with-creators reward; then ranking training on them."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from test_data import fox_pair  # noqa: E402
from tiny_llm import ToyTokenizer, tiny_gemma  # noqa: E402

from diffagent.bench.pairs import Pair, Target, TargetLora  # noqa: E402
from diffagent.errors import UserInputError  # noqa: E402
from diffagent.registry.stats import lora_name_index  # noqa: E402
from diffagent.training.config import LoraShape, RRHFConfig, TrainConfig  # noqa: E402
from diffagent.training.data import build_example  # noqa: E402
from diffagent.training.model import add_lora  # noqa: E402
from diffagent.training.reward import AGREEMENT_REWARD, ImageMetricReward, agreement_reward  # noqa: E402
from diffagent.training.rrhf import Rebuilder, generate_candidates, torch_logits, train_rrhf  # noqa: E402


@pytest.fixture()
def examples(tiny_registry):
    with tiny_registry.engine.connect() as conn:
        index = lora_name_index(conn)
    anime = Pair(
        image_id=9011,
        page_model_id=102,
        split="train",
        instruction="1girl, solo, school uniform, anime",
        target=Target(checkpoint_version_id=1002, checkpoint_model_id=102, clip_skip=2),
    )
    photo = Pair(
        image_id=9001,
        page_model_id=101,
        split="train",
        instruction="portrait photo, film grain",
        target=Target(
            checkpoint_version_id=1001, checkpoint_model_id=101, loras=[TargetLora(name="filmGrain_v1", weight=0.6)]
        ),
    )
    out = [build_example(tiny_registry, p, index, candidates_k=6, max_loras=2) for p in (fox_pair(), anime, photo)]
    assert all(e.usable for e in out)
    return out


def test_agreement_reward_on_known_numbers(tiny_registry, examples):
    fox = examples[0]
    rebuild = Rebuilder(tiny_registry)
    water = fox.lora_ids.index(2002)
    call, model_id, mismatched = rebuild(fox, fox.answer_checkpoint, [water])
    assert model_id == 103 and mismatched == 0 and [lo.id for lo in call.loras] == [2002]
    # a target that agrees with the rebuilt call on every argument
    target = fox.target.model_copy(
        update={
            "sampler": call.sampler,
            "steps": call.steps,
            "cfg_scale": call.cfg_scale,
            "width": call.width,
            "height": call.height,
            "clip_skip": call.clip_skip,
        }
    )
    full = agreement_reward(call, target, [2002], checkpoint_model_id=103)
    assert (full.checkpoint, full.lora_f1, full.args, full.total) == (1.0, 1.0, 1.0, 1.75)
    # steps off by 10 and size different: 3 of 5 arguments agree
    off = target.model_copy(update={"steps": call.steps + 10, "width": call.width + 64})
    assert agreement_reward(call, off, [2002], checkpoint_model_id=103).args == pytest.approx(0.6)
    # the creator used two LoRAs, we chose one of them: F1 = 2*1/(1+2)
    assert agreement_reward(call, target, [2002, 2001], checkpoint_model_id=103).lora_f1 == pytest.approx(
        0.6667, abs=1e-4
    )
    # another version of the same model; a different model; a dropped mismatched LoRA; an invalid call
    other = target.model_copy(update={"checkpoint_version_id": 777})
    assert agreement_reward(call, other, [2002], checkpoint_model_id=103).checkpoint == 0.5
    assert agreement_reward(call, other, [2002], checkpoint_model_id=104).checkpoint == 0.0
    assert agreement_reward(call, target, [2002], checkpoint_model_id=103, mismatched=1).total == 1.25
    bad = agreement_reward(None, target, [2002], checkpoint_model_id=None)
    assert bad.invalid and bad.total == -1.0


def test_rebuild_drops_loras_of_another_ecosystem_and_counts_them(tiny_registry, examples):
    fox = examples[0]
    xl = fox.checkpoint_ids.index(1004) if 1004 in fox.checkpoint_ids else None
    if xl is None:  # make the SDXL checkpoint a candidate of this prompt
        fox = fox.model_copy(update={"checkpoint_ids": [*fox.checkpoint_ids[:-1], 1004]})
        xl = len(fox.checkpoint_ids) - 1
    call, _, mismatched = Rebuilder(tiny_registry)(fox, xl, [fox.lora_ids.index(2002)])
    assert call.checkpoint.id == 1004 and call.loras == [] and mismatched == 1


def test_candidates_come_from_the_decoder_and_resume(tiny_registry, examples, tmp_path):
    tok = ToyTokenizer()
    model = add_lora(tiny_gemma(seed=2), LoraShape(r=4, alpha=8))
    model.eval()
    cfg = TrainConfig(rrhf=RRHFConfig(prompts=2, n_sample=4, n_beam=2, max_candidates=5, temperature=1.5))
    out = tmp_path / "candidates.jsonl"
    cands = generate_candidates(examples, tok, torch_logits(model), Rebuilder(tiny_registry), cfg, out, progress=False)
    assert [pc.image_id for pc in cands] == [examples[0].image_id, examples[1].image_id]
    for pc, ex in zip(cands, examples, strict=False):
        assert pc.reward == AGREEMENT_REWARD
        ref = pc.candidates[0]
        assert ref.source == "reference" and ref.checkpoint == ex.answer_checkpoint
        assert ref.reward.checkpoint == 1.0
        assert 2 <= len(pc.candidates) <= 5
        keys = [(c.checkpoint, frozenset(c.loras)) for c in pc.candidates]
        assert len(set(keys)) == len(keys)  # distinct choices only
        assert {c.source for c in pc.candidates[1:]} <= {"beam", "sample"}
        assert all(c.logprob is not None and c.logprob <= 0 for c in pc.candidates[1:])
        assert all(0 <= c.checkpoint < len(ex.checkpoint_ids) for c in pc.candidates)
        assert all(j < len(ex.lora_ids) for c in pc.candidates for j in c.loras)

    def never(_tokens):
        raise AssertionError("cached candidates must not be generated again")

    again = generate_candidates(examples, tok, never, Rebuilder(tiny_registry), cfg, out, progress=False)
    assert [pc.model_dump() for pc in again] == [pc.model_dump() for pc in cands]
    with pytest.raises(UserInputError, match="image"):
        generate_candidates(
            examples,
            tok,
            never,
            Rebuilder(tiny_registry),
            cfg.model_copy(update={"rrhf": cfg.rrhf.model_copy(update={"reward": "image"})}),
            tmp_path / "other.jsonl",
            progress=False,
        )


def test_rrhf_training_raises_the_better_candidates(tiny_registry, examples, tmp_path):
    tok = ToyTokenizer()
    model = add_lora(tiny_gemma(seed=2), LoraShape(r=4, alpha=8))
    cfg = TrainConfig(
        seed=1,
        rrhf=RRHFConfig(
            prompts=3,
            n_sample=4,
            n_beam=2,
            max_candidates=4,
            temperature=2.0,
            lr=3e-2,
            grad_accum=1,
            epochs=8,
            warmup_steps=0,
            checkpoint_every=4,
        ),
    )
    model.eval()
    cands = generate_candidates(
        examples, tok, torch_logits(model), Rebuilder(tiny_registry), cfg, tmp_path / "c.jsonl", progress=False
    )
    report = train_rrhf(model, tok, examples, cands, cfg, tmp_path / "rrhf", progress=False)
    assert report.reward == AGREEMENT_REWARD and report.steps == 8 * report.informative_prompts
    metrics = json.loads((tmp_path / "rrhf" / "metrics.json").read_text())
    assert set(metrics["extras"]) == {"rank", "sft"}
    ranks = metrics["extras"]["rank"]
    first, last = ranks[: report.informative_prompts], ranks[-report.informative_prompts :]
    assert sum(last) < sum(first)
    assert (tmp_path / "rrhf" / "adapter" / "adapter_model.safetensors").is_file()


def test_image_reward_renders_valid_calls_and_scores_them_against_the_request(tiny_registry, examples, tmp_path):
    from PIL import Image

    fox = examples[0]
    call, _, _ = Rebuilder(tiny_registry)(fox, fox.answer_checkpoint, [])
    rendered, scored = [], []

    class Result:
        def __init__(self, path):
            self.path = path

    def render(c):
        rendered.append(c)
        path = tmp_path / f"{len(rendered)}.png"
        Image.new("RGB", (8, 8)).save(path)
        return Result(path)

    class Scorer:
        def score(self, prompt, images):
            scored.append((prompt, len(images)))
            return [type("S", (), {"unified": 0.25 * (i + 1)})() for i in range(len(images))]

    parts = ImageMetricReward(render, Scorer())("(watercolor:1.2) fox", [call, None, call])
    assert [p.total for p in parts] == [0.25, -1.0, 0.5] and parts[1].invalid
    assert len(rendered) == 2 and scored == [("watercolor fox", 2)]


def test_evaluate_counts_the_greedy_choice_against_the_creators(tiny_registry, examples):
    import numpy as np

    from diffagent.training.evaluate import evaluate_choices
    from diffagent.training.tokens import labels_for

    tok = ToyTokenizer()
    fox, anime, photo = examples
    labels = labels_for(tok, 6, 6, 2)

    def oracle(tokens):
        """Prefers the fox's right checkpoint label for every prompt, then 'none'."""
        x = np.zeros(256, dtype=np.float32)
        x[labels.checkpoints[fox.answer_checkpoint]] = 10.0
        x[labels.none] = 10.0
        return x

    report = evaluate_choices("oracle-for-fox", examples, tok, oracle, Rebuilder(tiny_registry), progress=False)
    expected_hits = sum(e.answer_checkpoint == fox.answer_checkpoint for e in examples)
    assert report.examples == 3 and report.checkpoint_accuracy == round(expected_hits / 3, 4)
    assert report.first_candidate_accuracy == round(sum(e.answer_checkpoint == 0 for e in examples) / 3, 4)
    assert report.picked_first == round(float(fox.answer_checkpoint == 0), 4)
    assert report.invalid == 0 and report.examples_with_mismatched_loras == 0
    assert report.reward == AGREEMENT_REWARD
    # the label probe: -log softmax over the six checkpoint labels (10 for the fox's label, 0 for the rest)
    right, wrong = math.log(math.exp(10) + 5) - 10, math.log(math.exp(10) + 5)
    nll = sum(right if e.answer_checkpoint == fox.answer_checkpoint else wrong for e in examples) / 3
    assert report.label_nll == pytest.approx(nll, abs=1e-4)
    assert report.uniform_nll == pytest.approx(sum(math.log(len(e.checkpoint_ids)) for e in examples) / 3, abs=1e-4)


def test_label_nll_is_stable_for_large_logits(tiny_registry, examples):
    import numpy as np

    from diffagent.training.evaluate import evaluate_choices
    from diffagent.training.tokens import labels_for

    tok = ToyTokenizer()
    labels = labels_for(tok, 6, 6, 2)

    def huge(tokens):  # two labels tie at 1000, the rest far below: exp() of these overflows unless shifted
        x = np.full(256, -1000.0, dtype=np.float32)
        x[list(labels.checkpoints[:2])] = 1000.0
        x[labels.none] = 0.0
        return x

    report = evaluate_choices("huge", examples, tok, huge, Rebuilder(tiny_registry), progress=False)
    nll = sum(math.log(2) if e.answer_checkpoint < 2 else 2000 + math.log(2) for e in examples) / 3
    assert report.label_nll == pytest.approx(nll, abs=1e-4)


def test_eval_refuses_a_shuffle_share_outside_0_to_1(tmp_path):
    from diffagent.settings import Settings
    from diffagent.training.config import TrainConfig
    from diffagent.training.pipeline import run_eval

    cfg = TrainConfig(work_dir=tmp_path, data={"pairs": tmp_path / "pairs.jsonl"})
    with pytest.raises(UserInputError, match="between 0 and 1"):
        run_eval(cfg, Settings(), "base", split="val", shuffle=1.5)
