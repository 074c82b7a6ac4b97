"""FLUX.1 and SD 3.5 in selection: the curated diffusers-format entries are offered for base "flux" / "sd3", for
"any" only where ``large_families`` allows, never for "sd15" / "sdxl"; their calls carry the family's settings
(flow-matching Euler, no FLUX.1 negative prompt, the card's steps) and validate. A single-file FLUX.1 / SD 3 version
(a fine-tune's transformer) is offered only where the registry holds every reference folder that could complete it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from diffagent.agent.options import SelectOptions
from diffagent.agent.selector import Selector
from diffagent.apicall import ApiCall
from diffagent.errors import UserInputError
from diffagent.families import parse_base_constraint
from diffagent.registry.search_index import _renders
from diffagent.registry.store import Registry
from diffagent.settings import Settings

PROMPTS = [
    "a red fox in the snow",
    "a neon sign that says OPEN on a rainy street",
    "portrait photo of an old man",
    "a watercolor painting of a lighthouse",
]


@pytest.fixture(scope="module")
def registry():
    reg = Registry.open(Settings().registry)
    yield reg
    reg.close()


def selector(registry, **settings):
    return Selector(registry, Settings(selector="retrieval", **settings))


@pytest.mark.parametrize(("base", "family"), [("flux", "flux"), ("sd3", "sd3"), ("FLUX.1", "flux"), ("sd3.5", "sd3")])
def test_a_flow_base_gets_a_call_of_that_family_with_its_settings(registry, base, family):
    for prompt in PROMPTS[:2]:
        call = selector(registry).select(prompt, SelectOptions(base=parse_base_name(base), seed=1))
        assert call.checkpoint.family == family
        assert call.sampler == "Euler" and call.clip_skip == 1 and not call.embeddings and call.vae is None
        assert call.width == call.height == 1024
        if family == "flux":
            assert call.negative_prompt == ""
        info = registry.version(call.checkpoint.id)
        assert call.steps == info.recommended["steps"]  # 4 for the distilled ones, not clamped to SD's 10
        ApiCall.model_validate(call.model_dump())  # the call round-trips through validation


def parse_base_name(base: str) -> str:
    """The option's spelling of a base (the CLI and tools also accept FLUX.1, sd3.5: ``parse_base_constraint``)."""
    eco = parse_base_constraint(base)
    return {frozenset({"flux"}): "flux", frozenset({"sd3"}): "sd3"}[frozenset(eco)]


def test_sd_bases_and_any_never_get_a_flow_model_unless_allowed(registry):
    plain, large = selector(registry), selector(registry, large_families=True)
    for prompt in PROMPTS:
        for base in ("any", "sd15", "sdxl"):
            calls = plain.select_many(prompt, SelectOptions(base=base, n_candidates=5, seed=0)).calls
            assert all(c.checkpoint.family not in ("flux", "sd3") for c in calls), (prompt, base)
        for base in ("sd15", "sdxl"):
            calls = large.select_many(prompt, SelectOptions(base=base, n_candidates=5, seed=0)).calls
            assert all(c.checkpoint.family not in ("flux", "sd3") for c in calls), (prompt, base)
    assert large.any_base >= {"flux", "sd3", "sd1", "sdxl"} and plain.any_base == {"sd1", "sdxl"}


def test_with_large_families_any_can_reach_a_flow_model(registry):
    from diffagent.agent.retrieve import retrieve_checkpoints

    hits = retrieve_checkpoints(
        registry,
        "FLUX.1 schnell photo of a fox",
        base=selector(registry, large_families=True).any_base,
        k=10,
        card=None,
    )
    assert any(c.version.family == "flux" for c in hits)


def test_unknown_base_names_the_choices():
    with pytest.raises(UserInputError, match="any, sd15, sdxl, flux, sd3"):
        parse_base_constraint("sd2")


