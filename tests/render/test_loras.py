"""LoRA stacks (kohya/Civitai and diffusers formats) and textual-inversion embeddings on cached pipelines."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffagent.errors import UserInputError
from diffagent.families import Family
from diffagent.render.weights import ResolvedWeights


def pixels(res) -> np.ndarray:
    return np.asarray(Image.open(res.path).convert("RGB"), dtype=np.int16)


def test_lora_stack_changes_image_swaps_and_unloads_cleanly(make_renderer, tiny, tmp_path):
    r = make_renderer()
    base = pixels(r.render(tiny.call(1), output_dir=tmp_path))
    kohya = r.render(tiny.call(1, loras=[tiny.lora(21, 0.8)]), output_dir=tmp_path)
    assert np.abs(pixels(kohya) - base).max() > 5
    assert "<lora:kohya-lora:0.8>" in kohya.parameters
    both = pixels(r.render(tiny.call(1, loras=[tiny.lora(21, 0.8), tiny.lora(22, 0.5)]), output_dir=tmp_path))
    assert np.abs(both - pixels(kohya)).max() > 0
    again = pixels(r.render(tiny.call(1, loras=[tiny.lora(21, 0.8)]), output_dir=tmp_path))
    assert np.abs(again - pixels(kohya)).max() <= 1  # swapping back gives the same image
    clean = pixels(r.render(tiny.call(1), output_dir=tmp_path))
    assert np.array_equal(clean, base), "the checkpoint was not restored after unloading the LoRAs"
    assert r.cache.loads == 1  # every swap happened on the one loaded checkpoint
    entry = next(iter(r.cache._entries.values()))
    assert entry.loras == {} and not entry.pipe.get_list_adapters()


def test_lora_weight_zero_is_the_base_image(make_renderer, tiny, tmp_path):
    r = make_renderer()
    base = pixels(r.render(tiny.call(1), output_dir=tmp_path))
    zero = pixels(r.render(tiny.call(1, loras=[tiny.lora(22, 0.0)]), output_dir=tmp_path))
    assert np.abs(zero - base).max() <= 1


def test_sdxl_kohya_lora_with_both_text_encoders(shared_renderer, tiny, tmp_path):
    base = pixels(shared_renderer.render(tiny.call(10), output_dir=tmp_path))
    with_lora = pixels(shared_renderer.render(tiny.call(10, loras=[tiny.lora(23)]), output_dir=tmp_path))
    assert np.abs(with_lora - base).max() > 5


def test_lora_for_another_base_is_refused_before_any_weights_load(make_renderer, tiny, tmp_path):
    """The registry calls the file SD 1.5, but its weights are SDXL: caught from the file header."""
    xl_lora = tiny.files[23][0]

    def resolver(ref):
        if ref.id == 21:
            return ResolvedWeights(path=xl_lora, family=Family.SD1, type="lora", name="mislabelled")
        return tiny.resolver(ref)

    r = make_renderer(resolver=resolver)
    with pytest.raises(UserInputError, match="cross-attention width 80.*width 32"):
        r.render(tiny.call(1, loras=[tiny.lora(21)]), output_dir=tmp_path)
    entry = next(iter(r.cache._entries.values()))
    assert entry.loras == {} and not entry.pipe.get_list_adapters()


def test_registry_family_mismatch_is_refused_before_the_checkpoint_loads(make_renderer, tiny, tmp_path):
    def resolver(ref):
        res = tiny.resolver(ref)
        return res.model_copy(update={"family": Family.SDXL}) if ref.id == 22 else res

    r = make_renderer(resolver=resolver)
    with pytest.raises(UserInputError, match="registered as sdxl"):
        r.render(tiny.call(1, loras=[tiny.lora(22)]), output_dir=tmp_path)
    assert len(r.cache) == 0


def test_embedding_token_is_added_used_and_unloaded(make_renderer, tiny, tmp_path):
    r = make_renderer()
    base = pixels(r.render(tiny.call(1, prompt="a cat"), output_dir=tmp_path))
    res = r.render(tiny.call(1, prompt="a cat", embeddings=[tiny.embedding(31, "tinyemb")]), output_dir=tmp_path)
    assert res.call.prompt == "a cat, tinyemb"  # the trigger word was missing, so it was appended
    assert np.abs(pixels(res) - base).max() > 0
    entry = next(iter(r.cache._entries.values()))
    assert "tinyemb" in entry.pipe.tokenizer.get_added_vocab()
    after = pixels(r.render(tiny.call(1, prompt="a cat"), output_dir=tmp_path))
    assert np.array_equal(after, base)
    assert not any(t.startswith("tinyemb") for t in entry.pipe.tokenizer.get_added_vocab())


def test_negative_embedding_goes_into_the_negative_prompt(shared_renderer, tiny, tmp_path):
    res = shared_renderer.render(
        tiny.call(1, embeddings=[tiny.embedding(31, "badhands", negative=True)]), output_dir=tmp_path
    )
    assert res.call.negative_prompt == "blurry, badhands" and "badhands" not in res.call.prompt


def test_sdxl_embedding_loads_into_both_encoders_and_unloads(shared_renderer, tiny, tmp_path):
    base = pixels(shared_renderer.render(tiny.call(10, prompt="xlemb, a cat"), output_dir=tmp_path))
    res = shared_renderer.render(
        tiny.call(10, prompt="xlemb, a cat", embeddings=[tiny.embedding(32, "xlemb")]), output_dir=tmp_path
    )
    assert res.call.prompt == "xlemb, a cat"
    assert np.abs(pixels(res) - base).max() > 0
    pipe = next(e.pipe for k, e in shared_renderer.cache._entries.items() if k[0] == str(tiny.files[10][0]))
    assert "xlemb" in pipe.tokenizer.get_added_vocab() and "xlemb" in pipe.tokenizer_2.get_added_vocab()
    after = pixels(shared_renderer.render(tiny.call(10, prompt="xlemb, a cat"), output_dir=tmp_path))
    assert np.array_equal(after, base)
    assert "xlemb" not in pipe.tokenizer.get_added_vocab() and "xlemb" not in pipe.tokenizer_2.get_added_vocab()


def test_embedding_for_another_base_is_refused(make_renderer, tiny, tmp_path):
    def resolver(ref):
        if ref.id == 31:
            return ResolvedWeights(path=tiny.files[32][0], family=Family.SD1, type="embedding", name="xl-emb")
        return tiny.resolver(ref)

    r = make_renderer(resolver=resolver)
    with pytest.raises(UserInputError, match="SDXL embedding"):
        r.render(tiny.call(1, embeddings=[tiny.embedding(31, "x")]), output_dir=tmp_path)


def test_real_base_widths_are_named(tmp_path):
    import torch
    from safetensors.torch import save_file

    from diffagent.render.loras import check_lora

    path = tmp_path / "xl.safetensors"
    key = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight"
    save_file({key: torch.zeros(4, 2048)}, str(path))

    class Pipe:
        class unet:  # noqa: N801 - mimics pipe.unet.config
            class config:  # noqa: N801
                cross_attention_dim = 768

    with pytest.raises(UserInputError, match="made for SDXL .* checkpoint is SD 1.x"):
        check_lora(path, Pipe, "xl-style")


def test_two_text_encoder_loras_keep_their_own_weights_and_print_no_load_report(
    make_renderer, tiny, tmp_path, monkeypatch
):
    """Loading a second adapter into a text encoder makes transformers report the first one's weights as MISSING
    and "newly initialized"; they are not, and the report is not shown (transformers logs errors only meanwhile)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file
    from transformers.utils import logging as hf_logging

    from diffagent.render.loras import adapter_name
    from tests.render import tiny_models as tm

    levels = []
    load = StableDiffusionPipeline.load_lora_weights

    def spy(self, *a, **k):
        levels.append(hf_logging.get_verbosity())
        return load(self, *a, **k)

    monkeypatch.setattr(StableDiffusionPipeline, "load_lora_weights", spy)
    before = hf_logging.get_verbosity()

    second = tm.save_kohya_lora(tiny.sd15_pipe, tmp_path / "second.safetensors", seed=7)

    def resolver(ref):
        if ref.id == 99:
            return ResolvedWeights(path=second, family=Family.SD1, type="lora", name="second")
        return tiny.resolver(ref)

    r = make_renderer(resolver=resolver)
    r.render(
        tiny.call(1, loras=[tiny.lora(21), tiny.lora(21).model_copy(update={"id": 99, "name": "second"})]),
        output_dir=tmp_path,
    )
    assert levels == [hf_logging.ERROR] * 2 and hf_logging.get_verbosity() == before
    te = dict(next(iter(r.cache._entries.values())).pipe.text_encoder.named_parameters())
    for vid, path in ((21, tiny.files[21][0]), (99, second)):
        on_disk = load_file(str(path))
        for layer in range(2):
            ours = next(p for n, p in te.items() if f"layers.{layer}.self_attn.q_proj.lora_A.{adapter_name(vid)}." in n)
            theirs = on_disk[f"lora_te_text_model_encoder_layers_{layer}_self_attn_q_proj.lora_down.weight"]
            assert torch.equal(ours.detach(), theirs)
