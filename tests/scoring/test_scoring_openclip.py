"""CLIP score and HPS v2 through their real loading path (open_clip + local checkpoint files)."""

import pytest
import tiny_scorers
import torch
from safetensors.torch import load_file, save_file

from diffagent.errors import NotFoundError, UserInputError
from diffagent.scoring import cache, openclip_models
from diffagent.scoring.clip import ClipScorer
from diffagent.scoring.hps import HpsV2Scorer
from diffagent.scoring.types import MetricScorer

PROMPT = "a photo of a red car"


class PickledThing:  # an arbitrary pickled class: weights_only loading must refuse it
    pass


def reference_cosines(config, checkpoint, images, prompt):
    """Independent computation with open_clip's own loader and API."""
    import open_clip

    open_clip.add_model_config(config)
    model, _, preprocess = open_clip.create_model_and_transforms(config.stem, pretrained=str(checkpoint))
    tok = open_clip.get_tokenizer(config.stem)
    with torch.no_grad():
        fi = model.encode_image(torch.stack([preprocess(im) for im in images]))
        ft = model.encode_text(tok([prompt]))
    fi = fi / fi.norm(dim=-1, keepdim=True)
    ft = ft / ft.norm(dim=-1, keepdim=True)
    return torch.diagonal(fi @ ft.T.expand(-1, len(images))).tolist()  # hpsv2: diag(img @ txt.T)


def test_hps_is_the_cosine_of_the_hps_checkpoint(tiny_weights):
    ims = tiny_scorers.images(5)
    scorer = HpsV2Scorer(str(tiny_weights.hps_checkpoint), str(tiny_weights.clip_config), device="cpu", batch_size=2)
    got = scorer.score(PROMPT, ims)
    want = reference_cosines(tiny_weights.clip_config, tiny_weights.hps_checkpoint, ims, PROMPT)
    assert got == pytest.approx(want, abs=1e-5)
    assert len(set(round(g, 6) for g in got)) == 5  # distinct images, distinct scores
    assert isinstance(scorer, MetricScorer)


def test_clip_score_is_100_times_clamped_cosine(tiny_weights):
    ims = tiny_scorers.images(4, seed=3)
    scorer = ClipScorer(str(tiny_weights.clip_config), str(tiny_weights.clip_checkpoint), device="cpu")
    got = scorer.score(PROMPT, ims)
    want = reference_cosines(tiny_weights.clip_config, tiny_weights.clip_checkpoint, ims, PROMPT)
    assert got == pytest.approx([100 * max(c, 0.0) for c in want], abs=1e-3)


def test_clip_score_clamps_negative_cosines(tiny_weights, monkeypatch):
    monkeypatch.setattr(openclip_models, "cosines", lambda *a, **k: [-0.25, 0.0, 0.3125])
    scorer = ClipScorer(str(tiny_weights.clip_config), str(tiny_weights.clip_checkpoint), device="cpu")
    assert scorer.score(PROMPT, tiny_scorers.images(3)) == [0.0, 0.0, 31.25]


def test_models_load_once_per_process(tiny_weights, monkeypatch):
    cache.clear()
    calls = []
    real_load = openclip_models.load
    monkeypatch.setattr(openclip_models, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    a = HpsV2Scorer(str(tiny_weights.hps_checkpoint), str(tiny_weights.clip_config), device="cpu")
    b = HpsV2Scorer(str(tiny_weights.hps_checkpoint), str(tiny_weights.clip_config), device="cpu")
    assert a.loaded() is b.loaded()
    a.score(PROMPT, tiny_scorers.images(1))
    b.score(PROMPT, tiny_scorers.images(1))
    assert len(calls) == 1
    # other weights: another model
    c = ClipScorer(str(tiny_weights.clip_config), str(tiny_weights.clip_checkpoint), device="cpu")
    assert c.loaded() is not a.loaded()
    assert len(calls) == 2


def test_checkpoint_for_another_architecture_is_refused(tiny_weights, tmp_path):
    sd = load_file(tiny_weights.clip_checkpoint)
    sd.pop("visual.proj")
    broken = tmp_path / "broken.safetensors"
    save_file(sd, broken)
    with pytest.raises(UserInputError, match="does not fit"):
        HpsV2Scorer(str(broken), str(tiny_weights.clip_config), device="cpu").score(PROMPT, tiny_scorers.images(1))


def test_pickled_objects_are_refused_unless_trusted(tiny_weights, tmp_path):
    sd = load_file(tiny_weights.clip_checkpoint)
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": sd, "extra": PickledThing()}, path)
    with pytest.raises(UserInputError, match="trust_pickles"):
        HpsV2Scorer(str(path), str(tiny_weights.clip_config), device="cpu").loaded()


def test_missing_files_and_unknown_models(tiny_weights, tmp_path):
    with pytest.raises(NotFoundError, match="HPS v2 checkpoint"):
        HpsV2Scorer(str(tmp_path / "nope.pt"), str(tiny_weights.clip_config), device="cpu").loaded()
    with pytest.raises(UserInputError, match="unknown open_clip model"):
        ClipScorer("ViT-Nope-99", str(tiny_weights.clip_checkpoint), device="cpu").loaded()
    with pytest.raises(NotFoundError, match="model config"):
        ClipScorer(str(tmp_path / "absent.json"), str(tiny_weights.clip_checkpoint), device="cpu").loaded()


def test_hub_weights_offline_fail_clearly(tiny_weights, tmp_path):
    scorer = HpsV2Scorer(
        "hf:xswu/HPSv2/HPS_v2.1_compressed.pt",
        str(tiny_weights.clip_config),
        device="cpu",
        allow_downloads=False,
        hub_cache_dir=tmp_path,
    )
    with pytest.raises(NotFoundError, match="hf download xswu/HPSv2 HPS_v2.1_compressed.pt"):
        scorer.loaded()
