"""Loading (folder, single file), rendering, seeds, clip skip, PNG metadata, cache reuse."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffagent.errors import UserInputError
from diffagent.families import Family
from diffagent.render import parse_png_parameters


def pixels(result) -> np.ndarray:
    return np.asarray(Image.open(result.path).convert("RGB"), dtype=np.int16)


def test_sd15_folder_renders_png_with_parameters(shared_renderer, tiny, tmp_path):
    call = tiny.call(1, width=64, height=96)
    res = shared_renderer.render(call, output_dir=tmp_path)
    assert res.path.parent == tmp_path and res.path.suffix == ".png"
    assert (res.width, res.height) == (64, 96) and Image.open(res.path).size == (64, 96)
    assert res.device == "cpu" and res.seed == 42 and res.seconds > 0
    meta = parse_png_parameters(res.path)
    assert meta.prompt == call.prompt and meta.negative_prompt == "blurry"
    assert (meta.steps, meta.sampler, meta.cfg_scale, meta.seed, meta.size) == (3, "Euler", 7.0, 42, (64, 96))
    assert meta.model == "tiny-sd15"
    assert meta.settings["Model hash"] == f"{1:064x}"[:10]
    assert not list(tmp_path.glob(".*")), "temporary files left next to the PNG"


def test_same_seed_same_image_other_seed_differs(shared_renderer, tiny, tmp_path):
    a = pixels(shared_renderer.render(tiny.call(1, seed=7), output_dir=tmp_path))
    b = pixels(shared_renderer.render(tiny.call(1, seed=7), output_dir=tmp_path))
    c = pixels(shared_renderer.render(tiny.call(1, seed=8), output_dir=tmp_path))
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 0


@pytest.mark.parametrize("single", [2, 3], ids=["safetensors", "ckpt"])
def test_single_file_matches_diffusers_folder(shared_renderer, tiny, tmp_path, single):
    folder = pixels(shared_renderer.render(tiny.call(1), output_dir=tmp_path))
    one_file = pixels(shared_renderer.render(tiny.call(single), output_dir=tmp_path))
    assert np.array_equal(folder, one_file)


def test_sdxl_folder_and_single_file(shared_renderer, tiny, tmp_path):
    folder = shared_renderer.render(tiny.call(10, sampler="Euler a", clip_skip=2), output_dir=tmp_path)
    single = shared_renderer.render(tiny.call(11, sampler="Euler a", clip_skip=2), output_dir=tmp_path)
    assert (folder.width, folder.height) == (64, 64)
    # weights are bit-identical (test_single_file_weights_are_exact); kernels on differently laid-out tensors
    # may round one pixel value the other way
    assert np.abs(pixels(folder) - pixels(single)).max() <= 1


@pytest.mark.parametrize("folder,single", [(1, 2), (10, 11)], ids=["sd15", "sdxl"])
def test_single_file_weights_are_exact(shared_renderer, tiny, tmp_path, folder, single):
    from diffagent.render.pipelines import load_pipeline

    eco = "sd1" if folder == 1 else "sdxl"
    a = load_pipeline(tiny.files[folder][0], eco, device="cpu", dtype=None, skeleton=None)
    b = load_pipeline(tiny.files[single][0], eco, device="cpu", dtype=None, skeleton=tiny.skeletons[eco])
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(a, name, None) is None:
            continue
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        assert all(sa[k].equal(sb[k]) for k in sa), name


def test_clip_skip_changes_the_image(shared_renderer, tiny, tmp_path):
    one = pixels(shared_renderer.render(tiny.call(1, clip_skip=1), output_dir=tmp_path))
    two = shared_renderer.render(tiny.call(1, clip_skip=2), output_dir=tmp_path)
    assert np.abs(one - pixels(two)).max() > 0
    assert parse_png_parameters(two.path).clip_skip == 2


def test_sdxl_clip_skip_2_is_the_default_and_3_is_not(shared_renderer, tiny, tmp_path):
    imgs = {n: pixels(shared_renderer.render(tiny.call(10, clip_skip=n), output_dir=tmp_path)) for n in (1, 2, 3)}
    assert np.array_equal(imgs[1], imgs[2])
    assert np.abs(imgs[2] - imgs[3]).max() > 0


def test_pipeline_cache_reuses_loaded_checkpoint(make_renderer, tiny, tmp_path):
    r = make_renderer()
    first = r.render(tiny.call(1), output_dir=tmp_path)
    second = r.render(tiny.call(1, seed=3, sampler="DDIM"), output_dir=tmp_path)
    assert not first.cache_hit and second.cache_hit
    assert r.cache.loads == 1 and len(r.cache) == 1
    assert second.timings["load"] < first.timings["load"]


def test_cache_evicts_least_recently_used_under_budget(make_renderer, tiny, tmp_path):
    r = make_renderer()
    r.render(tiny.call(1), output_dir=tmp_path)
    one = r.cache.used_bytes
    r.cache.budget_bytes = int(one * 1.5)  # room for one tiny SD 1.5 pipeline only
    r.render(tiny.call(2), output_dir=tmp_path)
    assert len(r.cache) == 1 and r.cache.evictions == 1
    r.render(tiny.call(2), output_dir=tmp_path)
    assert r.cache.loads == 2
    r.cache.resize(10 * one)
    r.render(tiny.call(1), output_dir=tmp_path)
    assert len(r.cache) == 2 and r.cache.loads == 3
    r.cache.resize(one)  # shrinking evicts down to the most recently used pipeline
    assert len(r.cache) == 1 and str(tiny.files[1][0]) in next(iter(r.cache._entries))[0]


def test_unsupported_family_is_refused_before_loading(make_renderer, tiny, tmp_path):
    from diffagent.apicall import ApiCall, ModelRef

    r = make_renderer()
    call = ApiCall(
        checkpoint=ModelRef(id=1, air="x", name="sd2 thing", family=Family.SD2),
        prompt="x",
        width=64,
        height=64,
        steps=1,
    )
    with pytest.raises(UserInputError, match="SD 1.x, SDXL, FLUX.1 and SD 3"):
        r.render(call, output_dir=tmp_path)
    assert len(r.cache) == 0


def test_mislabelled_single_file_is_refused(make_renderer, tiny, tmp_path):
    from diffagent.render.weights import ResolvedWeights

    sdxl_file = tiny.files[11][0]

    def lying(ref):
        return ResolvedWeights(path=sdxl_file, family=ref.family, type="checkpoint", name=ref.name)

    r = make_renderer(resolver=lying)
    with pytest.raises(UserInputError, match="sdxl checkpoint by its weights"):
        r.render(tiny.call(2), output_dir=tmp_path)


def test_preview_is_bounded(shared_renderer, tiny, tmp_path):
    res = shared_renderer.render(tiny.call(1), output_dir=tmp_path)
    prev = Image.open(__import__("io").BytesIO(res.preview_png))
    assert max(prev.size) <= 512 and len(res.preview_png) <= 512 * 1024
    assert "preview_png" not in res.model_dump_json()


def test_checkpoint_family_disagreeing_with_registry_is_refused(make_renderer, tiny, tmp_path):
    def resolver(ref):
        return tiny.resolver(ref).model_copy(update={"family": Family.SDXL})

    r = make_renderer(resolver=resolver)
    with pytest.raises(UserInputError, match="registered as sdxl, but the call says sd1"):
        r.render(tiny.call(1), output_dir=tmp_path)
    assert len(r.cache) == 0
