"""``diffagent registry ...`` end to end through ``diffagent.cli.main``: exit codes, output, errors."""

from __future__ import annotations

import json

import pytest
from civitai_fixtures import items, write_jsonl
from loopback_civitai import Reply
from registry_sql import sql_rows

from diffagent.cli import main


@pytest.fixture()
def lexical_db(tmp_path, new_registry):
    """The fixture items imported through the CLI without vectors (search needs no embedding model)."""
    db = new_registry("lexical")
    assert (
        main(
            [
                "registry",
                "import",
                str(write_jsonl(tmp_path / "items.jsonl")),
                "--registry",
                str(db),
                "--no-vectors",
                "-q",
            ]
        )
        == 0
    )
    return db


def _run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_import_prints_a_summary(tmp_path, capsys, db):
    src = write_jsonl(tmp_path / "items.jsonl")
    rc, out, _ = _run(capsys, "registry", "import", str(src), "--registry", str(db), "--no-vectors", "-q")
    assert rc == 0
    assert out.startswith("imported 11 models, 11 versions, 11 files, 9 sample images")
    assert "usage stats for 7 versions" in out


def test_import_holdout_split_drops_sample_images(tmp_path, capsys, db):
    rc, out, _ = _run(
        capsys,
        "registry",
        "import",
        str(write_jsonl(tmp_path / "i.jsonl")),
        "--registry",
        str(db),
        "--no-vectors",
        "-q",
        "--holdout-split",
        "train",
        "val",
        "test",
    )
    assert rc == 0 and "0 sample images" in out
    assert sql_rows(db, "SELECT count(*) FROM sample_image") == [(0,)]


def test_import_failure_exits_2_naming_the_line(tmp_path, capsys, lexical_db):
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join([json.dumps(items()[0]), json.dumps(items()[1]), "{oops"]) + "\n")
    rc, out, err = _run(capsys, "registry", "import", str(src), "--registry", str(lexical_db), "--no-vectors", "-q")
    assert rc == 2
    assert err.startswith("error: ") and "bad.jsonl:3: invalid JSON" in err and "unchanged" in err
    assert "Traceback" not in err


def test_stats_json(capsys, lexical_db):
    rc, out, _ = _run(capsys, "registry", "stats", "--json", "--registry", str(lexical_db))
    assert rc == 0
    stats = json.loads(out)
    assert (stats["models"], stats["versions"], stats["nsfw_models"], stats["vectors"]) == (11, 11, 1, 0)
    assert stats["models_by_type"] == {"checkpoint": 6, "lora": 3, "locon": 1, "embedding": 1}
    assert stats["versions_by_family"]["pony"] == 1


def test_stats_text(capsys, lexical_db):
    rc, out, _ = _run(capsys, "registry", "stats", "--registry", str(lexical_db))
    assert rc == 0
    assert any(line.split() == ["models", "11"] for line in out.splitlines())


def test_show(capsys, lexical_db):
    rc, out, _ = _run(capsys, "registry", "show", "1001", "--registry", str(lexical_db))
    assert rc == 0
    assert out.startswith("PhotonReal v1.0  [checkpoint, SD 1.5]  id 1001")
    assert "urn:air:sd1:checkpoint:civitai:101@1001" in out
    assert "file       photonreal_v1.safetensors (SafeTensor" in out
    assert "usage      3 images; samplers DPM++ 2M Karras (2), Euler a (1)" in out


def test_show_json(capsys, lexical_db):
    rc, out, _ = _run(capsys, "registry", "show", "2004", "--json", "--registry", str(lexical_db))
    assert rc == 0
    info = json.loads(out)
    assert (info["id"], info["type"], info["trained_words"]) == (2004, "locon", ["pixel art"])


def test_show_unknown_id_exits_2_with_a_hint(capsys, lexical_db):
    rc, out, err = _run(capsys, "registry", "show", "424242", "--registry", str(lexical_db))
    assert rc == 2 and out == ""
    assert err.startswith("error: unknown model id 424242") and "registry search" in err


@pytest.mark.sqlite_only
def test_missing_registry_exits_2(tmp_path, capsys):
    rc, _, err = _run(capsys, "registry", "stats", "--registry", str(tmp_path / "typo.db"))
    assert rc == 2 and "does not exist" in err and "build-default" in err


def test_search_json_with_filters(capsys, tiny_registry_path):
    rc, out, _ = _run(
        capsys,
        "registry",
        "search",
        "watercolor painting",
        "--type",
        "lora",
        "--base",
        "sd15",
        "--min-downloads",
        "13000",
        "--json",
        "--registry",
        str(tiny_registry_path),
    )
    assert rc == 0
    hits = json.loads(out)
    assert [h["id"] for h in hits] == [2002, 2001]  # Pixel Art (12k downloads) and SDXL LoRAs filtered out
    assert hits[0]["air"] == "urn:air:sd1:lora:civitai:202@2002"
    assert set(hits[0]["signals"]) == {"prior", "lexical", "semantic", "prompts", "knn", "creators"}
    assert hits[0]["score"] > hits[1]["score"]


def test_search_nsfw_needs_allow_nsfw(capsys, lexical_db):
    args = ["registry", "search", "adult merge", "--type", "checkpoint", "--json", "--registry", str(lexical_db)]
    _, out, _ = _run(capsys, *args)
    assert 1006 not in [h["id"] for h in json.loads(out)]
    _, out, _ = _run(capsys, *args, "--allow-nsfw")
    assert json.loads(out)[0]["id"] == 1006


def test_search_table_and_empty_result_hint(capsys, lexical_db):
    rc, out, _ = _run(capsys, "registry", "search", "anime", "--type", "checkpoint", "--registry", str(lexical_db))
    assert rc == 0 and "AnimeVerse" in out
    rc, out, err = _run(capsys, "registry", "search", "anime", "--type", "vae", "--registry", str(lexical_db))
    assert rc == 0 and "no models match" in err


def test_search_unknown_base_exits_2(capsys, lexical_db):
    rc, _, err = _run(capsys, "registry", "search", "x", "--base", "sd2", "--registry", str(lexical_db))
    assert rc == 2 and "unknown base constraint" in err


def test_sync_command_uses_the_api_key_from_the_environment(capsys, loopback, monkeypatch, db):
    monkeypatch.setenv("CIVITAI_API_KEY", "k123")
    loopback.replies = [Reply(200, {"items": items()[:3], "metadata": {}})]
    rc, out, _ = _run(
        capsys,
        "registry",
        "sync",
        "--base-url",
        loopback.url,
        "--max-pages",
        "1",
        "--no-vectors",
        "-q",
        "--types",
        "Checkpoint",
        "--registry",
        str(db),
    )
    assert rc == 0 and out.startswith("imported 3 models")
    assert loopback.seen[0].headers["Authorization"] == "Bearer k123"
    assert "types=Checkpoint" in loopback.seen[0].path


def test_search_embeds_queries_with_the_configured_embedder(capsys, tiny_registry_path, tmp_path, monkeypatch):
    # the same embedding model must build the vectors and embed the query: a configured one is used
    monkeypatch.setenv("DIFFAGENT_EMBEDDER", str(tmp_path / "not-a-model"))
    rc, _, err = _run(capsys, "registry", "search", "watercolor", "--json", "--registry", str(tiny_registry_path))
    assert rc == 2 and "not-a-model has no config.json" in err
