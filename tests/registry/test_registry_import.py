"""Importing Civitai data: every input format, idempotency, all-or-nothing failure, and what the
importer derives (plain-text descriptions, AIRs, stripped prompts, image -> checkpoint links)."""

from __future__ import annotations

import copy
import gzip
import json

import pytest
from civitai_fixtures import PHOTO, _image, items, write_jsonl
from registry_sql import sql_rows

from diffagent.errors import ImportFailed, UserInputError
from diffagent.prompttext import html_to_text
from diffagent.registry import importer
from diffagent.registry.default import content_rows
from diffagent.registry.importer import import_path
from diffagent.registry.store import Registry


def _one(db, sql: str):
    return sql_rows(db, sql)


def _count(db, table: str) -> int:
    return _one(db, f"SELECT count(*) FROM {table}")[0][0]


# ------------------------------------------------------------------------------------------ formats


def _write_item(path, rows):
    path.write_text(json.dumps(rows[0]))


def _write_page(path, rows):
    path.write_text(json.dumps({"items": rows, "metadata": {"totalItems": len(rows), "currentPage": 1}}))


def _write_list(path, rows):
    path.write_text(json.dumps(rows))


def _write_jsonl_gz(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def _write_jsonl_with_pages(path, rows):
    # a dump whose lines are API pages (what `curl >> dump.jsonl` of successive pages gives)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"items": rows[:4], "metadata": {}}) + "\n\n")
        fh.write(json.dumps({"items": rows[4:], "metadata": {}}) + "\n")


FORMATS = {
    "item.json": (_write_item, 1),
    "page.json": (_write_page, 11),
    "list.json": (_write_list, 11),
    "dump.jsonl": (lambda p, rows: write_jsonl(p, rows), 11),
    "dump.jsonl.gz": (_write_jsonl_gz, 11),
    "pages.jsonl": (_write_jsonl_with_pages, 11),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_input_format_imports_the_same_models(tmp_path, db, name):
    write, expected = FORMATS[name]
    src = tmp_path / name
    write(src, items())
    report = import_path(src, db, embedder=None)
    assert (report.models, report.versions) == (expected, expected)
    assert _count(db, "model") == expected
    assert _one(db, "SELECT air, family FROM model_version WHERE id = 1001") == [
        ("urn:air:sd1:checkpoint:civitai:101@1001", "sd1")
    ]
    assert _count(db, "model_file") == expected
    if expected > 1:
        assert _count(db, "sample_image") == 9


def test_import_from_url_serving_an_api_page(tmp_path, db, loopback):
    from loopback_civitai import Reply

    loopback.replies = [Reply(200, {"items": items()[:3], "metadata": {}})]
    url = f"{loopback.url}/api/v1/models?limit=3"
    report = import_path(url, db, embedder=None)
    assert report.models == 3
    assert report.source == url
    assert loopback.seen[0].path == "/api/v1/models?limit=3"
    assert {r[0] for r in _one(db, "SELECT name FROM model")} == {"PhotonReal", "AnimeVerse", "Aquarelle"}


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (404, b"{}", "could not fetch"),
        (200, b"<html>maintenance</html>", "did not return JSON"),
    ],
)
def test_import_from_url_failures_are_clear(db, loopback, status, body, message):
    from loopback_civitai import Reply

    loopback.replies = [Reply(status, body)]
    with pytest.raises(ImportFailed, match=message):
        import_path(f"{loopback.url}/models.json", db, embedder=None)


def test_json_that_is_not_civitai_data_is_refused(tmp_path, db):
    src = tmp_path / "other.json"
    src.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(ImportFailed, match="not a Civitai model item"):
        import_path(src, db, embedder=None)


def test_missing_file_is_a_user_error(tmp_path, db):
    with pytest.raises(UserInputError, match="is not a file"):
        import_path(tmp_path / "nope.jsonl", db, embedder=None)


def test_model_without_versions_imports(tmp_path, db):
    src = tmp_path / "item.json"
    src.write_text(json.dumps({"id": 5, "name": "Placeholder", "type": "Checkpoint", "modelVersions": []}))
    report = import_path(src, db, embedder=None)
    assert (report.models, report.versions) == (1, 0)
    assert _one(db, "SELECT name, type FROM model") == [("Placeholder", "checkpoint")]


# ------------------------------------------------------------------------------------- idempotency


def test_reimport_changes_nothing(tmp_path, db, embedder):
    src = write_jsonl(tmp_path / "items.jsonl")
    first = import_path(src, db, embedder=embedder)
    before = content_rows(db)
    vectors = _one(db, "SELECT kind, owner_id, text_hash, data FROM vector ORDER BY kind, owner_id")
    second = import_path(src, db, embedder=embedder)
    assert content_rows(db) == before
    assert _one(db, "SELECT kind, owner_id, text_hash, data FROM vector ORDER BY kind, owner_id") == vectors
    assert first.embedded["versions"] == 11
    assert first.embedded["prompt_sets"] == 5
    # vectors are keyed by a hash of their text: nothing is embedded again
    assert second.embedded == {"versions": 0, "prompt_sets": 0}


