"""The curated default model source: the shipped TOML and the loader's validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffagent.errors import UserInputError
from diffagent.families import ecosystem_of, family_of
from diffagent.registry.default_source import BASE_MODELS, DEFAULT_PATH, load_default_source
from diffagent.registry.records import make_air
from diffagent.registry.schema import synthetic_id
from diffagent.samplers import A1111_SAMPLERS

FACTS = Path("/work/shared/data/facts/civitai_generation_constants.json")


@pytest.fixture(scope="module")
def records():
    return load_default_source()


def _versions(records):
    return [(m, v) for m in records for v in m.versions]


# ----------------------------------------------------------------------------- the shipped file


def test_shipped_file_parses_into_enough_models(records):
    assert DEFAULT_PATH.is_file()
    assert len(records) >= 150
    assert len(_versions(records)) >= 160
    assert all(m.source == "curated" for m in records)


@pytest.mark.parametrize("eco", ["sd1", "sdxl"])
@pytest.mark.parametrize("kind", ["checkpoint", "lora", "embedding", "vae"])
def test_both_ecosystems_have_every_kind(records, eco, kind):
    found = [m.slug for m, v in _versions(records) if m.type == kind and ecosystem_of(family_of(v.base_model)) == eco]
    assert found, f"no {kind} for the {eco} ecosystem"


def test_sdxl_family_bases_are_present(records):
    bases = {v.base_model for _, v in _versions(records)}
    assert {"SD 1.5", "SDXL 1.0", "Pony", "Illustrious", "NoobAI"} <= bases


def test_every_version_has_a_weight_location(records):
    for m, v in _versions(records):
        assert v.files, m.slug
        f = v.files[0]
        assert f.primary and f.name and f.format in {"SafeTensor", "PickleTensor", "Diffusers"}, m.slug
        if f.format == "Diffusers":
            assert v.hf_repo and not v.hf_file, m.slug
        else:
            assert v.download_url, m.slug
            assert v.download_url.startswith(("https://civitai.com/api/download/models/", "https://huggingface.co/"))
            if v.hf_repo:
                assert v.hf_file, m.slug


def test_slugs_and_ids_are_unique(records):
    slugs = [m.slug for m in records]
    assert len(slugs) == len(set(slugs)) and all(slugs)
    model_ids = [m.id for m in records]
    assert len(model_ids) == len(set(model_ids))
    version_ids = [v.id for _, v in _versions(records)]
    assert len(version_ids) == len(set(version_ids))
    file_ids = [v.files[0].id for _, v in _versions(records)]
    assert len(file_ids) == len(set(file_ids))
    airs = [make_air(m.type, v.base_model, m.source, m.id, v.id) for m, v in _versions(records)]
    assert len(airs) == len(set(airs))


def test_every_air_is_in_a_renderable_ecosystem(records):
    for m, v in _versions(records):
        air = make_air(m.type, v.base_model, m.source, m.id, v.id)
        assert air.split(":")[2] in {"sd1", "sdxl", "flux", "sd3"}, air


def test_sampler_names_are_canonical_and_settings_keys_known(records):
    allowed = {"sampler", "steps", "cfg_scale", "width", "height", "clip_skip", "negative_prompt", "weight"}
    samplers = 0
    for m, v in _versions(records):
        assert set(v.recommended) <= allowed, m.slug
        if "sampler" in v.recommended:
            samplers += 1
            assert v.recommended["sampler"] in A1111_SAMPLERS, (m.slug, v.recommended["sampler"])
        if "weight" in v.recommended:
            assert m.type in {"lora", "locon"}, m.slug
    assert samplers >= 20


def test_embeddings_carry_their_token(records):
    for m, v in _versions(records):
        if m.type == "embedding":
            assert v.trained_words, m.slug


def test_ids_follow_the_id_rules(records):
    sd15 = next(m for m in records if m.slug == "sd15-base")
    assert sd15.id == synthetic_id("sd15-base")
    assert sd15.versions[0].id == synthetic_id("sd15-base@version")
    assert sd15.versions[0].files[0].id == synthetic_id("sd15-base#file")
    assert sd15.versions[0].hf_repo == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert sd15.versions[0].hf_file == "v1-5-pruned-emaonly.safetensors"
    ds8 = next(m for m in records if m.slug == "dreamshaper-8")
    assert (ds8.id, ds8.versions[0].id) == (4384, 128713)
    assert ds8.versions[0].download_url == "https://civitai.com/api/download/models/128713"


def test_versions_of_one_civitai_page_are_merged(records):
    rv = next(m for m in records if m.id == 4201)
    assert rv.slug == "realistic-vision-v51"
    assert [v.id for v in rv.versions] == [130072, 245598]


def test_known_hashes_are_kept(records):
    base = next(m for m in records if m.slug == "sdxl-base-1.0")
    assert base.versions[0].files[0].sha256 == "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"


def test_base_model_whitelist_is_renderable():
    for base in BASE_MODELS:
        assert ecosystem_of(family_of(base)) in {"sd1", "sdxl", "flux", "sd3"}, base


@pytest.mark.shared_data
@pytest.mark.skipif(not FACTS.exists(), reason="shared facts folder is absent")
def test_civitai_default_checkpoints_are_included(records):
    facts = json.loads(FACTS.read_text())
    versions = {v.id: (m, v) for m, v in _versions(records)}
    for family, ref in facts["default_checkpoints"].items():
        assert ref["version_id"] in versions, family
        m, v = versions[ref["version_id"]]
        assert m.id == ref["model_id"] and v.base_model == ref["baseModel"], family


# ----------------------------------------------------------------------------- validation errors

GOOD = """
[[model]]
slug = "good-one"
name = "Good One"
version = "v1"
type = "checkpoint"
base_model = "SD 1.5"
kinds = ["general"]
description = "A valid entry."
[model.weights]
hf_repo = "owner/good"
hf_file = "good.safetensors"
format = "SafeTensor"
"""


def _entry(
    slug: str = "bad-one",
    *,
    top: str = "",
    weights: str | None = None,
    recommended: str = "",
    type_: str = "lora",
    base: str = "SD 1.5",
    triggers: str = '["x"]',
) -> str:
    w = weights if weights is not None else 'hf_repo = "owner/bad"\nhf_file = "bad.safetensors"\nformat = "SafeTensor"'
    rec = f"[model.recommended]\n{recommended}\n" if recommended else ""
    labels = {
        "lora": 'kinds = ["style"]\nconcepts = ["bad style"]\n',
        "locon": 'kinds = ["style"]\nconcepts = ["bad style"]\n',
        "checkpoint": 'kinds = ["general"]\n',
    }.get(type_, "")
    return (
        f'\n[[model]]\nslug = "{slug}"\nname = "Bad One"\nversion = "v1"\ntype = "{type_}"\n'
        f'base_model = "{base}"\ndescription = "An entry under test."\ntrigger_words = {triggers}\n{labels}{top}\n'
        f"[model.weights]\n{w}\n{rec}"
    )


def _load(tmp_path: Path, text: str):
    p = tmp_path / "models.toml"
    p.write_text(text)
    return load_default_source(p)


def test_small_valid_file_loads(tmp_path):
    [m] = _load(tmp_path, GOOD)
    assert m.slug == "good-one" and m.versions[0].files[0].name == "good.safetensors"


@pytest.mark.parametrize(
    ("kwargs", "field", "hint"),
    [
        ({"top": 'colour = "red"'}, "colour", "unknown key"),
        ({"weights": 'format = "SafeTensor"'}, "weights", "no weight location"),
        ({"type_": "hypernetwork"}, "type", "checkpoint"),
        ({"base": "SD 2.1"}, "base_model", "unknown base model"),
        ({"base": "Flux.1 D", "type_": "embedding"}, "(entry)", "take no embeddings"),
        (
            {
                "base": "Flux.1 D",
                "type_": "checkpoint",
                "weights": 'hf_repo = "owner/bad"\nhf_file = "bad.ckpt"\nformat = "PickleTensor"',
            },
            "(entry)",
            ".safetensors transformer file",
        ),
        ({"triggers": '"x, y"'}, "trigger_words", "list"),
        ({"recommended": 'sampler = "Euler Turbo 9000"'}, "recommended.sampler", "unknown sampler"),
        ({"recommended": "steps = 0"}, "recommended.steps", "greater than or equal"),
        (
            {"weights": 'civitai_model_id = 1\nfilename = "a.safetensors"\nformat = "SafeTensor"'},
            "weights",
            "go together",
        ),
        ({"weights": 'hf_repo = "owner/x"\nhf_file = "a.safetensors"\nformat = "Diffusers"'}, "weights", "Diffusers"),
        ({"weights": 'hf_repo = "owner/x"\nformat = "SafeTensor"'}, "weights", "single file"),
        ({"weights": 'hf_repo = "not a repo"\nformat = "Diffusers"'}, "weights.hf_repo", "owner/name"),
        (
            {"weights": 'hf_repo = "o/x"\nhf_file = "a.pt"\nformat = "PickleTensor"\nsha256 = "abc"'},
            "weights.sha256",
            "64 hex",
        ),
        ({"weights": 'civitai_model_id = 1\ncivitai_version_id = 2\nformat = "SafeTensor"'}, "weights", "filename"),
        ({"type_": "embedding", "triggers": "[]"}, "(entry)", "trigger_words"),
        ({"type_": "checkpoint", "recommended": "weight = 0.5"}, "(entry)", "LoRA strength"),
    ],
)
def test_bad_entry_is_named_with_its_field(tmp_path, kwargs, field, hint):
    with pytest.raises(UserInputError) as err:
        _load(tmp_path, GOOD + _entry(**kwargs))
    msg = str(err.value)
    assert "entry 2 (slug 'bad-one')" in msg
    assert f"field '{field}'" in msg
    assert hint in msg


def test_bad_slug_is_rejected(tmp_path):
    with pytest.raises(UserInputError, match=r"entry 2 \(slug 'Bad One'\).*field 'slug'"):
        _load(tmp_path, GOOD + _entry("Bad One"))


def test_duplicate_slug_names_both_entries(tmp_path):
    with pytest.raises(UserInputError, match=r"entry 2 \(slug 'good-one'\): field 'slug': duplicate of entry 1"):
        _load(tmp_path, GOOD + _entry("good-one"))


def test_duplicate_civitai_version_is_rejected(tmp_path):
    w = 'civitai_model_id = 7\ncivitai_version_id = 70\nfilename = "a.safetensors"\nformat = "SafeTensor"'
    text = _entry("first", weights=w) + _entry("second", weights=w)
    with pytest.raises(UserInputError, match=r"entry 2 \(slug 'second'\).*version id 70 is already used by slug 'fir"):
        _load(tmp_path, text)


def test_one_civitai_page_must_have_one_name(tmp_path):
    a = 'civitai_model_id = 7\ncivitai_version_id = 70\nfilename = "a.safetensors"\nformat = "SafeTensor"'
    b = a.replace("70", "71")
    text = _entry("first", weights=a) + _entry("second", weights=b).replace('name = "Bad One"', 'name = "Other"')
    with pytest.raises(UserInputError, match=r"entry 2 \(slug 'second'\).*model id 7 is already used"):
        _load(tmp_path, text)


def test_invalid_toml_missing_file_and_stray_keys(tmp_path):
    with pytest.raises(UserInputError, match="not valid TOML"):
        _load(tmp_path, GOOD + "\n[[model]\n")
    with pytest.raises(UserInputError, match="does not exist"):
        load_default_source(tmp_path / "nope.toml")
    with pytest.raises(UserInputError, match="unknown top-level key"):
        _load(tmp_path, "version = 1\n" + GOOD)
    with pytest.raises(UserInputError, match=r"no \[\[model\]\] tables"):
        _load(tmp_path, "")


def test_records_import_into_a_registry(tmp_path, records):
    """The records satisfy the writer's contract: every model, version and file lands, with AIRs."""
    import sqlite3

    from diffagent.registry.importer import import_records

    db = tmp_path / "registry.db"
    report = import_records(db, records, source="curated", embedder=None)
    n_versions = len(_versions(records))
    assert (report.models, report.versions, report.files) == (len(records), n_versions, n_versions)
    con = sqlite3.connect(db)
    try:
        families = dict(con.execute("SELECT family, COUNT(*) FROM model_version GROUP BY family").fetchall())
        pony_air = con.execute("SELECT air FROM model_version WHERE id = 290640").fetchone()[0]
    finally:
        con.close()
    assert {"sd1", "sdxl", "pony", "illustrious"} <= set(families)
    assert pony_air.startswith("urn:air:sdxl:checkpoint:")
