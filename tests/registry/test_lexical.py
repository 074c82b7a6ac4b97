"""The in-memory BM25 equals FTS5's bm25() over the same index, is cached beside the registry, and follows the
index when it changes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sqlalchemy import text

from diffagent.registry.index import rebuild_fulltext
from diffagent.registry.lexical import load_or_build
from diffagent.registry.query import query_words
from diffagent.registry.store import Registry

QUERIES = ["watercolor fox", "portrait photo of an old fisherman", "anime girl, school uniform", "cinematic",
           "pixel art castle", "realistic vision photo", "nothing-matches-this zzzqqq", "foxes in forests"]


def _fts_scores(reg: Registry, words: list[str]) -> dict[int, float]:
    q = " OR ".join(f'"{w}"' for w in words)
    with reg.engine.connect() as conn:
        rows = conn.execute(text("SELECT rowid, bm25(model_fts, 5.0, 3.0, 2.0, 1.0) FROM model_fts"
                                 " WHERE model_fts MATCH :q"), {"q": q}).all()
    return {int(r[0]): -float(r[1]) for r in rows}


@pytest.mark.parametrize("query", QUERIES)
def test_scores_equal_fts5_bm25(tiny_registry, query):
    index = load_or_build(tiny_registry.engine, tiny_registry.path)
    words = query_words(query)
    expected = _fts_scores(tiny_registry, words)
    got = index.scores(words)
    ours = {int(index.rowids[i]): float(got[i]) for i in np.flatnonzero(got)}
    assert set(ours) == set(expected)
    for vid, s in expected.items():
        assert ours[vid] == pytest.approx(s, rel=1e-4, abs=1e-6)


def test_top_scales_by_the_best_and_limits(tiny_registry):
    index = load_or_build(tiny_registry.engine, tiny_registry.path)
    top = index.top(query_words("model photo anime"), limit=2)
    assert len(top) == 2 and max(top.values()) == 1.0 and min(top.values()) > 0
    assert tiny_registry.lexical_scores("model photo anime", limit=2) == top
    assert index.top([], 10) == {} and tiny_registry.lexical_scores("the of a") == {}


def test_a_split_word_needs_every_token(tiny_registry):
    index = load_or_build(tiny_registry.engine, tiny_registry.path)
    [tokens] = index.tokens(["watercolor_zzzqqq"])
    assert tokens == ["watercolor", "zzzqqq"]
    assert not index.scores(["watercolor_zzzqqq"]).any()  # no row holds the second token
    assert index.scores(["watercolor"]).any()


def test_the_cache_is_reused_and_follows_the_index(tiny_registry_path, embedder, tmp_path):
    db = tmp_path / "r.db"
    shutil.copyfile(tiny_registry_path, db)
    reg = Registry.open(db, embedder=embedder)
    first = load_or_build(reg.engine, db)
    cache = tmp_path / "r.db.bm25.npz"
    assert cache.is_file()
    again = load_or_build(reg.engine, db)
    assert again.key == first.key and (again.matrix != first.matrix).nnz == 0
    with reg.engine.begin() as conn:  # a model renamed: the index is rebuilt, and so is the cache
        conn.execute(text("UPDATE model SET name = 'Zzzqqq Special' WHERE id = (SELECT min(id) FROM model)"))
        rebuild_fulltext(conn)
    changed = load_or_build(reg.engine, db)
    assert changed.key != first.key and changed.scores(["zzzqqq"]).any()
    cache.write_bytes(b"not an npz")  # a damaged cache is rebuilt, not an error
    assert load_or_build(reg.engine, db).scores(["zzzqqq"]).any()
    reg.close()
