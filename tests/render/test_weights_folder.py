"""Diffusers-format Hugging Face repos resolve as verified pipeline folders, and every default registry model
has a weight source the renderer supports (issue: every selected call renders)."""

from __future__ import annotations

import shutil

import pytest

from diffagent.errors import UserInputError
from diffagent.families import Family
from diffagent.registry.store import WeightSource
from diffagent.render.weights import DIFFUSERS_FILES, IncompleteFolder, WeightStore, check_diffusers_folder, source_kind


def folder_source(**kw) -> WeightSource:
    base = dict(
        version_id=9,
        air="urn:air:sd1:checkpoint:huggingface:org/repo@9",
        name="Tiny (diffusers)",
        type="checkpoint",
        family=Family.SD1,
        local_path=None,
        hf_repo="org/tiny",
        hf_file=None,
        download_url=None,
        sha256=None,
        filename="tiny",
        format="Diffusers",
    )
    base.update(kw)
    return WeightSource(**base)


@pytest.fixture
def hub(tiny, tmp_path, monkeypatch):
    """A stand-in for the hub: snapshot_download serves a copy of the tiny SD 1.5 pipeline folder; the
    offline call finds nothing until one online call "downloaded" it."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = tmp_path / "hub" / "org--tiny"
    calls = []

    def snapshot_download(repo_id, allow_patterns=None, local_files_only=False, **kw):
        calls.append((repo_id, tuple(allow_patterns or ()), local_files_only))
        if not repo.exists():
            if local_files_only:
                raise LocalEntryNotFoundError("not cached")
            shutil.copytree(tiny.root / "sd15", repo)
        return str(repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return repo, calls


def test_a_diffusers_repo_is_fetched_as_a_checked_folder(hub, tmp_path):
    repo, calls = hub
    store = WeightStore(tmp_path / "weights", progress=False)
    path = store.fetch(folder_source())
    assert path == repo and (path / "model_index.json").is_file()
    assert calls[0] == ("org/tiny", tuple(DIFFUSERS_FILES), True) and calls[1][2] is False
    calls.clear()
    assert store.fetch(folder_source()) == repo and [c[2] for c in calls] == [True]  # served from the cache


def test_the_folder_loads_as_a_pipeline(hub, tmp_path):
    import torch

    from diffagent.render.pipelines import load_pipeline

    path = WeightStore(tmp_path / "weights", progress=False).fetch(folder_source())
    pipe = load_pipeline(path, "sd1", device="cpu", dtype=torch.float32, skeleton=None)
    assert pipe.unet is not None and pipe.text_encoder is not None


def test_downloads_off_names_the_setting(hub, tmp_path):
    store = WeightStore(tmp_path / "weights", allow_downloads=False, progress=False)
    with pytest.raises(UserInputError, match="DIFFAGENT_ALLOW_DOWNLOADS"):
        store.fetch(folder_source())


def test_incomplete_folders_are_named(tiny, tmp_path):
    good = tmp_path / "p"
    shutil.copytree(tiny.root / "sd15", good)
    check_diffusers_folder(good, "tiny")
    weights = next((good / "unet").glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(IncompleteFolder, match=r"unet/.*truncated"):
        check_diffusers_folder(good, "tiny")
    weights.write_bytes(data)
    shutil.rmtree(good / "text_encoder")
    with pytest.raises(IncompleteFolder, match=r"text_encoder/ \(config\).*download it again"):
        check_diffusers_folder(good, "tiny")
    (good / "model_index.json").unlink()
    with pytest.raises(IncompleteFolder, match="not a diffusers pipeline folder"):
        check_diffusers_folder(good, "tiny")


def test_source_kinds():
    assert source_kind(folder_source()) == "hf-folder"
    assert source_kind(folder_source(hf_file="m.safetensors", format="SafeTensor")) == "hf-file"
    assert source_kind(folder_source(hf_repo=None, download_url="https://x/y", format="SafeTensor")) == "url"
    assert source_kind(folder_source(hf_repo=None, local_path="/m.safetensors")) == "local"
    assert source_kind(folder_source(hf_repo=None)) is None


def test_every_default_registry_model_has_a_weight_source_the_renderer_supports():
    from diffagent.registry.store import Registry
    from diffagent.settings import Settings

    reg = Registry.open(Settings().registry)
    try:
        ids = reg.popular(types=["checkpoint", "lora", "embedding", "vae"], limit=10_000)
        kinds = {vid: source_kind(reg.weight_source(vid)) for vid in ids}
        assert len(ids) >= 150
        assert [vid for vid, k in kinds.items() if k is None] == []
        assert "hf-folder" in kinds.values()  # the diffusers-format checkpoints, which used to fail
        # selectable: everything but the refiner, which cannot render alone
        assert [reg.versions([v])[v].slug for v in ids if not reg.is_renderable(v)] == ["sdxl-refiner-1.0"]
    finally:
        reg.close()
