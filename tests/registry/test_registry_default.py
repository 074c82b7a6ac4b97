"""The default registry: the committed ``registry.db`` must be what ``diffagent registry build-default``
builds from ``default_models.toml`` today (edit the TOML, then rebuild and commit both)."""

from __future__ import annotations

import hashlib
import sqlite3

import numpy as np
import pytest

from diffagent.errors import UserInputError
from diffagent.registry.default import CONTENT_TABLES, SOURCE, build_default, content_rows
from diffagent.registry.index import SEARCHABLE_TYPES
from diffagent.settings import PROJECT_ROOT

COMMITTED = PROJECT_ROOT / "registry.db"
REBUILD_HINT = "registry.db is stale: run `diffagent registry build-default --registry registry.db` and commit it"


class HashEmbedder:
    """Deterministic stand-in for the sentence model: the content check ignores vectors, and loading
    MiniLM to embed 160 texts would cost this test most of its time."""

    name = "hash-test"

    def encode(self, texts: list[str], **_) -> np.ndarray:
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big")
            v = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows) if rows else np.zeros((0, 384), np.float32)


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    dest = tmp_path_factory.mktemp("default") / "registry.db"
    build_default(dest, embedder=HashEmbedder())
    return dest


def test_committed_registry_matches_a_rebuild_of_the_toml(rebuilt):
    if not COMMITTED.exists():
        pytest.skip(f"{COMMITTED} is not in this checkout")
    ours, theirs = content_rows(rebuilt), content_rows(COMMITTED)
    for table in CONTENT_TABLES:
        assert len(ours[table]) == len(theirs[table]), f"{table}: row count differs; {REBUILD_HINT}"
        assert ours[table] == theirs[table], f"{table}: rows differ; {REBUILD_HINT}"


def test_committed_registry_has_vectors_from_the_default_embedder():
    if not COMMITTED.exists():
        pytest.skip(f"{COMMITTED} is not in this checkout")
    con = sqlite3.connect(f"file:{COMMITTED}?mode=ro", uri=True)
    try:
        searchable = {
            r[0]
            for r in con.execute(
                f"SELECT v.id FROM model_version v JOIN model m ON m.id = v.model_id WHERE m.type IN {SEARCHABLE_TYPES}"
            )
        }
        embedded = {r[0] for r in con.execute("SELECT owner_id FROM vector WHERE kind = 'version'")}
        models = {r[0] for r in con.execute("SELECT DISTINCT model FROM vector")}
        meta = dict(con.execute("SELECT key, value FROM registry_meta").fetchall())
    finally:
        con.close()
    assert searchable and embedded == searchable, REBUILD_HINT
    assert models == {"all-MiniLM-L6-v2"} and meta.get("embedder") == "all-MiniLM-L6-v2", REBUILD_HINT


def test_rebuild_holds_every_curated_model(rebuilt):
    from diffagent.registry.default_source import load_default_source

    records = load_default_source(SOURCE)
    con = sqlite3.connect(rebuilt)
    try:
        assert con.execute("SELECT count(*) FROM model").fetchone()[0] == len(records)
        assert con.execute("SELECT count(*) FROM model WHERE source = 'curated' AND slug IS NULL").fetchone() == (0,)
    finally:
        con.close()


def test_failed_build_leaves_the_registry_in_place(tmp_path, rebuilt):
    dest = tmp_path / "registry.db"
    dest.write_bytes(rebuilt.read_bytes())
    before = content_rows(dest)
    bad = tmp_path / "bad.toml"
    bad.write_text("[[model]\n")
    with pytest.raises(UserInputError, match="not valid TOML"):
        build_default(dest, source=bad, embedder=HashEmbedder())
    assert content_rows(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml", "registry.db"]  # no temp file left
