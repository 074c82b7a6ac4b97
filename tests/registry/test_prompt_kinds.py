"""Checkpoint kinds refined by creators' prompts (registry/prompt_kinds.py): a 2.5D anime mix tagged
"photorealistic" becomes anime when its creators write anime prompts; photo models, named ones, checkpoints with
few prompts and curated labels stay as they are; running it again changes nothing."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from sqlalchemy import text

from diffagent.registry.db import open_engine
from diffagent.registry.importer import import_records
from diffagent.registry.index import UPSERT_VECTOR
from diffagent.registry.prompt_kinds import MIN_ANCHORS, refine_checkpoint_kinds
from diffagent.registry.records import FileRecord, ImageRecord, ModelRecord, VersionRecord

DIM = 8
ANIME, PHOTO = np.eye(DIM, dtype=np.float32)[0], np.eye(DIM, dtype=np.float32)[1]
ANIME_PROMPT = "masterpiece, best quality, 1girl, solo, looking at viewer, cherry blossoms"
PHOTO_PROMPT = "RAW photo of a woman in a cafe, dslr, soft light, film grain"
BOORU_PHOTO = "1girl, solo, (realistic:1.4), RAW photo, best quality"  # an Asian portrait mix's prompt


def _checkpoint(mid: int, name: str, tags: list[str], prompts: list[str], kinds=None) -> ModelRecord:
    vid = mid * 10
    autov2 = hashlib.sha256(str(vid).encode()).hexdigest()[:10].upper()
    images = [ImageRecord(image_id=vid * 100 + i, prompt=p, model_hash=autov2) for i, p in enumerate(prompts)]
    version = VersionRecord(
        id=vid,
        name="v1",
        base_model="SD 1.5",
        kinds=kinds,
        files=[FileRecord(id=vid, name=f"{name}.safetensors", autov2=autov2, primary=True)],
        images=images,
    )
    return ModelRecord(id=mid, name=name, type="checkpoint", tags=tags, versions=[version])


def _registry(db, candidates: dict[str, tuple[list[str], list[str], np.ndarray, list[str] | None]]):
    """Anchors (derived anime / photo by their tags) plus the named candidates, with their prompt vectors."""
    records, vectors = [], {}
    for i in range(MIN_ANCHORS):
        records.append(_checkpoint(100 + i, f"Cel Mix {i}", ["anime"], [ANIME_PROMPT] * 5))
        vectors[(100 + i) * 10] = ANIME + 0.1 * np.eye(DIM, dtype=np.float32)[2 + i % 6]
        records.append(_checkpoint(200 + i, f"Lens Mix {i}", ["photorealistic"], [PHOTO_PROMPT] * 5))
        vectors[(200 + i) * 10] = PHOTO + 0.1 * np.eye(DIM, dtype=np.float32)[2 + i % 6]
    ids = {}
    for j, (name, (tags, prompts, vec, kinds)) in enumerate(candidates.items()):
        mid = 300 + j
        records.append(_checkpoint(mid, name, tags, prompts, kinds))
        vectors[mid * 10] = vec
        ids[name] = mid * 10
    import_records(db, records, source="test", embedder=None)
    engine = open_engine(db)
    _put_prompt_vectors(engine, vectors)
    return engine, ids


def _put_prompt_vectors(engine, vectors: dict[int, np.ndarray]) -> None:
    """Store ``prompts`` vectors as the import's embedding step would (unit length, fp16)."""
    with engine.begin() as conn:
        conn.execute(
            text(UPSERT_VECTOR),
            [
                {
                    "kind": "prompts",
                    "owner_id": vid,
                    "model": "test",
                    "dim": DIM,
                    "h": str(vid),
                    "data": (v / np.linalg.norm(v)).astype(np.float16).tobytes(),
                }
                for vid, v in vectors.items()
            ],
        )


def _kinds(engine, vid: int) -> tuple[list[str], str]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT kinds, origin FROM model_kind WHERE version_id = :v"), {"v": vid}).one()
    return json.loads(row.kinds), row.origin