def test_reimport_applies_changes_and_drops_removed_files(tmp_path, db):
    rows = items()
    import_path(write_jsonl(tmp_path / "a.jsonl", rows), db, embedder=None)
    changed = copy.deepcopy(rows)
    changed[0]["stats"]["downloadCount"] = 123
    changed[0]["modelVersions"][0]["files"] = []
    changed[0]["modelVersions"][0]["images"] = changed[0]["modelVersions"][0]["images"][:1]
    import_path(write_jsonl(tmp_path / "b.jsonl", changed[:1]), db, embedder=None)
    assert _one(db, "SELECT downloads FROM model WHERE id = 101") == [(123,)]
    assert _one(db, "SELECT count(*) FROM model_file WHERE version_id = 1001") == [(0,)]
    assert _one(db, "SELECT id FROM sample_image WHERE page_version_id = 1001") == [(9001,)]
    assert _count(db, "model") == 11  # models absent from the second file are kept


# ------------------------------------------------------------------------------ all or nothing


@pytest.fixture()
def populated(tmp_path, db):
    import_path(write_jsonl(tmp_path / "base.jsonl", items()[:6]), db, embedder=None)
    return db


def test_corrupt_line_fails_naming_it_and_leaves_registry_unchanged(tmp_path, populated):
    before = content_rows(populated)
    src = tmp_path / "dump.jsonl"
    lines = [json.dumps(r) for r in items()]
    lines[2] = lines[2][:-40]  # a truncated line 3
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImportFailed, match=r"dump\.jsonl:3: invalid JSON") as err:
        import_path(src, populated, embedder=None)
    assert "unchanged" in str(err.value)
    assert content_rows(populated) == before


def test_corrupt_line_in_gzip_dump_is_named_too(tmp_path, populated):
    before = content_rows(populated)
    src = tmp_path / "dump.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as fh:
        for r in items()[:7]:
            fh.write(json.dumps(r) + "\n")
        fh.write("{not json\n")
    with pytest.raises(ImportFailed, match=r"dump\.jsonl\.gz:8"):
        import_path(src, populated, embedder=None)
    assert content_rows(populated) == before


def test_raw_control_character_is_reported_readably(tmp_path, db):
    src = tmp_path / "dump.jsonl"
    src.write_text(json.dumps(items()[0]) + "\n" + '{"id": 7, "name": "tab\there"}\n')
    with pytest.raises(ImportFailed, match=r"dump\.jsonl:2: invalid JSON \(Invalid control character at column 23\)"):
        import_path(src, db, embedder=None)


def test_item_without_id_is_named_by_line(tmp_path, populated):
    before = content_rows(populated)
    rows = items()
    del rows[1]["id"]
    with pytest.raises(ImportFailed, match=r"items\.jsonl:2: model item lacks a valid 'id' field"):
        import_path(write_jsonl(tmp_path / "items.jsonl", rows), populated, embedder=None)
    assert content_rows(populated) == before


def test_failure_after_rows_are_written_rolls_everything_back(tmp_path, populated, monkeypatch):
    before = content_rows(populated)
    monkeypatch.setattr(importer, "BATCH", 3)  # several batches are written before the failure

    def disk_full(conn):
        raise OSError("disk full")

    monkeypatch.setattr(importer, "recompute_usage_stats", disk_full)
    rows = copy.deepcopy(items())
    for r in rows:
        r["stats"]["downloadCount"] += 1
    with pytest.raises(OSError, match="disk full"):
        import_path(write_jsonl(tmp_path / "items.jsonl", rows), populated, embedder=None)
    assert content_rows(populated) == before


def test_interrupt_mid_import_rolls_back_with_a_clear_message(tmp_path, populated, monkeypatch):
    before = content_rows(populated)
    real = importer.write_records
    calls = []

    def interrupted(conn, batch, counts=None):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(conn, batch, counts)

    monkeypatch.setattr(importer, "BATCH", 4)
    monkeypatch.setattr(importer, "write_records", interrupted)
    with pytest.raises(ImportFailed, match="interrupted; nothing was imported"):
        import_path(write_jsonl(tmp_path / "items.jsonl"), populated, embedder=None)
    assert calls == [4, 4]
    assert content_rows(populated) == before


# ------------------------------------------------------------------------------- derived fields


