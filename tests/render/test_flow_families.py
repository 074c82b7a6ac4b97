"""FLUX.1 and Stable Diffusion 3 through ``Renderer.render``: tiny random pipelines in diffusers format (CLIP and T5
encoders built offline), flow-matching samplers, LoRAs (diffusers/PEFT, and FLUX.1's in every layout they are
published in), and the calls these families refuse (a FLUX.1 negative prompt, embeddings, a standalone VAE, an SD
sampler, a single file without its reference)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from diffagent.apicall import ApiCall, EmbeddingRef, LoraRef, ModelRef
from diffagent.errors import NotFoundError, UserInputError
from diffagent.families import Family
from diffagent.render.weights import ResolvedWeights

from . import tiny_models as tm


class FlowModels:
    def __init__(self, root):
        tm.quiet_diffusers()
        flux, sd3 = tm.build_flux(root / "flux"), tm.build_sd3(root / "sd3")
        (root / "flux-transformer.safetensors").write_bytes(b"")
        single = tm.save_flux_single_file(flux, root / "flux1-tiny.safetensors", prefix="model.diffusion_model.")
        broken = tm.save_flux_single_file(flux, root / "flux1-broken.safetensors", drop=("final_layer.linear.bias",))
        fp8 = tm.save_flux_single_file(flux, root / "flux1-fp8.safetensors", dtype=tm.torch.float8_e4m3fn)
        sd3_single = tm.save_sd3_single_file(sd3, root / "sd35-tiny.safetensors")
        self.references = {104: root / "flux", 105: root / "flux", 106: root / "sd3", 107: root / "flux"}
        self.files = {
            101: (root / "flux", Family.FLUX, "diffusers", "tiny-flux"),
            102: (root / "sd3", Family.SD3, "diffusers", "tiny-sd3"),
            103: (root / "flux-transformer.safetensors", Family.FLUX, "checkpoint", "flux-single"),
            104: (single, Family.FLUX, "checkpoint", "flux-single-file"),
            105: (broken, Family.FLUX, "checkpoint", "flux-broken-file"),
            106: (sd3_single, Family.SD3, "checkpoint", "sd3-single-file"),
            107: (fp8, Family.FLUX, "checkpoint", "flux-fp8-file"),
            111: (tm.save_transformer_lora(flux, root / "flux-lora.safetensors"), Family.FLUX, "lora", "flux-lora"),
            112: (tm.save_transformer_lora(sd3, root / "sd3-lora.safetensors", seed=2), Family.SD3, "lora", "sd3-lora"),
        }
        for vid, (layout, path) in enumerate(tm.save_flux_lora_layouts(flux, root).items(), start=121):
            self.files[vid] = (path, Family.FLUX, "lora", f"flux-{layout}")
        for vid, (layout, path) in enumerate(tm.save_sd3_lora_layouts(sd3, root).items(), start=131):
            self.files[vid] = (path, Family.SD3, "lora", f"sd3-{layout}")
        from safetensors.torch import save_file

        save_file(
            {
                "unet.down_blocks.0.attentions.0.to_q.lora_A.weight": tm.torch.zeros(2, 8),
                "unet.down_blocks.0.attentions.0.to_q.lora_B.weight": tm.torch.zeros(8, 2),
            },
            str(root / "unet-lora.safetensors"),
        )
        self.files[125] = (root / "unet-lora.safetensors", Family.FLUX, "lora", "mislabelled-unet-lora")

    def ref(self, vid: int) -> ModelRef:
        _, family, _, name = self.files[vid]
        return ModelRef(id=vid, air=f"urn:air:test:{vid}", name=name, family=family)

    def resolver(self, ref: ModelRef) -> ResolvedWeights:
        if ref.id not in self.files:
            raise NotFoundError(f"no tiny model {ref.id}")
        path, family, kind, name = self.files[ref.id]
        return ResolvedWeights(
            path=path,
            sha256=f"{ref.id:064x}",
            family=family,
            type=kind,
            name=name,
            reference=self.references.get(ref.id),
        )

    def call(self, checkpoint: int, **kw) -> ApiCall:
        base = dict(
            prompt="a red fox in the snow",
            negative_prompt="",
            steps=2,
            cfg_scale=3.5,
            width=64,
            height=64,
            seed=7,
            sampler="Euler",
        )
        base.update(kw)
        return ApiCall(checkpoint=self.ref(checkpoint), **base)


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    return FlowModels(tmp_path_factory.mktemp("flow-models"))


@pytest.fixture(scope="module")
def renderer(flow, tmp_path_factory):
    from diffagent.render import Renderer
    from diffagent.settings import Settings

    data = tmp_path_factory.mktemp("flow-renderer")
    r = Renderer(
        Settings(data_dir=data, device="cpu", allow_downloads=False, registry=data / "none.db", pipeline_cache_gb=1.0),
        resolver=flow.resolver,
    )
    yield r
    r.close()


def pixels(result) -> np.ndarray:
    return np.asarray(Image.open(result.path), dtype=np.int16)


@pytest.mark.parametrize("vid", [101, 102])
def test_a_flow_model_renders_reproducibly_by_seed(flow, renderer, vid):
    first = renderer.render(flow.call(vid))
    again = renderer.render(flow.call(vid))
    other = renderer.render(flow.call(vid, seed=8))
    assert (first.width, first.height) == (64, 64) and again.cache_hit
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))
    assert f"Model: tiny-{'flux' if vid == 101 else 'sd3'}" in first.parameters and "Sampler: Euler" in first.parameters


def test_the_prompt_reaches_the_model_without_emphasis_syntax(flow, renderer):
    """T5 reads text, not A1111 weights: "(fox:1.3)" renders as "fox" would; another prompt renders differently."""
    base = pixels(renderer.render(flow.call(101, prompt="a red fox in the snow")))
    weighted = pixels(renderer.render(flow.call(101, prompt="a red (fox:1.3) in the ((snow))")))
    other = pixels(renderer.render(flow.call(101, prompt="a blue whale under the sea")))
    assert np.array_equal(base, weighted) and not np.array_equal(base, other)


def test_sd3_takes_a_negative_prompt_and_heun(flow, renderer):
    plain = pixels(renderer.render(flow.call(102, cfg_scale=5.0)))
    negative = pixels(renderer.render(flow.call(102, cfg_scale=5.0, negative_prompt="blurry, dark")))
    heun = renderer.render(flow.call(102, cfg_scale=5.0, sampler="Heun"))
    assert not np.array_equal(plain, negative)
    assert not np.array_equal(plain, pixels(heun)) and "Sampler: Heun" in heun.parameters


@pytest.mark.parametrize(("vid", "lora"), [(101, 111), (102, 112)])
def test_a_transformer_lora_loads_swaps_and_comes_off(flow, renderer, vid, lora):
    base = pixels(renderer.render(flow.call(vid)))
    ref = LoraRef(**flow.ref(lora).model_dump(), weight=1.0)
    with_lora = renderer.render(flow.call(vid, loras=[ref]))
    assert not np.array_equal(base, pixels(with_lora))
    assert f"<lora:{ref.name}:1>" in with_lora.parameters
    assert np.array_equal(base, pixels(renderer.render(flow.call(vid))))  # unloaded: the checkpoint again


def test_flux_loras_in_every_published_layout_render_the_same_update(flow, renderer):
    """ai-toolkit (diffusers names), kohya, ComfyUI's kohya-style names and ComfyUI names with PEFT's lora_A / lora_B:
    the same random update in each layout changes the image, and identically."""
    base = pixels(renderer.render(flow.call(101)))
    images = {}
    for vid in (121, 122, 123, 124):
        ref = LoraRef(**flow.ref(vid).model_dump(), weight=0.8)
        images[ref.name] = pixels(renderer.render(flow.call(101, loras=[ref])))
    assert set(images) == {"flux-ai-toolkit", "flux-kohya", "flux-comfyui-kohya", "flux-comfyui-peft"}
    reference = images["flux-ai-toolkit"]
    assert np.abs(reference - base).max() > 20
    for name, image in images.items():
        assert np.abs(image - reference).max() <= 2, name
    assert np.array_equal(pixels(renderer.render(flow.call(101))), base)  # and each comes off again


@pytest.mark.parametrize("vid", [101, 102])
def test_shift_reschedules_a_flow_model_and_stays_reproducible(flow, renderer, vid):
    base = pixels(renderer.render(flow.call(vid, steps=4)))
    shifted = renderer.render(flow.call(vid, steps=4, shift=0.3))
    scheduler = next(e.pipe.scheduler for e in renderer.cache._entries.values() if e.key[0] == str(flow.files[vid][0]))
    assert scheduler.config.shift == 0.3 and not scheduler.config.get("use_dynamic_shifting")
    assert not np.array_equal(pixels(shifted), base)  # random tiny transformers barely heed the timestep: > 0
    assert np.array_equal(pixels(renderer.render(flow.call(vid, steps=4, shift=0.3))), pixels(shifted))
    assert "Shift: 0.3" in shifted.parameters
    # the next call without a shift gets the model's own schedule back
    assert np.array_equal(pixels(renderer.render(flow.call(vid, steps=4))), base)


def test_sd3_loras_in_every_published_layout_render_the_same_update(flow, renderer):
    """diffusers reads only PEFT-named SD 3 LoRAs; kohya's and ComfyUI's (Stability AI's module names, fused qkv) are
    converted (render/lora_layouts.py): the same random update in each layout changes the image, and identically."""
    base = pixels(renderer.render(flow.call(102)))
    images = {}
    for vid in (131, 132, 133, 134):
        ref = LoraRef(**flow.ref(vid).model_dump(), weight=0.8)
        images[ref.name] = pixels(renderer.render(flow.call(102, loras=[ref])))
    reference = images["sd3-peft"]
    assert np.abs(reference - base).max() > 20
    for name, image in images.items():
        assert np.abs(image - reference).max() <= 2, name


def test_a_lora_that_matches_no_layer_is_refused_instead_of_rendering_without_it(flow, renderer):
    """diffusers only logs a warning when none of a LoRA's tensor names fits the model; the render would look fine and
    lack the LoRA."""
    base = pixels(renderer.render(flow.call(101)))
    ref = LoraRef(**flow.ref(125).model_dump(), weight=1.0)
    with pytest.raises(UserInputError, match="matched no layer"):
        renderer.render(flow.call(101, loras=[ref]))
    assert np.array_equal(pixels(renderer.render(flow.call(101))), base)


def test_calls_a_flow_family_cannot_take_are_refused_with_the_fix(flow, renderer):
    with pytest.raises(ValidationError, match="FLUX.1 takes no negative prompt"):
        flow.call(101, negative_prompt="blurry")
    with pytest.raises(ValidationError, match="own VAE"):
        flow.call(101, vae=flow.ref(101))
    with pytest.raises(ValidationError, match="no textual-inversion embeddings"):
        flow.call(102, embeddings=[EmbeddingRef(**flow.ref(112).model_dump(), token="tok")])
    with pytest.raises(ValidationError, match="FLUX.1 renders with sampler Euler"):
        flow.call(101, sampler="Heun")  # FluxPipeline sets its own sigmas, which the flow Heun scheduler lacks
    with pytest.raises(UserInputError, match="flow matching: use sampler Euler or Heun"):
        renderer.render(flow.call(102, sampler="DPM++ 2M Karras"))
    with pytest.raises(UserInputError, match="diffusers format"):
        renderer.render(flow.call(103))


def test_a_flux_transformer_file_renders_with_its_reference_folder(flow, renderer):
    """Black Forest Labs' layout under ComfyUI's prefix, completed by the reference folder's encoders and VAE: the
    same weights as the folder's transformer, so the same image; a file missing a tensor fails naming it."""
    folder = pixels(renderer.render(flow.call(101)))
    single = renderer.render(flow.call(104))
    assert np.array_equal(folder, pixels(single)) and "Model: flux-single-file" in single.parameters
    with pytest.raises(UserInputError, match="final_layer.linear.bias|proj_out.bias"):
        renderer.render(flow.call(105))


def test_an_fp8_flux_file_renders_close_to_its_full_precision_weights(flow, renderer):
    """Most FLUX.1 fine-tunes are shared in float8 (e4m3fn): the weights are upcast to the render dtype on load, so the
    image is the folder's up to fp8 rounding."""
    folder = pixels(renderer.render(flow.call(101)))
    fp8 = pixels(renderer.render(flow.call(107)))
    assert not np.array_equal(folder, fp8)  # really quantised
    assert np.abs(folder - fp8).mean() < 8


def test_the_registry_resolver_finds_a_flux_files_reference(tmp_path, flow):
    """The reference is the curated model of the file's kind (the tiny file has no guidance embedder: [schnell]); a
    registry without it says which model is needed."""
    from types import SimpleNamespace

    from diffagent.registry.info import WeightSource
    from diffagent.render.weights import RegistryResolver, WeightStore

    def source(vid, path):
        return WeightSource(
            version_id=vid,
            air=f"urn:air:flux1:checkpoint:local:{vid}",
            name=f"v{vid}",
            type="checkpoint",
            family=Family.FLUX,
            local_path=str(path),
            hf_repo=None,
            hf_file=None,
            download_url=None,
            sha256=None,
            filename=None,
            format=None,
        )

    paths = {1: flow.files[104][0], 2: flow.files[101][0]}
    slugs = {"flux1-schnell": SimpleNamespace(id=2)}
    registry = SimpleNamespace(weight_source=lambda vid: source(vid, paths[vid]), version_by_slug=slugs.get)
    resolver = RegistryResolver(registry, WeightStore(tmp_path / "w", allow_downloads=False))
    assert resolver(flow.ref(101).model_copy(update={"id": 1})).reference == paths[2]
    slugs.clear()
    with pytest.raises(UserInputError, match="reference model 'flux1-schnell'"):
        resolver(flow.ref(101).model_copy(update={"id": 1}))


def test_an_sd3_transformer_file_renders_with_its_reference_folder(flow, renderer):
    """Stability AI's layout under ComfyUI's prefix, through diffusers' converter, completed by the reference folder:
    the same image as the folder."""
    folder = pixels(renderer.render(flow.call(102, cfg_scale=5.0, negative_prompt="blurry")))
    single = pixels(renderer.render(flow.call(106, cfg_scale=5.0, negative_prompt="blurry")))
    assert np.array_equal(folder, single)


def test_sd3_lora_conversion_agrees_with_diffusers_checkpoint_converter(tmp_path):
    """Each converted layer's update B @ A equals what diffusers' own SD 3 checkpoint converter makes of the same
    update added to the Stability AI-layout weights (fused qkv split, the last block's context modulation swapped
    from (shift, scale)), so the LoRA converter cannot share a mistake with the test's layouts."""
    import torch
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from diffagent.render.lora_layouts import sd3_from_original

    pipe = tm.build_sd3(tmp_path / "sd3")
    original = tm.sd3_to_original(pipe.transformer.state_dict())
    g = torch.Generator().manual_seed(0)
    lora, changed = {}, dict(original)
    for name in (
        "joint_blocks.0.x_block.attn.qkv",
        "joint_blocks.0.context_block.attn.qkv",
        "joint_blocks.0.context_block.adaLN_modulation.1",
        "joint_blocks.0.x_block.mlp.fc1",
    ):
        w = original[f"{name}.weight"]
        down, up = torch.randn(3, w.shape[1], generator=g), torch.randn(w.shape[0], 3, generator=g)
        lora |= {
            f"diffusion_model.{name}.lora_down.weight": down,
            f"diffusion_model.{name}.lora_up.weight": up,
            f"diffusion_model.{name}.alpha": torch.tensor(1.5),
        }
        changed[f"{name}.weight"] = w + 0.5 * up @ down  # alpha / rank = 0.5
    before = convert_sd3_transformer_checkpoint_to_diffusers(dict(original))
    after = convert_sd3_transformer_checkpoint_to_diffusers(changed)
    converted = sd3_from_original(lora, last_block=0)
    targets = {k.removeprefix("transformer.").removesuffix(".lora_A.weight") for k in converted if "lora_A" in k}
    assert len(targets) == 8  # q, k, v twice, the context modulation, fc1
    for module in targets:
        delta = converted[f"transformer.{module}.lora_B.weight"] @ converted[f"transformer.{module}.lora_A.weight"]
        expected = after[f"{module}.weight"] - before[f"{module}.weight"]
        assert torch.allclose(delta, expected, atol=1e-5), module
