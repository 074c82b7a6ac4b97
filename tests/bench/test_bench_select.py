"""The selector benchmark: pairs from raw Civitai image rows, page-level splits, metrics, CLI."""

from __future__ import annotations

import gzip
import json

import pytest

from diffagent.bench.pairs import build_pairs, load_pairs, row_to_pair, train_checkpoint_pages
from diffagent.bench.select import Prediction, Scores, evaluate, markdown_table
from diffagent.bench.split import split_of


def raw_row(image_id, page, prompt, version_id, model_id, *, nsfw="None", loras=(), clip="2,"):
    return {
        "image_id": image_id,
        "image_nsfw": nsfw,
        "attached_model_id": page,
        "attached_version_id": page * 10,
        "prompt": prompt + "".join(f", <lora:{n}:{w}>" for n, w in loras),
        "negativePrompt": "lowres",
        "sampler": "dpm++ 2m karras",
        "steps": "28",
        "cfgScale": 7,
        "seed": 1,
        "size": "512x768",
        "clip_skip": clip,
        "resolved_checkpoint": {
            "model_id": model_id,
            "version_id": version_id,
            "type": "Checkpoint",
            "baseModel": "SD 1.5",
            "model_name": "M",
            "version_name": "v1",
        },
        "resources": [{"name": n, "type": "lora", "weight": w} for n, w in loras],
    }


def test_split_is_by_page_deterministic_and_roughly_80_10_10():
    assert split_of(17751) == split_of(17751)
    counts = {"train": 0, "val": 0, "test": 0}
    for page in range(5000):
        counts[split_of(page)] += 1
    assert 0.77 < counts["train"] / 5000 < 0.83 and 0.08 < counts["test"] / 5000 < 0.12


def test_row_to_pair_strips_tags_and_parses_messy_numbers():
    pair = row_to_pair(raw_row(1, 5, "a fox", 1003, 103, loras=[("filmGrain_v1", 0.6)]))
    assert pair.instruction == "a fox"
    t = pair.target
    assert (t.checkpoint_version_id, t.sampler, t.steps, t.clip_skip, t.width, t.height) == (
        1003,
        "DPM++ 2M Karras",
        28,
        2,
        512,
        768,
    )
    assert [(lo.name, lo.weight) for lo in t.loras] == [("filmGrain_v1", 0.6)]
    assert pair.split == split_of(5)
    assert row_to_pair(raw_row(2, 5, "a fox", 1003, 103, nsfw="Mature")) is None
    assert row_to_pair({**raw_row(3, 5, "a fox", 1003, 103), "resolved_checkpoint": None}) is None


def test_build_and_load_accept_built_pairs_and_raw_rows(tmp_path):
    rows = tmp_path / "rows.jsonl.gz"
    with gzip.open(rows, "wt") as fh:
        for i in range(30):
            fh.write(json.dumps(raw_row(i, i, f"prompt {i}", 1001, 101)) + "\n")
        fh.write(json.dumps(raw_row(99, 99, "nsfw", 1001, 101, nsfw="X")) + "\n")
    out = tmp_path / "pairs.jsonl"
    counts = build_pairs(rows, out)
    assert sum(counts.values()) == 30
    built = list(load_pairs(out))
    raw = list(load_pairs(rows))
    assert [p.model_dump() for p in built] == [p.model_dump() for p in raw]
    assert {p.split for p in load_pairs(out, splits={"test"})} <= {"test"}


def _call(tiny_registry, version_id, lora_ids=()):
    from diffagent.agent.rebuild import build_call

    info = tiny_registry.version(version_id)
    loras = [(tiny_registry.version(i), 0.7) for i in lora_ids]
    return build_call("x", info, tiny_registry.usage(version_id), loras, seed=0)


def test_metrics_on_known_predictions(tiny_registry):
    from diffagent.registry.stats import lora_name_index

    pairs = [
        row_to_pair(raw_row(1, 1, "fox", 1003, 103, loras=[("watercolorStyle_v1", 0.8)])),
        row_to_pair(raw_row(2, 2, "girl", 1002, 102)),
    ]
    preds = {
        1: Prediction(ranked=[1003, 1001], call=_call(tiny_registry, 1003, [2002])),
        2: Prediction(ranked=[1001, 1003, 1002], call=_call(tiny_registry, 1001)),
    }
    with tiny_registry.engine.connect() as conn:
        loras = lora_name_index(conn)
    s = evaluate(pairs, lambda p: preds[p.image_id], tiny_registry, loras)
    row = s.row()
    assert row["n"] == 2 and row["checkpoint_top1"] == 0.5 and row["checkpoint_top5"] == 1.0
    assert row["model_top1"] == 0.5 and row["model_top5"] == 1.0  # pages 103 | 101, 103, 102
    assert row["lora_precision"] == 1.0 and row["lora_recall"] == 1.0
    assert row["hallucination_rate"] == 0.0
    assert "| method |" in markdown_table({"x": row})
    assert row["no_train_image_n"] == 0  # no train pages given: no subset
    # page 102 has no train image: pair 2 is scored apart too (its checkpoint is third there: top-5, not top-1)
    apart = evaluate(pairs, lambda p: preds[p.image_id], tiny_registry, loras, train_pages={103}).row()
    assert apart["no_train_image_n"] == 1 and apart["no_train_image_model_top1"] == 0.0
    assert apart["no_train_image_model_top5"] == 1.0


