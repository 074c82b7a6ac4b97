"""The prompt-neighbour index: votes, the .npz cache beside the database, and its invalidation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from diffagent.registry.knn import load_or_build
from diffagent.registry.location import cache_base
from diffagent.registry.store import Registry


def test_index_is_cached_beside_the_db_and_reloads_identically(tiny_registry_copy, embedder):
    db = tiny_registry_copy
    reg = Registry.open(db, embedder=embedder)
    fresh = reg.prompt_neighbours("watercolor landscape with a lake")
    cache = Path(f"{cache_base(db)}.knn.npz")
    assert cache.exists() and max(fresh, key=fresh.get) == 1003
    again = Registry.open(db, embedder=embedder).prompt_neighbours("watercolor landscape with a lake")
    assert again == fresh
    # LoRA votes: the film-grain LoRA was used on the fisherman portrait
    lora = Registry.open(db, embedder=embedder).lora_neighbours("portrait photo of an old fisherman")
    assert max(lora, key=lora.get) == 2001 and 0.5 < lora[2001] <= 1.0


def test_damaged_or_stale_cache_is_rebuilt(tiny_registry_copy, embedder):
    db = tiny_registry_copy
    reg = Registry.open(db, embedder=embedder)
    Path(f"{cache_base(db)}.knn.npz").write_bytes(b"not an npz")
    index = load_or_build(reg.engine, db)
    assert index.matrix.shape[0] > 0
    assert index.votes("only the and of") == {}  # stop words match nothing


def test_without_sample_images_the_index_votes_nothing_and_writes_no_cache(tiny_registry_copy, embedder):
    db = tiny_registry_copy
    reg = Registry.open(db, embedder=embedder)
    with reg.engine.begin() as conn:
        conn.execute(text("DELETE FROM sample_image"))
    index = load_or_build(reg.engine, db)
    assert index.matrix.shape[0] == 0 and index.vectorizer is None
    assert index.votes("watercolor landscape with a lake") == {} and index.lora_votes("portrait") == {}
    assert not Path(f"{cache_base(db)}.knn.npz").exists()


def test_a_search_of_the_default_registry_imports_no_scikit_learn_or_torch():
    db = Path(__file__).parents[2] / "registry.db"
    if not db.exists():
        pytest.skip(f"{db} is not in this checkout")
    code = (
        "import sys; from diffagent.registry.store import Registry; "
        f"assert Registry.open({str(db)!r}).search('a watercolor fox', types=['checkpoint']); "
        "print(sorted(m for m in ('sklearn', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_document_share_is_the_share_of_creator_prompts_with_the_word(tiny_registry):
    """Read back from the fitted IDF, it equals counting the SFW prompts that contain the word; a word no prompt
    holds (or a stop word) is 0."""
    import re

    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    with tiny_registry.engine.connect() as conn:
        prompts = (
            conn.execute(
                text("SELECT prompt FROM sample_image WHERE version_id IS NOT NULL AND NOT nsfw AND length(prompt) > 0")
            )
            .scalars()
            .all()
        )
    words = {w for p in prompts for w in re.findall(r"\b\w\w+\b", p.lower())}
    checked = 0
    for word in sorted(words)[:40]:
        expect = sum(word in re.findall(r"\b\w\w+\b", p.lower()) for p in prompts) / len(prompts)
        got = tiny_registry.prompt_word_share(word)
        assert got == (0.0 if word in ENGLISH_STOP_WORDS else pytest.approx(expect, abs=1e-6)), word
        checked += got > 0
    assert checked > 10
    assert tiny_registry.prompt_word_share("zzqxunseenword") == 0.0
    assert tiny_registry.prompt_word_share("the") == 0.0
