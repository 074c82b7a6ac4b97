import pytest

from diffagent.errors import NotFoundError, UserInputError
from diffagent.scoring import weights


def fake_hub_cache(root, repo, files):
    """The on-disk layout huggingface_hub reads offline: models--owner--name/{refs/main,snapshots/<rev>/}."""
    base = root / ("models--" + repo.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    for name, text in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_text(text)
    return snap


def test_local_paths(tmp_path):
    f = tmp_path / "w.pt"
    f.write_text("x")
    assert weights.resolve(str(f), what="w", allow_downloads=False) == f
    with pytest.raises(NotFoundError, match="not found"):
        weights.resolve(str(tmp_path / "missing.pt"), what="HPS v2 checkpoint", allow_downloads=True)
    with pytest.raises(UserInputError, match="no location"):
        weights.resolve("", what="w", allow_downloads=True)


def test_hub_refs_come_from_the_local_cache_offline(tmp_path):
    snap = fake_hub_cache(tmp_path, "THUDM/ImageReward", {"ImageReward.pt": "ckpt", "med_config.json": "{}"})
    got = weights.resolve("hf:THUDM/ImageReward/ImageReward.pt", what="w", allow_downloads=False, cache_dir=tmp_path)
    assert got.read_text() == "ckpt" and got.parent == snap
    folder = fake_hub_cache(tmp_path, "google-bert/bert-base-uncased", {"vocab.txt": "[PAD]\n"})
    got = weights.resolve("hf:google-bert/bert-base-uncased", what="w", allow_downloads=False, cache_dir=tmp_path)
    assert got == folder and (got / "vocab.txt").is_file()


def test_hub_ref_not_cached(tmp_path):
    with pytest.raises(NotFoundError, match="hf download THUDM/ImageReward med_config.json"):
        weights.resolve("hf:THUDM/ImageReward/med_config.json", what="w", allow_downloads=False, cache_dir=tmp_path)


@pytest.mark.parametrize("ref", ["hf:", "hf:onlyowner", "hf:/x"])
def test_malformed_hub_refs(ref):
    with pytest.raises(UserInputError, match="malformed"):
        weights.parse_hub_ref(ref)


def test_parse_hub_ref():
    assert weights.parse_hub_ref("hf:xswu/HPSv2/HPS_v2.1_compressed.pt") == ("xswu/HPSv2", "HPS_v2.1_compressed.pt")
    assert weights.parse_hub_ref("hf:a/b/sub/dir/f.bin") == ("a/b", "sub/dir/f.bin")
    assert weights.parse_hub_ref("hf:a/b") == ("a/b", None)


def test_hub_refs_resolve_once_per_process(tmp_path, monkeypatch):
    fake_hub_cache(tmp_path, "xswu/HPSv2", {"HPS_v2.1_compressed.pt": "w"})
    import huggingface_hub

    calls = []
    real = huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(3):
        weights.resolve("hf:xswu/HPSv2/HPS_v2.1_compressed.pt", what="w", allow_downloads=False, cache_dir=tmp_path)
    assert len(calls) == 1
