"""``registry scan``: weights on disk matched to registry versions by hash, unknown safetensors imported from
their headers, pickles never opened, hashes cached, and the renderer's resolution using the local file."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from safetensors.numpy import save_file
from sqlalchemy import text

from diffagent.errors import UserInputError
from diffagent.registry.scan import LOCAL_ID_BASE, describe, safetensors_header, scan
from diffagent.registry.store import Registry


def _write(path, tensors, metadata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.asarray(v, dtype=np.float16) for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


@pytest.fixture
def world(tiny_registry_copy, tmp_path):
    db = tiny_registry_copy
    models = tmp_path / "webui" / "models"
    rng = np.random.default_rng(0)
    known = _write(
        models / "Stable-diffusion" / "known.safetensors",
        {"model.diffusion_model.out.0.weight": rng.normal(size=(4, 4))},
    )
    sha = hashlib.sha256(known.read_bytes()).hexdigest()
    reg = Registry.open(db)
    with reg.engine.begin() as conn:  # the registry lists this file for version 1001 (Civitai hashes are upper case)
        conn.execute(text("UPDATE model_file SET sha256 = :h WHERE version_id = 1001"), {"h": sha.upper()})
    reg.close()
    lora = _write(
        models / "Lora" / "my_style.safetensors",
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": rng.normal(size=(4, 8)),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": rng.normal(size=(8, 4)),
        },
        {"ss_base_model_version": "sd_v1", "ss_output_name": "Zzqx Ink Style"},
    )
    emb = _write(models / ".." / "embeddings" / "badhands.safetensors", {"emb_params": rng.normal(size=(2, 768))})
    odd = _write(models / "Lora" / "mystery.safetensors", {"lora_unet_x.lora_down.weight": rng.normal(size=(2, 2))})
    pickle = models / "Stable-diffusion" / "old.ckpt"
    pickle.write_bytes(b"\x80\x04not really a pickle")
    return db, tmp_path / "webui", {"known": known, "lora": lora, "emb": emb.resolve(), "odd": odd, "pickle": pickle}


def test_scan_matches_imports_and_skips(world, tmp_path):
    db, root, f = world
    report = scan(db, [root], cache_path=tmp_path / "hashes.json")
    assert report.files == 5 and report.from_cache == 0 and report.bytes_hashed > 0
    assert report.matched == [(str(f["known"]), 1001)]
    imported = {p: (t, b) for p, _i, t, b in report.imported}
    assert imported == {str(f["lora"]): ("lora", "SD 1.5"), str(f["emb"]): ("embedding", "SD 1.5")}
    why = dict(report.skipped)
    assert "no base model" in why[str(f["odd"])] and "not opened" in why[str(f["pickle"])]
    assert "1 matched" in report.summary() and report.as_dict()["files"] == 5

    reg = Registry.open(db)
    assert reg.version(1001).local_path == str(f["known"])
    [lora_id] = [i for p, i, t, _b in report.imported if t == "lora"]
    lora = reg.version(lora_id)
    assert lora_id > LOCAL_ID_BASE and lora.type == "lora" and lora.family == "sd1"
    assert lora.model_name == "Zzqx Ink Style" and lora.local_path == str(f["lora"]) and ":local:" in lora.air
    assert lora_id in {h.version.id for h in reg.search("zzqx ink style", types=["lora"], limit=5)}
    reg.close()


def test_a_second_scan_reads_nothing_and_changes_nothing(world, tmp_path):
    db, root, _f = world
    scan(db, [root], cache_path=tmp_path / "hashes.json")
    again = scan(db, [root], cache_path=tmp_path / "hashes.json")
    assert again.from_cache == 5 and again.bytes_hashed == 0
    assert len(again.matched) == 3 and again.imported == []  # the imported files are registry files now


def test_the_renderer_uses_the_local_file_without_downloading(world, tmp_path):
    from diffagent.render.weights import WeightStore

    db, root, f = world
    scan(db, [root], cache_path=tmp_path / "hashes.json", import_unknown=False)
    reg = Registry.open(db)
    store = WeightStore(tmp_path / "weights", allow_downloads=False)
    assert store.fetch(reg.weight_source(1001)) == f["known"]
    assert not (tmp_path / "weights" / "sha256").exists()  # nothing fetched into the cache
    reg.close()


def test_headers_say_what_a_file_is(tmp_path):
    rng = np.random.default_rng(1)
    xl = _write(
        tmp_path / "a.safetensors",
        {
            "conditioner.embedders.1.model.ln_final.weight": rng.normal(size=(4,)),
            "model.diffusion_model.out.0.weight": rng.normal(size=(4,)),
        },
    )
    assert describe(xl, safetensors_header(xl))[:2] == ("checkpoint", "SDXL 1.0")
    xl_lora = _write(tmp_path / "b.safetensors", {"lora_te2_x.lora_down.weight": rng.normal(size=(2, 2))})
    assert describe(xl_lora, safetensors_header(xl_lora))[:2] == ("lora", "SDXL 1.0")
    locon = _write(
        tmp_path / "e.safetensors",
        {
            "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": rng.normal(size=(2, 4, 3, 3)),
            "lora_te_x.lora_down.weight": rng.normal(size=(2, 2)),
        },
    )
    assert describe(locon, safetensors_header(locon))[:2] == ("locon", "SD 1.5")  # 3x3 low-rank convolutions
    lyco = _write(
        tmp_path / "f.safetensors",
        {"lora_te_x.lora_down.weight": rng.normal(size=(2, 2))},
        {"ss_network_module": "lycoris.kohya"},
    )
    assert describe(lyco, safetensors_header(lyco))[0] == "locon"
    spec = _write(
        tmp_path / "c.safetensors",
        {"w": rng.normal(size=(2,))},
        {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora", "modelspec.title": "Neon"},
    )
    assert describe(spec, safetensors_header(spec)) == (None, "SDXL 1.0", "Neon")
    bad = tmp_path / "d.safetensors"
    bad.write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="header"):
        safetensors_header(bad)


def test_missing_folders_and_registries_are_clear_errors(world, tmp_path):
    db, root, _f = world
    with pytest.raises(UserInputError, match="does not exist"):
        scan(db, [tmp_path / "nowhere"], cache_path=tmp_path / "h.json")
    with pytest.raises(UserInputError, match="does not exist; build one"):
        scan(tmp_path / "none.db", [root], cache_path=tmp_path / "h.json")  # a missing file (either backend)
    assert not (tmp_path / "h.json").exists()  # refused before hashing anything


def test_the_selector_can_be_held_to_local_models(world, tmp_path, embedder):
    from diffagent.agent.options import SelectOptions
    from diffagent.agent.selector import Selector
    from diffagent.errors import NotFoundError
    from diffagent.settings import Settings

    db, root, _f = world
    settings = Settings(registry=db, data_dir=tmp_path, selector="retrieval", ranker="none")
    reg = Registry.open(db, embedder=embedder)
    with pytest.raises(NotFoundError, match="registry scan"):
        Selector(reg, settings).select("a watercolor fox", SelectOptions(local_only=True, seed=0))
    reg.close()
    scan(db, [root], cache_path=tmp_path / "hashes.json")
    reg = Registry.open(db, embedder=embedder)
    sel = Selector(reg, settings)
    call = sel.select("a watercolor fox", SelectOptions(local_only=True, seed=0, n_candidates=3))
    assert call.checkpoint.id == 1001 and call.alternatives == []  # the one checkpoint on disk
    assert all(reg.is_local(lo.id) for lo in call.loras)
    assert sel.select("a watercolor fox", SelectOptions(seed=0)).checkpoint.id != 1001  # unheld: the fitting one
    held = Selector(reg, settings.model_copy(update={"local_only": True}))  # the setting, when the option is unset
    assert held.select("a watercolor fox", SelectOptions(seed=0)).checkpoint.id == 1001
    reg.close()


def test_registry_scan_through_the_cli(world, tmp_path, capsys, monkeypatch):
    import json

    from diffagent.cli import main

    db, root, f = world
    monkeypatch.setenv("DIFFAGENT_DATA_DIR", str(tmp_path / "data"))
    assert main(["registry", "scan", str(root), "--registry", str(db), "--no-vectors", "-q", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["files"] == 5 and out["matched"] == [{"path": str(f["known"]), "version_id": 1001}]
    assert len(out["imported"]) == 2 and (tmp_path / "data" / "scan-hashes.json").is_file()
    assert main(["registry", "scan", str(tmp_path / "nowhere"), "--registry", str(db), "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_headers_of_flux_and_sd3_files_name_their_family(tmp_path):
    """Transformer files in their makers' layouts (bare, or under ComfyUI's prefix) and FLUX.1 LoRAs (kohya's and
    diffusers' names) are recognised; a [dev] file by its guidance embedder, SD 3.5 by its q/k norms."""
    z = np.zeros((2, 2))
    cases = {
        "dev.safetensors": (
            {"double_blocks.0.img_attn.qkv.weight": z, "guidance_in.in_layer.weight": z},
            ("checkpoint", "Flux.1 D"),
        ),
        "schnell.safetensors": (
            {"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": z},
            ("checkpoint", "Flux.1 S"),
        ),
        "sd35.safetensors": (
            {"joint_blocks.0.x_block.attn.qkv.weight": z, "joint_blocks.0.x_block.attn.ln_q.weight": z},
            ("checkpoint", "SD 3.5"),
        ),
        "kohya-flux.safetensors": (
            {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": z},
            ("lora", "Flux.1 S"),
        ),
        "diffusers-flux.safetensors": (
            {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": z},
            ("lora", "Flux.1 S"),
        ),
    }
    for name, (tensors, expected) in cases.items():
        f = _write(tmp_path / name, tensors)
        assert describe(f, safetensors_header(f))[:2] == expected, name
    spec = _write(tmp_path / "spec.safetensors", {"w": z}, {"modelspec.architecture": "flux-1-dev/lora"})
    assert describe(spec, safetensors_header(spec))[1] == "Flux.1 D"