def test_html_description_becomes_plain_text(tmp_path, db):
    import_path(write_jsonl(tmp_path / "items.jsonl", items()[:1]), db, embedder=None)
    assert _one(db, "SELECT description FROM model") == [
        ("Photorealistic portraits and street photography.\nUse it well.",)
    ]
    assert _one(db, "SELECT description FROM model_version") == [("PhotonReal v1",)]


def test_html_to_text_keeps_paragraphs_and_decodes_entities():
    markup = "<h2>Tips</h2><ul><li>CFG 7 &amp; 25 &lt;steps&gt;</li><li>use <a href='x'>VAE</a></li></ul><p></p>"
    assert html_to_text(markup) == "Tips\nCFG 7 & 25 <steps>\nuse VAE"
    assert html_to_text(None) == ""
    assert html_to_text("<p>" + "x" * 50 + "</p>", max_chars=10) == "x" * 10
    # &nbsp; and other Unicode spaces are plain spaces; zero-width characters do not split words
    assert html_to_text("<p>Euler&nbsp;a,\u2009CFG\u00a0 7</p><p>wa\u200btercolor</p>") == "Euler a, CFG 7\nwatercolor"


def test_types_airs_and_families(tmp_path, db):
    import_path(write_jsonl(tmp_path / "items.jsonl"), db, embedder=None)
    rows = dict(
        (r[0], r[1:])
        for r in _one(db, "SELECT v.id, m.type, v.family, v.air FROM model_version v JOIN model m ON m.id = v.model_id")
    )
    assert rows[1005] == ("checkpoint", "pony", "urn:air:sdxl:checkpoint:civitai:105@1005")
    assert rows[2004] == ("locon", "sd1", "urn:air:sd1:lycoris:civitai:204@2004")
    assert rows[3001] == ("embedding", "sd1", "urn:air:sd1:embedding:civitai:301@3001")


def test_sample_prompts_lose_resource_tags_and_link_to_their_checkpoint(tmp_path, db):
    import_path(write_jsonl(tmp_path / "items.jsonl"), db, embedder=None)
    prompt, version_id, model_hash = _one(
        db, "SELECT prompt, version_id, model_hash FROM sample_image WHERE id = 9001"
    )[0]
    assert prompt == "portrait photo of an old fisherman, 85mm, film grain"
    assert version_id == 1001
    assert model_hash == model_hash.upper()
    assert _count(db, "sample_image WHERE version_id IS NULL") == 0


def test_images_resolve_when_their_checkpoint_arrives_later(tmp_path, db):
    lora = copy.deepcopy(items()[6])  # Film Grain LoRA
    lora["modelVersions"][0]["images"] = [_image(9100, "old man, film grain", PHOTO)]
    import_path(write_jsonl(tmp_path / "lora.jsonl", [lora]), db, embedder=None)
    assert _one(db, "SELECT version_id FROM sample_image WHERE id = 9100") == [(None,)]
    import_path(write_jsonl(tmp_path / "ckpt.jsonl", items()[:1]), db, embedder=None)
    assert _one(db, "SELECT version_id FROM sample_image WHERE id = 9100") == [(1001,)]


def test_keep_images_drops_held_out_pages(tmp_path, db):
    import_path(write_jsonl(tmp_path / "items.jsonl"), db, embedder=None, keep_images=lambda page: page != 101)
    assert _count(db, "sample_image WHERE page_model_id = 101") == 0
    assert _count(db, "sample_image") == 6
    assert _count(db, "usage_stats WHERE version_id = 1001") == 0


# ----------------------------------------------------------------------------------- usage stats


def test_usage_stats_count_settings_and_resolve_loras(tiny_registry):
    u = tiny_registry.usage(1001)
    assert u.n_images == 3
    assert u.samplers == {"DPM++ 2M Karras": 2, "Euler a": 1}
    assert u.steps == {"25": 2, "30": 1}
    assert u.cfg_scale == {"7": 3}
    assert u.sizes == {"512x768": 3}
    assert u.clip_skip == {"1": 3}
    assert u.negative_prompt == "lowres, bad anatomy, worst quality"
    # <lora:filmGrain_v1:0.6> resolved by file stem to the Film Grain LoRA version
    assert u.loras == {"2001": {"count": 1, "weight": 0.6}}
    assert tiny_registry.usage(2001).lora_weight == 0.6
    anime = tiny_registry.usage(1002)
    assert anime.clip_skip == {"2": 2}
    assert anime.negative_prompt == "EasyNegative, lowres"
    assert tiny_registry.usage(1005).sizes == {"832x1216": 1}
    assert tiny_registry.usage(3001) is None


