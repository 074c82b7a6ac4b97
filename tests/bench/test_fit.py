"""The natural-request fit benchmark: its label files, loading prompts by reference, and the grading."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from diffagent.apicall import ApiCall
from diffagent.bench.fit import (
    KINDS,
    PROMPT_LABELS,
    FitItem,
    evaluate_fit,
    judge_input,
    load_fit_set,
    load_labels,
    load_model_labels,
)
from diffagent.errors import UserInputError

SHARED_PROMPTS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "prompts"


def test_prompt_labels_integrity():
    rows = load_labels()
    assert len(rows) >= 300
    assert len({r["ref"] for r in rows}) == len(rows)
    splits = Counter(r["split"] for r in rows)
    assert 0.25 <= splits["heldout"] / len(rows) <= 0.42  # a third kept aside
    no_cue = sum(not r["style_cue"] for r in rows)
    assert no_cue >= 0.5 * len(rows) - 30  # about half without a style cue
    for r in rows:
        assert len(r["sha"]) == 12 and "prompt" not in r  # the text stays in the shared prompt sets
        assert set(r["good"]) <= KINDS and not set(r["good"]) & set(r["ok"])
        assert all(a == a.lower() for a in r["asks_for"])
    # the split is a fixed function of the reference: never re-drawn to fit a result
    for r in rows:
        held = int(hashlib.sha256(("fit-split:" + r["ref"]).encode()).hexdigest(), 16) % 3 == 0
        assert (r["split"] == "heldout") is held


def test_model_labels_are_checked_against_the_vocabulary(tmp_path):
    good = tmp_path / "m.jsonl"
    good.write_text(
        json.dumps({"version_id": 7, "kinds": ["photo"], "concepts": [], "by": "judge"})
        + "\n"
        + json.dumps({"version_id": 8, "kinds": ["style"], "concepts": ["ink wash"], "by": "judge"})
        + "\n"
    )
    assert set(load_model_labels(good)) == {7, 8}
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"version_id": 7, "kinds": ["realistic"], "by": "judge"}) + "\n")
    with pytest.raises(UserInputError, match="b.jsonl:1: bad model label"):
        load_model_labels(bad)
    unsigned = tmp_path / "u.jsonl"
    unsigned.write_text(json.dumps({"version_id": 7, "kinds": ["photo"]}) + "\n")
    with pytest.raises(UserInputError, match="who judged it"):
        load_model_labels(unsigned)
    with pytest.raises(UserInputError, match="not found"):
        load_model_labels(tmp_path / "missing.jsonl")


def _fit_set(tmp_path: Path, prompts: list[str], labels: list[dict]) -> tuple[Path, Path]:
    root = tmp_path / "prompts"
    root.mkdir()
    (root / "p.txt").write_text("\n".join(prompts) + "\n")
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in labels))
    return root, path


def _label(i: int, text: str, good, ok=(), cue=False, asks=(), split="heldout") -> dict:
    return {
        "ref": f"p.txt#{i}",
        "sha": hashlib.sha256(text.encode()).hexdigest()[:12],
        "good": list(good),
        "ok": list(ok),
        "style_cue": cue,
        "asks_for": list(asks),
        "split": split,
    }


def test_load_fit_set_reads_text_by_reference_and_checks_its_hash(tmp_path):
    prompts = ["a photo of a bench", "an anime girl"]
    root, path = _fit_set(
        tmp_path, prompts, [_label(0, prompts[0], ["photo"]), _label(1, prompts[1], ["anime"], split="dev")]
    )
    items = load_fit_set(root, "heldout", path)
    assert [it.prompt for it in items] == ["a photo of a bench"]
    assert len(load_fit_set(root, "all", path)) == 2
    (root / "p.txt").write_text("a photo of a chair\nan anime girl\n")
    with pytest.raises(UserInputError, match="changed since it was labelled"):
        load_fit_set(root, "heldout", path)
    with pytest.raises(UserInputError, match="unknown split"):
        load_fit_set(root, "train", path)


def test_a_label_outside_the_vocabulary_is_refused(tmp_path):
    root, path = _fit_set(tmp_path, ["x"], [_label(0, "x", ["realistic"])])
    with pytest.raises(UserInputError, match="bad label"):
        load_labels(path)


def test_grading():
    it = FitItem(
        "r",
        "a sheep in a field, watercolor",
        frozenset({"art", "general"}),
        frozenset({"photo"}),
        True,
        ("watercolor",),
        "heldout",
    )
    assert it.grade(["art"]) == 2 and it.grade(["photo"]) == 1 and it.grade(["anime"]) == 0
    assert it.grade(["base"]) == 1 and it.grade(["refiner"]) == 0 and it.grade([]) == 0
    assert it.asks(["watercolor painting", "watercolor"]) and not it.asks(["wool"])


def test_evaluate_fit_on_the_default_registry():
    """Wrong kind, harmful LoRA and an error each count, with real registry models."""
    from diffagent.registry.store import Registry
    from diffagent.settings import Settings

    reg = Registry.open(Settings().registry)
    by_slug = {}
    for _vid, info in reg.versions(reg.popular(types=["checkpoint", "lora"], limit=1000)).items():
        by_slug[info.slug] = info
    photo, anime, moxin = by_slug["realistic-vision-v51"], by_slug["anything-v3"], by_slug["moxin"]

    def call(ck, loras=()):
        return ApiCall(
            checkpoint=ck.ref(),
            loras=[{**lo.ref().model_dump(), "weight": 0.7} for lo in loras],
            prompt="x",
            sampler="Euler a",
            steps=20,
            cfg_scale=7,
            width=512,
            height=512,
            seed=1,
        )

    plain = frozenset({"photo", "general"})
    items = [
        FitItem("a", "a sheep in a field", plain, frozenset({"art"}), False, (), "heldout"),
        FitItem("b", "a sheep in a field", plain, frozenset({"art"}), False, (), "heldout"),
        FitItem(
            "c", "an ink wash painting of a sheep", frozenset({"art"}), frozenset(), True, ("ink wash",), "heldout"
        ),
        FitItem("d", "boom", plain, frozenset(), False, (), "heldout"),
    ]
    answers = {"a": call(photo), "b": call(anime, [moxin]), "c": call(photo, [moxin])}

    def select(prompt, it=iter(items)):
        ref = next(it).ref
        if ref == "d":
            raise RuntimeError("broken")
        return answers[ref]

    scores = evaluate_fit(items, select, reg, model_labels={anime.id: {"kinds": ["anime"], "concepts": []}})
    row = scores.row()
    reg.close()
    # the models a judge has still to label: every chosen one but the labelled anime model, each once
    assert list(scores.to_judge) == [photo.id, moxin.id]
    line = judge_input(scores.to_judge[moxin.id])
    assert line["version_id"] == moxin.id and line["type"] == "lora" and line["name"] == moxin.model_name
    assert line["trigger_words"] == moxin.trained_words and len(line["description"]) <= 400
    assert "<" not in line["description"]  # plain text for the judge
    assert row["n"] == 4 and row["invalid"] == 1
    assert row["wrong"] == 3  # the anime model for a plain request, the photo model for ink wash, the error
    assert row["harmful_lora_rate"] == 0.25  # MoXin where nobody asked for ink wash; fine where it was asked
    assert row["no_cue"]["n"] == 3


@pytest.mark.shared_data
def test_every_labelled_prompt_resolves_in_the_shared_prompt_sets():
    if not SHARED_PROMPTS.is_dir():
        pytest.skip(f"shared prompt sets not found at {SHARED_PROMPTS}")
    items = load_fit_set(SHARED_PROMPTS, "all", PROMPT_LABELS)
    assert len(items) == len(load_labels())