@pytest.mark.parametrize(
    ("family", "hf_repo", "hf_file", "local_path", "renders"),
    [
        ("flux", "black-forest-labs/FLUX.1-dev", None, None, True),  # a diffusers repo
        ("flux", "someone/flux-finetune", "model.safetensors", None, False),  # a single file in a repo
        ("sd3", None, None, "/models/sd35-medium", True),  # a local diffusers folder
        ("sd3", None, None, "/models/sd35_medium.safetensors", False),
        ("flux", None, None, None, False),  # a Civitai download (single file) only
        ("sdxl", "someone/xl", "model.safetensors", None, True),  # SD families load single files
    ],
)
def test_without_reference_folders_only_flow_folders_count_as_renderable(family, hf_repo, hf_file, local_path, renders):
    row = SimpleNamespace(
        has_weights=True,
        kinds="[]",
        family=family,
        hf_repo=hf_repo,
        hf_file=hf_file,
        local_path=local_path,
        type="checkpoint",
        file_name=None,
    )
    assert _renders(row) is renders
    assert _renders(SimpleNamespace(**{**vars(row), "type": "lora"}))  # LoRAs are single files in every family


@pytest.mark.parametrize(
    ("family", "hf_file", "local_path", "file_name", "references", "renders"),
    [
        ("flux", "finetune.safetensors", None, None, {"flux"}, True),
        ("flux", "finetune.safetensors", None, None, {"sd3"}, False),  # FLUX.1's references are not all here
        ("sd3", None, "/models/sd35_finetune.safetensors", None, {"flux", "sd3"}, True),
        ("flux", "finetune-Q8_0.gguf", None, None, {"flux"}, False),  # GGUF transformers do not load
        ("flux", None, None, "civitai-finetune.safetensors", {"flux"}, True),  # a Civitai download, by its file's name
        ("flux", None, None, None, {"flux"}, False),  # a download of unknown kind
    ],
)
def test_a_flow_transformer_file_counts_where_its_references_are_held(
    family, hf_file, local_path, file_name, references, renders
):
    row = SimpleNamespace(
        has_weights=True,
        kinds="[]",
        family=family,
        hf_repo="someone/x" if hf_file else None,
        hf_file=hf_file,
        local_path=local_path,
        type="checkpoint",
        file_name=file_name,
    )
    assert _renders(row, frozenset(references)) is renders


FINETUNE = """
[[model]]
slug = "pixelwave-flux"
name = "PixelWave FLUX.1 fine-tune"
version = "03"
type = "checkpoint"
base_model = "Flux.1 D"
creator = "someone"
tags = ["pixel art", "retro", "game sprite"]
kinds = ["pixel"]
description = "A FLUX.1 [dev] fine-tune for pixel art: retro game sprites, isometric pixel scenes, 16-bit palettes."
license = "flux-1-dev-non-commercial-license"
downloads = 50_000
[model.weights]
hf_repo = "someone/pixelwave-flux"
hf_file = "pixelwave_flux1_dev_03.safetensors"
format = "SafeTensor"
[model.recommended]
sampler = "Euler"
steps = 28
cfg_scale = 3.5
width = 1024
height = 1024
"""


def flow_source(tmp_path, slugs: set[str]) -> Path:
    """A registry source with the curated entries ``slugs`` of default_models.toml and the fine-tune above."""
    from diffagent.registry.default import SOURCE

    text = SOURCE.read_text()
    blocks = text.split("[[model]]")
    kept = [b for b in blocks[1:] if any(f'slug = "{slug}"' in b for slug in slugs)]
    assert len(kept) == len(slugs)
    path = tmp_path / "flow.toml"
    path.write_text("".join("[[model]]" + b for b in kept) + FINETUNE)
    return path


@pytest.mark.parametrize(
    ("references", "offered"),
    [
        ({"flux1-dev", "flux1-schnell"}, True),
        ({"flux1-dev"}, False),  # a file without the guidance embedder would need [schnell], which is not here
    ],
)
def test_a_flux_fine_tune_file_is_selected_only_with_its_reference_folders(tmp_path, references, offered):
    from diffagent.registry.default import build_default

    db = tmp_path / "flow.db"
    build_default(db, source=flow_source(tmp_path, references))
    reg = Registry.open(db)
    try:
        call = selector(reg).select(
            "pixel art of a knight, retro game sprite, 16-bit palette", SelectOptions(base="flux", seed=1)
        )
        assert call.checkpoint.name.startswith("PixelWave FLUX.1 fine-tune") is offered
        assert call.checkpoint.family == "flux" and call.sampler == "Euler"
        if offered:  # the renderer's resolver finds the reference the file names by its tensors
            assert reg.version_by_slug("flux1-dev") is not None and reg.version_by_slug("flux1-schnell") is not None
    finally:
        reg.close()
