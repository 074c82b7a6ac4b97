"""best_of_n picks the highest unified score; candidate expansion; serve-time wrapper with PNG metadata."""

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tiny_scorers
from PIL import Image, PngImagePlugin

from diffagent.apicall import Alternative, ApiCall, LoraRef, ModelRef
from diffagent.errors import NotFoundError
from diffagent.families import Family
from diffagent.scoring import ReferenceStats
from diffagent.scoring.best_of import PNG_SCORES_KEY, best_of_n, candidate_calls, render_best_of, scoring_prompt
from diffagent.scoring.unified import UnifiedScorer


def ref(i, family=Family.SD1):
    return ModelRef(id=i, air=f"urn:air:test:{i}", name=f"ckpt-{i}", family=family)


def make_call(**kw):
    base = dict(checkpoint=ref(1), prompt="a red fox, <lora:fox:0.8>, (masterpiece:1.2)", steps=4, seed=7)
    base.update(kw)
    return ApiCall(**base)


@dataclass
class FakeResult:
    path: Path
    seconds: float
    call: ApiCall


class FakeRenderer:
    """Writes a flat grey PNG whose brightness is set per checkpoint id and seed."""

    def __init__(self, folder: Path, brightness, fail_ids=()):
        self.folder = folder
        self.brightness = brightness
        self.fail_ids = set(fail_ids)
        self.rendered: list[ApiCall] = []

    def __call__(self, call, **kw):
        if call.checkpoint.id in self.fail_ids:
            raise NotFoundError(f"weights of {call.checkpoint.name} are not available offline")
        self.rendered.append(call)
        if kw.get("progress"):
            for s in range(1, call.steps + 1):
                kw["progress"](s, call.steps)
        v = self.brightness(call)
        path = self.folder / f"{len(self.rendered)}.png"
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"{call.prompt}\nSteps: {call.steps}")
        Image.new("RGB", (16, 16), (v, v, v)).save(path, pnginfo=info)
        return FakeResult(path=path, seconds=0.01, call=call)


class BrightnessScorer:
    metric = "hps_v2"

    def __init__(self):
        self.prompts = []

    def score(self, prompt, images):
        self.prompts.append(prompt)
        return [float(np.asarray(im.convert("L")).mean()) / 255.0 for im in images]


def brightness_unified():
    stats = ReferenceStats.model_validate({"metrics": {"hps_v2": {"mean": 0.5, "std": 0.1}}})
    return UnifiedScorer({"hps_v2": BrightnessScorer()}, weights={"hps_v2": 1}, stats=stats)


def test_best_of_n_picks_the_highest_unified_score(tmp_path):
    levels = {1: 60, 2: 200, 3: 120}
    render = FakeRenderer(tmp_path, lambda c: levels[c.checkpoint.id])
    calls = [make_call(checkpoint=ref(i)) for i in (1, 2, 3)]
    best, scores = best_of_n(calls, render, brightness_unified(), "a red fox")
    assert best.call.checkpoint.id == 2
    assert [s.chosen for s in scores] == [False, True, False]
    assert [round(s.score.metrics["hps_v2"].raw * 255) for s in scores] == [60, 200, 120]
    assert max(s.score.unified for s in scores) == scores[1].score.unified
    assert len(render.rendered) == 3


def test_ties_go_to_the_selector_ranking(tmp_path):
    render = FakeRenderer(tmp_path, lambda c: 100)
    best, scores = best_of_n([make_call(checkpoint=ref(i)) for i in (5, 6)], render, brightness_unified(), "x")
    assert best.call.checkpoint.id == 5


def test_unavailable_candidates_are_skipped_and_recorded(tmp_path):
    render = FakeRenderer(tmp_path, lambda c: 10 * c.checkpoint.id, fail_ids={3})
    calls = [make_call(checkpoint=ref(i)) for i in (1, 3, 2)]
    best, scores = best_of_n(calls, render, brightness_unified(), "x")
    assert best.call.checkpoint.id == 2
    assert scores[1].error and "not available" in scores[1].error and scores[1].score is None
    with pytest.raises(NotFoundError):
        best_of_n([make_call(checkpoint=ref(3))], render, brightness_unified(), "x")


def test_real_scorer_choice_is_the_argmax(tmp_path, tiny_config):
    render = FakeRenderer(tmp_path, lambda c: (37 * c.seed) % 256)
    calls = [make_call(seed=s) for s in range(5)]
    scorer = UnifiedScorer.from_config(tiny_config)
    best, scores = best_of_n(calls, render, scorer, "a red fox")
    unified = [s.score.unified for s in scores]
    assert best.call.seed == unified.index(max(unified))
    assert len(set(round(u, 6) for u in unified)) > 1  # the tiny models do tell the images apart


