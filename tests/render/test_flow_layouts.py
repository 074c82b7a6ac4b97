"""Full-size FLUX.1 and SD 3.5 transformers without their weights (meta device): the files their makers publish map
onto diffusers' models key for key and shape for shape, through the converters the single-file loader uses, and
``detect_architecture`` tells these families' files from the SD ones by their headers."""

from __future__ import annotations

import pytest
import torch

from .flow_layouts import (
    FLUX_DEV,
    FLUX_SCHNELL,
    SD35_LARGE,
    SD35_MEDIUM,
    flux_original_layout,
    sd3_original_layout,
)


@pytest.mark.parametrize(
    ("name", "cfg", "billions"),
    [
        ("FLUX.1 [dev]", FLUX_DEV, 11.90),
        ("FLUX.1 [schnell]", FLUX_SCHNELL, 11.90),
        ("SD 3.5 Large", SD35_LARGE, 8.15),
        ("SD 3.5 Medium", SD35_MEDIUM, 2.47),
    ],
)
def test_the_published_layout_maps_onto_the_diffusers_model(name, cfg, billions):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    flux = "num_single_layers" in cfg
    with torch.device("meta"):
        model = (FluxTransformer2DModel if flux else SD3Transformer2DModel)(**cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    layout = (flux_original_layout if flux else sd3_original_layout)(cfg)
    original = {k: torch.empty(shape, device="meta") for k, shape in layout.items()}
    converted = (
        convert_flux_transformer_checkpoint_to_diffusers if flux else convert_sd3_transformer_checkpoint_to_diffusers
    )(original)
    assert not original, f"{name}: keys the converter left unread: {sorted(original)[:5]}"
    assert sorted(expected) == sorted(converted), name
    assert all(tuple(converted[k].shape) == expected[k] for k in expected), name
    assert sum(int(torch.Size(s).numel()) for s in expected.values()) / 1e9 == pytest.approx(billions, abs=0.01)


@pytest.mark.parametrize(("layout", "arch"), [(flux_original_layout, "flux"), (sd3_original_layout, "sd3")])
def test_a_flow_single_file_is_recognised_by_its_header(tmp_path, layout, arch):
    """A transformer-only file with the makers' key names (tiny shapes), bare or under ComfyUI's
    ``model.diffusion_model.`` prefix."""
    from safetensors.torch import save_file

    from diffagent.render.pipelines import detect_architecture

    tiny = dict(
        patch_size=1,
        in_channels=4,
        num_layers=2,
        num_single_layers=1,
        attention_head_dim=4,
        num_attention_heads=2,
        joint_attention_dim=8,
        pooled_projection_dim=8,
        guidance_embeds=True,
        pos_embed_max_size=4,
        caption_projection_dim=8,
        out_channels=4,
        qk_norm="rms_norm",
    )
    state = {k: torch.zeros(shape) for k, shape in layout(tiny).items()}
    save_file(state, str(tmp_path / "bare.safetensors"))
    save_file({f"model.diffusion_model.{k}": v for k, v in state.items()}, str(tmp_path / "comfy.safetensors"))
    assert detect_architecture(tmp_path / "bare.safetensors") == arch
    assert detect_architecture(tmp_path / "comfy.safetensors") == arch


@pytest.mark.parametrize("cfg", [FLUX_DEV, FLUX_SCHNELL])
def test_our_flux_conversion_reads_the_full_size_layout(cfg):
    """``flow_files.flux_from_original`` (widths read from the tensors, not assumed) maps the published layout onto
    the model as diffusers' own converter does, and picks the reference of the file's kind."""
    from diffusers import FluxTransformer2DModel

    from diffagent.render.flow_files import FLUX_REFERENCES, flux_from_original

    with torch.device("meta"):
        model = FluxTransformer2DModel(**cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    layout = flux_original_layout(cfg)
    converted = flux_from_original(
        {f"model.diffusion_model.{k}": torch.empty(s, device="meta") for k, s in layout.items()}
    )
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert FLUX_REFERENCES[any(k.startswith("guidance_in.") for k in layout)] == (
        "flux1-dev" if cfg["guidance_embeds"] else "flux1-schnell"
    )


@pytest.mark.parametrize(
    ("layout", "extra", "slug"),
    [
        (flux_original_layout, {"guidance_embeds": True}, "flux1-dev"),
        (flux_original_layout, {"guidance_embeds": False}, "flux1-schnell"),
        (sd3_original_layout, {}, "sd35-large"),
        (sd3_original_layout, {"dual_attention_layers": (0,)}, "sd35-medium"),
    ],
)
def test_a_transformer_file_names_its_reference_model(tmp_path, layout, extra, slug):
    """The folder that completes a single file: [dev] with the guidance embedder, SD 3.5 Medium with MMDiT-X's second
    attention."""
    from safetensors.torch import save_file

    from diffagent.render.flow_files import reference_slug

    tiny = dict(
        patch_size=1,
        in_channels=4,
        num_layers=2,
        num_single_layers=1,
        attention_head_dim=4,
        num_attention_heads=2,
        joint_attention_dim=8,
        pooled_projection_dim=8,
        pos_embed_max_size=4,
        caption_projection_dim=8,
        out_channels=4,
        **extra,
    )
    save_file({k: torch.zeros(s) for k, s in layout(tiny).items()}, str(tmp_path / "t.safetensors"))
    assert reference_slug(tmp_path / "t.safetensors") == slug
