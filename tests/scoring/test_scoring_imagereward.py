"""ImageReward through its real loading path: image-reward's classes + the compat shims + key checks."""

import json

import pytest
import tiny_scorers
import torch

from diffagent.errors import NotFoundError, UserInputError
from diffagent.scoring import cache, imagereward_compat
from diffagent.scoring.imagereward import ImageRewardScorer

PROMPT = "a photo of a cat"


def scorer(w, **kw):
    return ImageRewardScorer(
        str(kw.pop("checkpoint", w.ir_checkpoint)),
        str(kw.pop("med_config", w.ir_med_config)),
        str(kw.pop("tokenizer", w.ir_tokenizer)),
        device="cpu",
        **kw,
    )


def test_batched_scores_match_upstream_score(tiny_weights):
    ims = tiny_scorers.images(5, seed=1)
    s = scorer(tiny_weights, batch_size=2)
    got = s.score(PROMPT, ims)
    model = s.loaded()
    want = [model.score(PROMPT, im) for im in ims]  # the package's own one-image-at-a-time method
    assert got == pytest.approx(want, abs=1e-5)
    assert len(set(round(g, 6) for g in got)) == 5
    _, ranked = model.inference_rank(PROMPT, ims)
    assert got == pytest.approx(ranked, abs=1e-5)


def test_loaded_weights_are_the_checkpoint(tiny_weights):
    saved = torch.load(tiny_weights.ir_checkpoint, weights_only=True)
    model = scorer(tiny_weights).loaded()
    for key in (
        "mlp.layers.0.weight",
        "blip.visual_encoder.pos_embed",
        "blip.text_encoder.encoder.layer.0.crossattention.self.key.weight",
    ):
        assert torch.equal(model.state_dict()[key], saved[key]), key


def test_loads_once(tiny_weights):
    cache.clear()
    a, b = scorer(tiny_weights), scorer(tiny_weights, batch_size=7)
    assert a.loaded() is b.loaded()


def test_incomplete_checkpoint_is_refused(tiny_weights, tmp_path):
    # upstream RM.load uses strict=False and would score with a random head
    sd = torch.load(tiny_weights.ir_checkpoint, weights_only=True)
    for k in [k for k in sd if k.startswith("mlp.")]:
        del sd[k]
    path = tmp_path / "no-head.pt"
    torch.save(sd, path)
    with pytest.raises(UserInputError, match="parameters are missing.*mlp.layers"):
        scorer(tiny_weights, checkpoint=path).loaded()


def test_foreign_checkpoint_is_refused(tiny_weights, tmp_path):
    path = tmp_path / "garbage.pt"
    torch.save({"garbage.weight": torch.zeros(3)}, path)  # upstream accepts this and returns -0.1618
    with pytest.raises(UserInputError, match="not an ImageReward checkpoint"):
        scorer(tiny_weights, checkpoint=path).loaded()


def test_text_config_must_fit(tiny_weights, tmp_path):
    cfg = json.loads(tiny_weights.ir_med_config.read_text())
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({**cfg, "hidden_size": 512}))
    with pytest.raises(UserInputError, match="hidden_size 512"):
        scorer(tiny_weights, med_config=wide).loaded()
    small_vocab = tmp_path / "small_vocab.json"
    small_vocab.write_text(json.dumps({**cfg, "vocab_size": 20}))
    with pytest.raises(UserInputError, match="do not belong together"):
        scorer(tiny_weights, med_config=small_vocab).loaded()
    deeper = tmp_path / "deeper.json"
    deeper.write_text(json.dumps({**cfg, "intermediate_size": 32}))
    with pytest.raises(UserInputError, match="does not fit"):
        scorer(tiny_weights, med_config=deeper).loaded()


def test_tokenizer_folder_must_hold_a_vocab(tiny_weights, tmp_path):
    with pytest.raises(UserInputError, match="no vocab.txt"):
        scorer(tiny_weights, tokenizer=tmp_path).loaded()
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    with pytest.raises(UserInputError, match="only"):
        scorer(tiny_weights, tokenizer=tmp_path).loaded()


def test_hub_refs_offline(tiny_weights, tmp_path):
    s = scorer(
        tiny_weights, checkpoint="hf:THUDM/ImageReward/ImageReward.pt", allow_downloads=False, hub_cache_dir=tmp_path
    )
    with pytest.raises(NotFoundError, match="downloads are disabled"):
        s.loaded()


def test_vit_spec_of_the_released_model():
    meta = {
        "blip.visual_encoder.patch_embed.proj.weight": torch.empty(1024, 3, 16, 16, device="meta"),
        "blip.visual_encoder.pos_embed": torch.empty(1, 197, 1024, device="meta"),
        **{f"blip.visual_encoder.blocks.{i}.norm1.weight": torch.empty(1024, device="meta") for i in range(24)},
    }
    spec = imagereward_compat.vit_spec(meta)
    assert (spec.width, spec.depth, spec.heads, spec.patch) == (1024, 24, 16, 16)
    assert spec.is_released
    with pytest.raises(UserInputError, match="divisible"):
        imagereward_compat.vit_spec(meta, heads=7)
