"""The card adapter: fitting on tiny data, saving and loading, and training end to end on the tiny registry."""

from __future__ import annotations

import numpy as np
import pytest

from diffagent.agent.cards import CardAdapter, load_setting
from diffagent.bench.pairs import Pair, Target
from diffagent.errors import UserInputError
from diffagent.training.cards import evaluate, fit, train_cards


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_fit_learns_a_map_from_queries_to_their_cards():
    rng = np.random.default_rng(0)
    d, m = 16, 12
    cards = _unit(rng.normal(size=(m, d)))
    rot = np.linalg.qr(rng.normal(size=(d, d)))[0].astype(np.float32)  # queries live in a rotated space
    pos = rng.integers(0, m, size=400)
    q = _unit(cards[pos] @ rot.T + 0.3 * rng.normal(size=(400, d)))
    pages = np.arange(m)
    before = evaluate(q, pos, pages, cards)["model_top1"]
    w = fit(q, pos, cards, steps=300, batch=64, lr=1e-2, tau=0.1)
    after = evaluate(CardAdapter(w).transform(q), pos, pages, cards)["model_top1"]
    assert before < 0.5 and after > 0.8


def test_adapter_round_trip_and_settings(tmp_path):
    w = np.eye(4, dtype=np.float32) * 0.5
    a = CardAdapter(w, {"embedder": "all-MiniLM-L6-v2"})
    path = a.save(tmp_path / "a.npz")
    b = CardAdapter.load(path)
    assert b.embedder == "all-MiniLM-L6-v2" and b.digest() == a.digest()
    v = b.transform(np.array([[1.0, 0, 0, 0]], dtype=np.float32))
    assert np.allclose(np.linalg.norm(v), 1.0)
    assert load_setting("none") is None and load_setting(str(path)).dim == 4
    with pytest.raises(UserInputError, match="train cards"):
        load_setting(str(tmp_path / "missing.npz"))
    with pytest.raises(UserInputError, match="square"):
        CardAdapter(np.zeros((2, 3)))


def test_train_cards_end_to_end_on_the_tiny_registry(tiny_registry, tmp_path):
    prompts = ["watercolor painting of a fox", "portrait photo of an old fisherman", "1girl, solo, school uniform",
               "cinematic photo of a lighthouse"]
    targets = [(1003, 103), (1001, 101), (1002, 102), (1004, 104)]
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as fh:
        for i in range(24):
            split = "train" if i < 16 else ("val" if i < 20 else "test")
            ck, page = targets[i % 4]
            fh.write(Pair(image_id=i, page_model_id=page, split=split, instruction=prompts[i % 4],
                          target=Target(checkpoint_version_id=ck, checkpoint_model_id=page)).model_dump_json() + "\n")
    meta = train_cards(tiny_registry, path, tmp_path / "out" / "a.npz", work_dir=tmp_path / "work", steps=30,
                       eval_limit=10)
    assert meta["train_pairs"] == 16 and meta["cards"] >= 4
    assert set(meta["results"]) >= {"val/all", "test/all"}
    assert meta["results"]["val/all"]["adapted"]["model_top1"] >= meta["results"]["val/all"]["stock"]["model_top1"]
    assert CardAdapter.load(tmp_path / "out" / "a.npz").embedder == tiny_registry.embedder.name
    assert list((tmp_path / "work").glob("prompts-*.npy"))  # prompt vectors cached for a refit


def test_the_card_signal_reaches_retrieval(tiny_registry):
    from diffagent.agent.retrieve import first_stage

    d = tiny_registry.embedder.encode_query("x").shape[0]
    adapter = CardAdapter(np.zeros((d, d), dtype=np.float32), {"embedder": tiny_registry.embedder.name})
    hits = first_stage(tiny_registry, "a watercolor fox", base=None, limit=10, card=adapter)
    assert hits and all("card" in h.signals for h in hits)
    assert max(h.signals["card"] for h in hits) > 0  # W = 0: the stock query, so card = semantic here
    assert all(abs(h.signals["card"] - h.signals["semantic"]) < 1e-5 for h in hits)
    assert "card" not in first_stage(tiny_registry, "a watercolor fox", base=None, limit=10)[0].signals
    other = CardAdapter(adapter.w, {"embedder": "another-model"})  # vectors of another space: not used
    assert "card" not in first_stage(tiny_registry, "a watercolor fox", base=None, limit=10, card=other)[0].signals
