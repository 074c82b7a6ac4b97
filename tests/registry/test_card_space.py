"""Checkpoint cards read by a two-tower card encoder (``registry/card_space.py``, ``Registry.card_vectors``): the
same vectors as the stock ones when the encoder changes nothing, cached beside the registry and rebuilt when a card
changes, and what a search's ``card`` signal multiplies."""

from __future__ import annotations

import numpy as np
from sqlalchemy import text

from diffagent.agent.cards import CardEncoder
from diffagent.registry.store import Registry

LAYER = "encoder.layer.0.attention.self.query"


def _encoder(name: str, scale: float = 0.0, towers: str = "both") -> CardEncoder:
    rng = np.random.default_rng(3)
    a = rng.normal(0, 0.2, (2, 384)).astype(np.float32)
    b = rng.normal(0, 0.2, (384, 2)).astype(np.float32)
    return CardEncoder({LAYER: (a, b)}, scale, {"embedder": name, "towers": towers})


def _private_registry(new_registry, embedder, folder) -> Registry:
    from civitai_fixtures import write_jsonl

    from diffagent.registry.importer import import_path

    db = new_registry("cards")
    import_path(write_jsonl(folder / "items.jsonl"), db, embedder=embedder)
    return Registry.open(db, embedder=embedder)


def test_an_encoder_that_changes_nothing_gives_the_stock_card_vectors(tiny_registry):
    idx = tiny_registry._load_index()
    space = tiny_registry.card_vectors(_encoder(tiny_registry.embedder.name))
    assert space.shape == idx.vec.shape
    ckpt = np.flatnonzero(idx.types == "checkpoint")
    assert len(ckpt) >= 4
    # the stock vectors are stored as float16 and so are the cached ones
    assert np.abs(space[ckpt] - idx.vec[ckpt]).max() < 2e-3
    others = np.flatnonzero(idx.types != "checkpoint")
    assert not space[others].any()  # only checkpoints are cards the selector ranks


def test_card_vectors_are_cached_and_rebuilt_when_a_card_changes(new_registry, embedder, monkeypatch, tmp_path):
    reg = _private_registry(new_registry, embedder, tmp_path)
    enc = _encoder(embedder.name, scale=1.0)
    first = reg.card_vectors(enc)
    assert reg.card_vectors(enc) is first  # memoised per encoder
    calls = []
    original = CardEncoder.encode_bulk

    def counting(self, emb, texts):
        calls.append(len(texts))
        return original(self, emb, texts)

    monkeypatch.setattr(CardEncoder, "encode_bulk", counting)
    again = Registry.open(reg.path, embedder=embedder)
    assert np.array_equal(again.card_vectors(enc), first) and calls == []  # read from the file beside it
    with reg.engine.begin() as conn:
        conn.execute(text("UPDATE model SET name = 'Renamed Photo Model' WHERE type = 'checkpoint' AND id = 101"))
    fresh = Registry.open(reg.path, embedder=embedder)
    changed = fresh.card_vectors(enc)
    assert calls and not np.array_equal(changed, first)  # the key covers every card text
    other = _encoder(embedder.name, scale=2.0)
    assert not np.allclose(fresh.card_vectors(other), changed)  # another encoder, another matrix
    for r in (reg, again, fresh):
        r.close()


def test_a_two_tower_encoder_ranks_by_its_own_card_vectors(tiny_registry):
    """The search's card signal is the cosine of the adapted request with the adapted card (not the stock card)."""
    from diffagent.agent.retrieve import first_stage

    name = tiny_registry.embedder.name
    prompt = "a watercolor fox"
    both = _encoder(name, scale=4.0, towers="both")
    query_only = _encoder(name, scale=4.0, towers="query")
    hits = first_stage(tiny_registry, prompt, base=None, limit=10, card=both)
    q = both.encode_query(tiny_registry.embedder, prompt)
    space = tiny_registry.card_vectors(both)
    idx = tiny_registry._load_index()
    for h in hits:
        want = float(np.clip(space[idx.pos[h.version.id]] @ q, 0, 1))
        assert abs(h.signals["card"] - want) < 1e-5
    stock = {
        h.version.id: h.signals["card"]
        for h in first_stage(tiny_registry, prompt, base=None, limit=10, card=query_only)
    }
    assert any(abs(stock[h.version.id] - h.signals["card"]) > 1e-3 for h in hits if h.version.id in stock)
