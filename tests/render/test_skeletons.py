"""The shipped config skeletons describe the real SD 1.5 / SDXL architectures (checked on the meta device)."""

from __future__ import annotations

import pytest

from diffagent.render.skeletons import ensure_skeleton

pytest.importorskip("open_clip", reason="the CLIP BPE merges come from open_clip_torch")

# parameter counts of the reference models (runwayml SD 1.5, stabilityai SDXL base 1.0)
REAL = {
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


@pytest.fixture(scope="module")
def skeleton_root(tmp_path_factory):
    return tmp_path_factory.mktemp("skeleton-cache")


@pytest.mark.parametrize("eco", ["sd1", "sdxl"])
def test_skeleton_builds_the_real_architecture(skeleton_root, eco):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    d = ensure_skeleton(eco, skeleton_root)
    assert ensure_skeleton(eco, skeleton_root) == d  # second call reuses the folder
    with init_empty_weights():
        models = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(d / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(d / "text_encoder")),
        }
        if eco == "sdxl":
            models["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(d / "text_encoder_2"))
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    assert counts == REAL[eco]


def test_skeleton_tokenizer_is_the_clip_bpe(skeleton_root):
    import open_clip
    from transformers import CLIPTokenizer

    d = ensure_skeleton("sdxl", skeleton_root)
    tok = CLIPTokenizer.from_pretrained(d / "tokenizer")
    tok2 = CLIPTokenizer.from_pretrained(d / "tokenizer_2")
    assert len(tok) == 49408 and tok.pad_token == "<|endoftext|>" and tok2.pad_token == "!"
    reference = open_clip.get_tokenizer("ViT-L-14")
    for prompt in ["a photo of a cat", "masterpiece, (best quality:1.2), 1girl <lora:x:0.5>", "Ünïcödé café 東京"]:
        ours = tok(prompt).input_ids
        theirs = reference([prompt])[0].tolist()
        assert ours == theirs[: len(ours)]
