"""The in-memory BM25 equals FTS5's bm25() over the same text, reads the text that the registry's FTS5 table held
before it was dropped, is cached beside the registry, and follows the text when it changes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from diffagent.registry.lexical import COLUMNS, TOKENIZE, load_or_build, model_texts
from diffagent.registry.location import cache_base
from diffagent.registry.query import query_words
from diffagent.registry.store import Registry

QUERIES = [
    "watercolor fox",
    "portrait photo of an old fisherman",
    "anime girl, school uniform",
    "cinematic",
    "pixel art castle",
    "realistic vision photo",
    "nothing-matches-this zzzqqq",
    "foxes in forests",
]


def _fts_scores(reg: Registry, words: list[str]) -> dict[int, float]:
    """FTS5's own ``bm25()`` over the registry's text, in a full-text table of its own."""
    with reg.engine.connect() as conn:
        texts = model_texts(conn)
    con = sqlite3.connect(":memory:")
    con.execute(f"CREATE VIRTUAL TABLE t USING fts5({', '.join(COLUMNS)}, tokenize='{TOKENIZE}')")
    con.executemany(f"INSERT INTO t (rowid, {', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?)", texts)
    q = " OR ".join(f'"{w}"' for w in words)
    rows = con.execute("SELECT rowid, bm25(t, 5.0, 3.0, 2.0, 1.0) FROM t WHERE t MATCH ?", (q,)).fetchall()
    con.close()
    return {int(r[0]): -float(r[1]) for r in rows}


#: what the import wrote into the FTS5 table before migration m006 dropped it (the text BM25 ranked then)
_OLD_FTS_TEXT = (
    "SELECT v.id, m.name || ' ' || v.name,"
    "  coalesce((SELECT group_concat(value, ' ') FROM json_each(m.tags)), '') || ' ' ||"
    "  coalesce((SELECT group_concat(value, ' ') FROM json_each(k.concepts)), ''),"
    "  (SELECT group_concat(value, ' ') FROM json_each(v.trained_words)),"
    "  substr(m.description, 1, 600)"
    " FROM model_version v JOIN model m ON m.id = v.model_id LEFT JOIN model_kind k ON k.version_id = v.id"
    " ORDER BY v.id"
)


@pytest.mark.sqlite_only
def test_the_text_is_what_the_dropped_fulltext_table_held(tiny_registry):
    with tiny_registry.engine.connect() as conn:
        old = [tuple(r) for r in conn.execute(text(_OLD_FTS_TEXT))]
        new = model_texts(conn)
    assert len(new) == len(old) > 10
    assert [(i, n, t, w, d or "") for i, n, t, w, d in old] == new


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


def test_the_cache_is_reused_and_follows_the_text(tiny_registry_copy, embedder):
    db = tiny_registry_copy
    reg = Registry.open(db, embedder=embedder)
    first = load_or_build(reg.engine, db)
    cache = Path(f"{cache_base(db)}.bm25.npz")
    assert cache.is_file()
    again = load_or_build(reg.engine, db)
    assert again.key == first.key and (again.matrix != first.matrix).nnz == 0
    with reg.engine.begin() as conn:  # a model renamed: the index is rebuilt, and so is the cache
        conn.execute(text("UPDATE model SET name = 'Zzzqqq Special' WHERE id = (SELECT min(id) FROM model)"))
    changed = load_or_build(reg.engine, db)
    assert changed.key != first.key and changed.scores(["zzzqqq"]).any()
    cache.write_bytes(b"not an npz")  # a damaged cache is rebuilt, not an error
    assert load_or_build(reg.engine, db).scores(["zzzqqq"]).any()
    reg.close()