def test_train_checkpoint_pages_are_the_checkpoints_of_train_pairs_only(tmp_path):
    pairs = [row_to_pair(raw_row(i, page, "a cat", 1000 + i, 100 + i)) for i, page in enumerate((1, 2, 3, 4, 5, 6))]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(p.model_dump_json() + "\n" for p in pairs))
    train = {p.target.checkpoint_model_id for p in pairs if p.split == "train"}
    assert train and len(train) < len(pairs)  # the pages fall in more than one split
    assert train_checkpoint_pages(path) == train


def test_the_lora_whose_page_shows_the_image_counts_as_used_in_the_showcase_metric(tiny_registry):
    from diffagent.registry.stats import lora_name_index, lora_versions

    row = raw_row(1, 202, "a watercolor fox", 1003, 103)  # no LoRA in the image's metadata
    row |= {"attached_version_id": 2002, "attached_type": "LORA"}
    pair = row_to_pair(row)
    assert (pair.page_version_id, pair.page_type) == (2002, "LORA")
    with tiny_registry.engine.connect() as conn:
        loras, lora_ids = lora_name_index(conn), lora_versions(conn)
    assert 2002 in lora_ids and 1003 not in lora_ids
    pred = Prediction(ranked=[1003], call=_call(tiny_registry, 1003, [2002]))
    row = evaluate([pair], lambda p: pred, tiny_registry, loras, lora_ids=lora_ids).row()
    assert row["lora_precision"] == 0.0 and row["lora_recall"] is None  # the metadata names none
    assert row["lora_precision_showcase"] == 1.0 and row["lora_recall_showcase"] == 1.0
    # a checkpoint's page adds nothing
    plain = row_to_pair(
        raw_row(2, 103, "a fox", 1003, 103) | {"attached_version_id": 1003, "attached_type": "Checkpoint"}
    )
    row = evaluate([plain], lambda p: pred, tiny_registry, loras, lora_ids=lora_ids).row()
    assert row["lora_precision_showcase"] == 0.0 and row["lora_recall_showcase"] is None


def test_hallucinated_ids_and_failures_are_counted(tiny_registry):
    pair = row_to_pair(raw_row(1, 1, "fox", 1003, 103))
    ghost = _call(tiny_registry, 1003).model_copy(
        update={"checkpoint": _call(tiny_registry, 1003).checkpoint.model_copy(update={"id": 424242})}
    )

    def boom(p):
        raise ValueError("bad call")

    s = evaluate([pair], lambda p: Prediction(ranked=[424242], call=ghost), tiny_registry, {})
    assert s.hallucinated_ids == 1
    s = evaluate([pair], boom, tiny_registry, {})
    assert s.invalid == 1 and isinstance(s, Scores)


@pytest.mark.parametrize("methods", [["popularity", "knn", "retrieval"]])
def test_bench_select_cli_end_to_end(tmp_path, tiny_registry_path, capsys, methods):
    from diffagent.cli import main

    pages = {"test": [], "train": []}
    page = 1
    while len(pages["test"]) < 3 or len(pages["train"]) < 6:
        sp = split_of(page)
        if sp in pages:
            pages[sp].append(page)
        page += 1
    rows = tmp_path / "rows.jsonl"
    prompts = {1003: "watercolor painting of a fox", 1002: "1girl, anime, school uniform"}
    with open(rows, "w") as fh:
        i = 0
        for _sp, pgs in pages.items():
            for p in pgs:
                for vid, text in prompts.items():
                    i += 1
                    fh.write(json.dumps(raw_row(i, p, text, vid, vid // 10)) + "\n")
    rc = main(
        [
            "bench",
            "select",
            "--pairs",
            str(rows),
            "--registry",
            str(tiny_registry_path),
            "--split",
            "test",
            "--methods",
            *methods,
            "--json",
            "--plot",
            str(tmp_path / "plot.png"),
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    res = report["results"]
    assert set(res) == set(methods)
    assert report["ranker"] == "default"
    assert res["knn"]["checkpoint_top1"] == 1.0  # identical prompts in train pages
    assert res["retrieval"]["checkpoint_top1"] >= 0.5
    assert all(r["hallucination_rate"] == 0.0 for r in res.values())
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_page_halves_split_the_pairs_by_page_id():
    from diffagent.bench.split import page_half
    from diffagent.errors import UserInputError
    from diffagent.training.cards import CardsConfig

    pairs = [row_to_pair(raw_row(i, page, "a fox", 1003, 103)) for i, page in enumerate((10, 11, 12, 13, 13))]
    assert [p.page_model_id for p in page_half(pairs, "even")] == [10, 12]
    assert [p.page_model_id for p in page_half(pairs, "odd")] == [11, 13, 13]
    assert page_half(pairs, "all") == pairs
    with pytest.raises(UserInputError, match="pages must be one of"):
        page_half(pairs, "half")
    assert CardsConfig(pages="even").pages == "even"
    with pytest.raises(ValueError):
        CardsConfig(pages="half")