def test_creators_prompts_decide_a_photo_tagged_anime_mix(db):
    near_anime = ANIME + 0.3 * PHOTO
    engine, ids = _registry(
        db,
        {
            "Orange Chill": (["photorealistic"], [ANIME_PROMPT] * 6, near_anime, None),
            # a photo model whose prompts are booru tags plus photo words: the words keep it photo
            "Chill Portrait": (["photorealistic"], [BOORU_PHOTO] * 6, near_anime, None),
            # its name says what it is
            "Dream Realistic": (["photorealistic"], [ANIME_PROMPT] * 6, near_anime, None),
            # four prompts are too few to judge by
            "Few Prompts": (["photorealistic"], [ANIME_PROMPT] * 4, near_anime, None),
            # anime words, but its prompts' vector is nearer the photo models'
            "Lookalike": (["photorealistic"], [ANIME_PROMPT] * 6, PHOTO + 0.3 * ANIME, None),
            # a curated label is never touched
            "Curated": (["photorealistic"], [ANIME_PROMPT] * 6, near_anime, ["photo"]),
        },
    )
    assert _kinds(engine, ids["Orange Chill"]) == (["photo"], "derived")
    with engine.begin() as conn:
        assert refine_checkpoint_kinds(conn) == 1
    assert _kinds(engine, ids["Orange Chill"]) == (["anime"], "prompts")
    for name in ("Chill Portrait", "Dream Realistic", "Few Prompts", "Lookalike"):
        assert _kinds(engine, ids[name]) == (["photo"], "derived"), name
    assert _kinds(engine, ids["Curated"]) == (["photo"], "curated")

    with engine.begin() as conn:  # again: the same decisions, nothing else moves
        assert refine_checkpoint_kinds(conn) == 1
    assert _kinds(engine, ids["Orange Chill"]) == (["anime"], "prompts")

    # the derived label written back (as a re-import writes it): refining gives the same answer
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE model_kind SET kinds = '[\"photo\"]', origin = 'derived' WHERE version_id = :v"),
            {"v": ids["Orange Chill"]},
        )
        assert refine_checkpoint_kinds(conn) == 1
    assert _kinds(engine, ids["Orange Chill"]) == (["anime"], "prompts")
    engine.dispose()


def test_import_refines_after_the_vectors(db):
    """A re-import of the same pages (the prompt vectors kept) ends with the refined labels, and says how many."""
    candidates = {"Orange Chill": (["photorealistic"], [ANIME_PROMPT] * 6, ANIME + 0.3 * PHOTO, None)}
    engine, ids = _registry(db, candidates)
    engine.dispose()
    records = [_checkpoint(300, "Orange Chill", ["photorealistic"], [ANIME_PROMPT] * 6)]
    report = import_records(db, records, source="test again", embedder=None)
    assert report.kinds_from_prompts == 1 and "1 checkpoints labelled anime" in report.summary()
    engine = open_engine(db)
    assert _kinds(engine, ids["Orange Chill"]) == (["anime"], "prompts")
    engine.dispose()


def test_too_few_anchors_change_nothing(db):
    records = [_checkpoint(300, "Orange Chill", ["photorealistic"], [ANIME_PROMPT] * 6)]
    import_records(db, records, source="test", embedder=None)
    engine = open_engine(db)
    _put_prompt_vectors(engine, {3000: ANIME})
    with engine.begin() as conn:
        assert refine_checkpoint_kinds(conn) == 0
    assert _kinds(engine, 3000) == (["photo"], "derived")
    engine.dispose()


def test_a_page_is_judged_as_a_whole(db):
    """A new version with two images of its own takes its page's verdict; when the page's prompt vectors are gone,
    its versions go back to their derived label."""
    engine, ids = _registry(db, {"Orange Chill": (["photorealistic"], [ANIME_PROMPT] * 6, ANIME + 0.3 * PHOTO, None)})
    engine.dispose()
    page = _checkpoint(300, "Orange Chill", ["photorealistic"], [ANIME_PROMPT] * 6)
    newer = _checkpoint(301, "Orange Chill", ["photorealistic"], [ANIME_PROMPT] * 2).versions[0]
    newer.id, newer.name = 3001, "v2"
    page.versions.append(newer)
    import_records(db, [page], source="test", embedder=None)
    engine = open_engine(db)
    assert _kinds(engine, 3000) == (["anime"], "prompts")
    assert _kinds(engine, 3001) == (["anime"], "prompts")  # no vector and two prompts of its own
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM vector WHERE kind = 'prompts' AND owner_id = 3000"))
        assert refine_checkpoint_kinds(conn) == 0
    assert _kinds(engine, 3000) == (["photo"], "derived") and _kinds(engine, 3001) == (["photo"], "derived")
    engine.dispose()


def test_vectors_of_another_embedder_are_left_out(db):
    """A registry re-embedded in part with another model holds vectors of two sizes: the refinement reads the space
    most vectors are in, and a page with vectors only of the other stays as derived."""
    candidates = {
        "Orange Chill": (["photorealistic"], [ANIME_PROMPT] * 6, ANIME + 0.3 * PHOTO, None),
        "Other Space": (["photorealistic"], [ANIME_PROMPT] * 6, ANIME + 0.3 * PHOTO, None),
    }
    engine, ids = _registry(db, candidates)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE vector SET model = 'another', dim = 4, data = :d WHERE kind = 'prompts' AND owner_id = :v"),
            {"d": np.ones(4, np.float16).tobytes(), "v": ids["Other Space"]},
        )
        assert refine_checkpoint_kinds(conn) == 1
    assert _kinds(engine, ids["Orange Chill"]) == (["anime"], "prompts")
    assert _kinds(engine, ids["Other Space"]) == (["photo"], "derived")
    engine.dispose()