def test_lora_names_resolve_case_insensitively_and_unknown_ones_are_ignored(tmp_path, db):
    rows = items()
    rows[1]["modelVersions"][0]["images"] = [
        _image(
            9200,
            "1girl, pixel art",
            "animeverse_v1.safetensors",
            loras=[("PixelArt_V1", 0.9), ("notInRegistry_v3", 0.5)],
        ),
        _image(9201, "1boy, pixel art", "animeverse_v1.safetensors", loras=[("pixelart_v1", 0.7)]),
    ]
    import_path(write_jsonl(tmp_path / "items.jsonl", rows), db, embedder=None)
    reg = Registry.open(db)
    try:
        assert reg.usage(1002).loras == {"2004": {"count": 2, "weight": 0.8}}
        assert reg.usage(2004).lora_weight == 0.8
    finally:
        reg.close()


def test_lora_named_by_civitai_download_stem_resolves(tmp_path, db):
    from diffagent.registry.stats import civitai_file_stem

    # Civitai names downloads after the model and version ("Pixel Art" v1.0 -> pixelArt_v10), not the uploaded file
    assert civitai_file_stem("Pixel Art", "v1.0") == "pixelart_v10"
    assert civitai_file_stem("Widowmaker (Overwatch) | LoRA", "v1.5") == "widowmakeroverwatchlora_v15"
    rows = items()
    rows[1]["modelVersions"][0]["images"] = [
        _image(9300, "1girl, pixel art", "animeverse_v1.safetensors", loras=[("pixelArt_v10", 0.9)]),
    ]
    import_path(write_jsonl(tmp_path / "items.jsonl", rows), db, embedder=None)
    reg = Registry.open(db)
    try:
        assert reg.usage(1002).loras == {"2004": {"count": 1, "weight": 0.9}}
    finally:
        reg.close()


def test_typical_negative_prompt_prefers_common_words_among_singletons():
    from diffagent.registry.stats import _typical

    texts = ["worst quality, lowres", "lowres, blurry", "cat", ""]
    assert _typical(texts) == "worst quality, lowres"
    assert _typical(["a", "b", "b"]) == "b"
    assert _typical(["", "  "]) == ""


def test_civitai_number_fields_parse_leniently_or_not_at_all():
    from diffagent.registry.civitai import parse_float, parse_int

    assert [parse_int(v) for v in (25, "25", "25,", " 25.0 ", 7.9)] == [25, 25, 25, 25, 7]
    assert [parse_int(v) for v in ("abc", "", None, "nan", "inf", [1])] == [None] * 6
    assert parse_float("7.5,") == 7.5 and parse_float("x") is None


# ------------------------------------------------------------------------------ broken files (issue 14)


def _gz_bytes(rows) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], r"dump\.jsonl\.gz: the gzip data ends early .*line \d+"),
        (lambda data: data[:10] + b"garbage" * 40, r"dump\.jsonl\.gz: not valid gzip data"),
    ],
)
def test_damaged_gzip_dump_is_named_without_a_traceback(tmp_path, populated, damage, message):
    before = content_rows(populated)
    src = tmp_path / "dump.jsonl.gz"
    src.write_bytes(damage(_gz_bytes(items())))
    with pytest.raises(ImportFailed, match=message) as err:
        import_path(src, populated, embedder=None)
    assert "unchanged" in str(err.value)
    assert content_rows(populated) == before


@pytest.mark.parametrize(
    "line, says",
    [
        ("[1, 2, 3]", "a list of 3 numbers"),
        ('"text"', "a string"),
        ("42", "a number"),
        ('{"id": "x", "name": "n", "modelVersions": []}', "'id' must be an integer"),
    ],
)
def test_lines_that_are_not_model_items_say_what_they_are(tmp_path, db, line, says):
    src = tmp_path / "dump.jsonl"
    src.write_text(json.dumps(items()[0]) + "\n" + line + "\n")
    with pytest.raises(ImportFailed, match=r"dump\.jsonl:2: ") as err:
        import_path(src, db, embedder=None)
    assert says in str(err.value)


def test_failed_import_into_a_new_path_leaves_no_file(tmp_path, db):
    src = tmp_path / "dump.jsonl"
    src.write_text(json.dumps(items()[0]) + "\n{broken\n")
    with pytest.raises(ImportFailed):
        import_path(src, db, embedder=None)
    if isinstance(db, str):  # a database: its tables exist (migrated before the import began) and hold nothing
        assert sql_rows(db, "SELECT count(*) FROM model") == [(0,)]
        return
    assert not db.exists()
    assert not list(db.parent.glob(db.name + "*"))  # no -wal / -shm / -journal either


def test_non_utf8_file_is_named(tmp_path, db):
    src = tmp_path / "dump.jsonl"
    src.write_bytes(json.dumps(items()[0]).encode() + b"\n\xff\xfe\x00bad\n")
    with pytest.raises(ImportFailed, match=r"dump\.jsonl: not UTF-8 text"):
        import_path(src, db, embedder=None)
