"""Model kinds: curated labels in default_models.toml, labels derived from Civitai pages, storage."""

from __future__ import annotations

import json

import pytest

from diffagent.registry.kinds import ModelKinds, derive, name_phrase, validate


@pytest.mark.parametrize(
    "name, version, tags, kinds",
    [
        ("Realistic Vision", "V5.1", ["photorealistic", "portraits"], ("photo",)),
        ("Anything V5", "v5", ["anime", "illustration"], ("anime",)),  # the name outvotes one tag
        # a 2.5D mix is an anime model (docs/fit-judging.md), not an art one: "a painting of ..." is not for it
        ("ReV Animated", "v1.2.2", ["anime", "2.5d", "photorealistic"], ("anime",)),
        ("SomeMix", "v1", ["anime", "photorealistic"], ("anime",)),  # tagged both ways: not a photo model
        # an anime model tagged "general purpose" and "illustration" is still an anime model only
        ("Suzumehachi", "v1.0", ["anime", "general purpose", "illustration"], ("anime",)),
        ("Toon Anime Mix", "v1", ["anime", "cartoon"], ("anime", "cartoon")),
        ("Toonify", "v2", ["cartoon", "3d"], ("cartoon",)),
        ("Plain", "v1", ["woman"], ("unknown",)),
        ("Stable Diffusion XL Refiner", "1.0", ["base model"], ("refiner",)),
        ("Realistic Vision", "V5.1-inpainting", ["photorealistic"], ("inpainting",)),
    ],
)
def test_derived_checkpoint_kinds(name, version, tags, kinds):
    assert derive("checkpoint", name, version, tags, []).kinds == kinds


def test_models_that_cannot_render_alone():
    assert not derive("checkpoint", "SDXL Refiner", "1.0", [], []).standalone
    assert derive("checkpoint", "DreamShaper", "8", ["general"], []).standalone


@pytest.mark.parametrize(
    "name, tags, role",
    [
        ("Detail Tweaker LoRA", ["concept"], "detail"),
        ("LCM LoRA SD1.5", ["tool"], "speed"),
        ("epi_noiseoffset", ["lighting"], "lighting"),
        ("MoXin", ["style", "ink"], "style"),
        ("Hatsune Miku", ["character", "anime"], "subject"),
        ("Wool", ["concept"], "subject"),
    ],
)
def test_derived_lora_roles(name, tags, role):
    assert derive("lora", name, "v1", tags, []).role == role


def test_a_derived_lora_concept_is_its_name():
    k = derive("lora", "Pixel Art XL LoRA", "v1.1", ["style"], ["pixelart", "green"])
    assert k.concepts == ("pixel art",)  # "LoRA", "XL" and versions dropped; trigger words are evidence of their own
    assert name_phrase("MoXin LoRA v1.0") == "moxin"


def test_validate_names_the_fix():
    with pytest.raises(ValueError, match="use one or more of"):
        validate("checkpoint", ["realistic"], [])
    with pytest.raises(ValueError, match="exactly one of"):
        validate("lora", ["style", "subject"], ["x y"])
    with pytest.raises(ValueError, match="at least one concept"):
        validate("lora", ["style"], [])
    validate("checkpoint", ["photo", "general"], [])
    assert ModelKinds(("refiner",)).standalone is False


def test_every_curated_checkpoint_and_lora_is_labelled():
    from diffagent.registry.default_source import load_default_source

    records = load_default_source()
    seen = {"checkpoint": 0, "lora": 0}
    for m in records:
        for v in m.versions:
            if m.type in seen:
                seen[m.type] += 1
                assert v.kinds, m.slug
                if m.type == "lora":
                    assert v.concepts, m.slug
    assert seen["checkpoint"] >= 50 and seen["lora"] >= 50
    refiners = [m.slug for m in records for v in m.versions if "refiner" in (v.kinds or [])]
    assert refiners == ["sdxl-refiner-1.0"]


def test_a_bad_curated_label_fails_with_the_entry(tmp_path):
    from diffagent.errors import UserInputError
    from diffagent.registry.default_source import DEFAULT_PATH, load_default_source

    text = DEFAULT_PATH.read_text().replace('kinds = ["general", "art"]', 'kinds = ["dreamy"]', 1)
    bad = tmp_path / "m.toml"
    bad.write_text(text)
    with pytest.raises(UserInputError, match="dreamshaper-8"):
        load_default_source(bad)


def test_default_registry_stores_curated_labels():
    from pathlib import Path

    from registry_sql import sql_rows

    db = Path(__file__).resolve().parents[2] / "registry.db"
    rows = sql_rows(
        db,
        "SELECT k.kinds, k.origin, m.slug FROM model_kind k JOIN model_version v ON v.id = k.version_id"
        " JOIN model m ON m.id = v.model_id WHERE m.type = 'checkpoint'",
    )
    assert rows and all(origin == "curated" for _, origin, _ in rows)
    assert dict((slug, json.loads(k)) for k, _, slug in rows)["sdxl-refiner-1.0"] == ["refiner"]


def test_migration_backfills_labels_of_an_older_registry(tmp_path, new_registry):
    from civitai_fixtures import write_jsonl
    from registry_sql import sql_exec, sql_rows

    from diffagent.registry.importer import import_path

    db = new_registry("old")
    import_path(write_jsonl(tmp_path / "items.jsonl"), db, embedder=None)
    # as a release before model_kind left it (sql_exec's opening migrates only what _migrations lacks, so the
    # table comes back at the next opening, labelled from what the registry holds)
    sql_exec(db, "DROP TABLE model_kind", "DELETE FROM _migrations WHERE name = 'm005_model_kind'")
    [(n_versions,)] = sql_rows(db, "SELECT count(*) FROM model_version")
    [(labelled,)] = sql_rows(db, "SELECT count(*) FROM model_kind WHERE origin = 'derived'")
    assert labelled == n_versions > 0


def test_a_flow_reference_entry_must_be_a_diffusers_folder(tmp_path):
    """The FLUX.1 / SD 3.5 reference models complete transformer files with their folders' encoders and VAE, so a
    curated single file of theirs is refused with the fix (a fine-tune may be a .safetensors transformer file)."""
    from diffagent.errors import UserInputError
    from diffagent.registry.default_source import DEFAULT_PATH, load_default_source

    old = 'hf_repo = "black-forest-labs/FLUX.1-schnell"\nformat = "Diffusers"'
    text = DEFAULT_PATH.read_text()
    assert old in text
    bad = tmp_path / "m.toml"
    bad.write_text(
        text.replace(
            old,
            'hf_repo = "black-forest-labs/FLUX.1-schnell"\nhf_file = "flux1-schnell'
            '.safetensors"\nformat = "SafeTensor"',
        )
    )
    with pytest.raises(UserInputError, match="flux1-schnell is the reference model.*'Diffusers'"):
        load_default_source(bad)