def test_candidate_calls_alternatives_then_seeds():
    sdxl_lora = LoraRef(**ref(50, Family.SDXL).model_dump(), weight=0.7)
    sd1_lora = LoraRef(**ref(51).model_dump(), weight=0.5)
    call = make_call(
        loras=[sd1_lora],
        alternatives=[
            Alternative(checkpoint=ref(1), score=0.9),  # the selected one again: skipped
            Alternative(checkpoint=ref(2), score=0.8),
            Alternative(checkpoint=ref(3, Family.PONY), score=0.7),
        ],
    )
    cands = candidate_calls(call, 5)
    assert [s for s, _ in cands] == ["selected", "alternative", "alternative", "seed", "seed"]
    assert [c.checkpoint.id for _, c in cands] == [1, 2, 3, 1, 1]
    assert [c.seed for _, c in cands] == [7, 7, 7, 8, 9]
    assert cands[1][1].loras == [sd1_lora]
    assert cands[2][1].loras == []  # an SD 1.5 LoRA cannot load into a Pony checkpoint
    assert all(c.alternatives == [] for _, c in cands)
    assert [c.checkpoint.id for _, c in candidate_calls(call, 2)] == [1, 2]
    assert len(candidate_calls(call, 1)) == 1
    with pytest.raises(ValueError):
        candidate_calls(call, 0)
    # an SDXL lora on an SD1 call is invalid in the first place; alternatives never make one valid
    assert sdxl_lora.family == Family.SDXL


def test_scoring_prompt_strips_renderer_syntax():
    assert scoring_prompt("a red fox, <lora:fox:0.8>, (masterpiece:1.2), [blurry]") == "a red fox, masterpiece, blurry"
    assert scoring_prompt("plain words") == "plain words"


def test_render_best_of_writes_scores_into_the_png(tmp_path):
    render = FakeRenderer(tmp_path, lambda c: {7: 90, 8: 200, 9: 30}[c.seed])
    steps = []
    scorer = brightness_unified()
    result = render_best_of(make_call(), 3, scorer=scorer, render_fn=render, progress=lambda s, t: steps.append((s, t)))
    assert [c.call.seed for c in result.candidates] == [7, 8, 9]
    assert result.best.call.seed == 8 and result.best_index == 1
    assert result.scores == [c.score.unified for c in result.candidates]
    assert steps[-1] == (12, 12) and [s for s, _ in steps] == list(range(1, 13))
    assert scorer.scorers["hps_v2"].prompts == ["a red fox, masterpiece"]
    with Image.open(result.best.path) as im:
        meta = json.loads(im.text[PNG_SCORES_KEY])
        assert im.text["parameters"].startswith("a red fox")  # the renderer's chunk is kept
    assert meta["best_index"] == 1 and len(meta["candidates"]) == 3
    assert [c["scores"]["unified"] for c in meta["candidates"]] == pytest.approx(result.scores)


def test_render_best_of_user_prompt_and_cancel(tmp_path):
    render = FakeRenderer(tmp_path, lambda c: 10)
    scorer = brightness_unified()
    render_best_of(make_call(), 2, prompt="what the user typed", scorer=scorer, render_fn=render)
    assert scorer.scorers["hps_v2"].prompts == ["what the user typed"]
    cancel = threading.Event()
    cancel.set()
    RenderCancelled = pytest.importorskip("diffagent.render").RenderCancelled

    with pytest.raises(RenderCancelled):
        render_best_of(make_call(), 2, scorer=scorer, render_fn=render, cancel=cancel)


@pytest.mark.slow
def test_render_best_of_with_the_real_renderer_on_tiny_pipelines(tmp_path, tiny_config):
    tm = tiny_scorers.render_tiny_models()
    from diffagent.render import RenderCancelled, Renderer
    from diffagent.render.weights import ResolvedWeights
    from diffagent.settings import Settings

    tm.quiet_diffusers()
    dirs = {}
    for vid, seed in ((1, 0), (2, 1)):
        tm.build_sd15(tmp_path / f"ckpt{vid}", seed=seed)
        dirs[vid] = tmp_path / f"ckpt{vid}"

    def resolver(r):
        return ResolvedWeights(path=dirs[r.id], family=Family.SD1, type="checkpoint", name=r.name)

    settings = Settings(data_dir=tmp_path / "data", device="cpu", allow_downloads=False, registry=tmp_path / "none.db")
    renderer = Renderer(settings, resolver=resolver)

    def render_fn(call, *, settings=None, registry=None, progress=None, cancel=None, output_dir=None):
        return renderer.render(call, progress=progress, cancel=cancel, output_dir=output_dir)

    call = ApiCall(
        checkpoint=ref(1),
        prompt="a photo of a cat",
        steps=2,
        width=64,
        height=64,
        seed=3,
        sampler="Euler",
        alternatives=[Alternative(checkpoint=ref(2), score=0.5)],
    )
    steps = []
    try:
        result = render_best_of(
            call,
            3,
            scorer=UnifiedScorer.from_config(tiny_config),
            render_fn=render_fn,
            output_dir=tmp_path / "out",
            progress=lambda s, t: steps.append((s, t)),
        )
        cancel = threading.Event()
        with pytest.raises(RenderCancelled):
            render_best_of(
                call,
                2,
                scorer=UnifiedScorer.from_config(tiny_config),
                render_fn=render_fn,
                output_dir=tmp_path / "out",
                cancel=cancel,
                progress=lambda s, t: cancel.set(),
            )
    finally:
        renderer.close()
    assert [(c.source, c.call.checkpoint.id, c.call.seed) for c in result.candidates] == [
        ("selected", 1, 3),
        ("alternative", 2, 3),
        ("seed", 1, 4),
    ]
    unified = [c.score.unified for c in result.candidates]
    assert result.best_index == unified.index(max(unified))
    assert steps[-1] == (6, 6)
    with Image.open(result.best.path) as im:
        assert "Steps: 2" in im.text["parameters"]
        assert json.loads(im.text[PNG_SCORES_KEY])["best_index"] == result.best_index
