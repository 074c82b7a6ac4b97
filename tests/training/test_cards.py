"""The card encoder: its numpy forward pass equals torch's with the same LoRA updates, saving and loading, fitting on
tiny data, training end to end on the tiny registry, and the signal reaching retrieval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffagent.agent.cards import CardEncoder, load_setting
from diffagent.bench.pairs import Pair, Target, TargetLora
from diffagent.errors import UserInputError
from diffagent.training.cards import (
    CardBank,
    CardsConfig,
    ExtraPairs,
    LoraUse,
    evaluate,
    factors_of,
    fit_encoder,
    lora_model,
    train_cards,
)

LAYER = "encoder.layer.0.attention.self.query"


def _random_factors(rank: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        LAYER: (
            rng.normal(0, 0.05, (rank, 384)).astype(np.float32),
            rng.normal(0, 0.05, (384, rank)).astype(np.float32),
        ),
        "encoder.layer.5.intermediate.dense": (
            rng.normal(0, 0.05, (rank, 384)).astype(np.float32),
            rng.normal(0, 0.05, (1536, rank)).astype(np.float32),
        ),
    }


def _style_prompts(card_of_style: list[int]) -> tuple[list[str], np.ndarray]:
    """Prompts of four styles (photo, anime, watercolor, pixel art), each labelled with its style's card."""
    styles = [
        ["a photo of a {} in the street", "photograph, {}, 35mm"],
        ["anime girl with a {}", "1girl, {}, school uniform"],
        ["watercolor painting of a {}", "ink wash, {}, paper texture"],
        ["pixel art {}", "8-bit sprite of a {}"],
    ]
    things = ["cat", "house", "tree", "car", "boat", "bird", "lamp", "river"]
    texts, pos = [], []
    for card, templates in zip(card_of_style, styles, strict=True):
        for t in templates:
            for th in things:
                texts.append(t.format(th))
                pos.append(card)
    return texts, np.array(pos)


def test_numpy_encoder_with_merged_updates_equals_torch(embedder):
    import torch
    from transformers import AutoModel

    from diffagent.training.cards import _mean_pool

    enc = CardEncoder(_random_factors(), scale=2.0, meta={"embedder": embedder.name})
    texts = ["a watercolor painting of a fox", "portrait photo of an old fisherman, soft light"]
    before = embedder.numpy_encoder().encode(texts)
    ours = enc.encode(embedder, texts)
    # the card encoder shares the query encoder's unchanged weights: the query encoder itself stays stock
    assert np.array_equal(embedder.numpy_encoder().encode(texts), before)
    model = AutoModel.from_pretrained(str(embedder.check()), local_files_only=True).eval()
    with torch.no_grad():
        for name, (a, b) in enc.factors.items():
            layer = model.get_submodule(name)
            layer.weight += torch.from_numpy(2.0 * (b @ a))
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(embedder.check()), local_files_only=True)
        theirs = _mean_pool(model, tok, texts, embedder.max_seq_length, "cpu").numpy()
    assert np.allclose(ours, theirs, atol=2e-5)
    stock = embedder.encode(texts)
    assert not np.allclose(ours, stock, atol=1e-3)  # the updates change the vectors
    assert np.allclose(enc.encode_query(embedder, texts[0]), ours[0], atol=1e-6)


def test_save_load_round_trip_and_settings(tmp_path, embedder):
    enc = CardEncoder(_random_factors(), scale=2.0, meta={"embedder": "all-MiniLM-L6-v2", "steps": 3})
    path = enc.save(tmp_path / "e.npz")
    back = CardEncoder.load(path)
    assert back.embedder == "all-MiniLM-L6-v2" and back.meta["steps"] == 3 and back.scale == 2.0
    assert back.digest() == enc.digest()  # float16 on disk, the digest is of the float16 factors
    assert sorted(json.loads(path.with_suffix(".json").read_text())["layers"]) == sorted(enc.factors)
    assert load_setting("none") is None and load_setting(str(path)).embedder == "all-MiniLM-L6-v2"
    with pytest.raises(UserInputError, match="train cards"):
        load_setting(str(tmp_path / "missing.npz"))
    path.with_suffix(".json").unlink()
    with pytest.raises(UserInputError, match="copy both files"):
        CardEncoder.load(path)
    with pytest.raises(UserInputError, match="B @ A"):
        CardEncoder({LAYER: (np.zeros((4, 384)), np.zeros((384, 3)))}, 1.0)
    with pytest.raises(UserInputError, match="not in the sentence model"):
        CardEncoder({"encoder.layer.9.output.dense": (np.zeros((2, 384)), np.zeros((384, 2)))}, 1.0).encode(
            embedder, ["x"]
        )


def test_fit_encoder_learns_which_card_a_prompt_belongs_to(tmp_path, embedder):
    """Four 'cards' that are random directions (the stock encoder ranks them at chance); after a few dozen steps the
    prompts of each kind land on their card, and the numpy encoder with the exported factors agrees."""
    rng = np.random.default_rng(0)
    cards = rng.normal(size=(6, 384)).astype(np.float32)
    cards /= np.linalg.norm(cards, axis=1, keepdims=True)
    texts, pos = _style_prompts([0, 1, 2, 3])
    cfg = CardsConfig(steps=40, batch_size=16, lr=2e-3, tau=0.1, rank=4, alpha=8, checkpoint_every=20)
    enc, info = fit_encoder(texts, pos, cards, embedder.check(), tmp_path / "run", cfg)
    held = [
        "a photo of a dog in the street",
        "anime girl with a sword",
        "watercolor painting of a mountain",
        "pixel art castle",
    ]
    stock = evaluate(embedder.encode(held), np.arange(4), np.arange(6), cards)["model_top1"]
    tuned = evaluate(enc.encode(embedder, held), np.arange(4), np.arange(6), cards)["model_top1"]
    assert stock <= 0.5 and tuned == 1.0
    assert info["positive_cards"] == 4  # cards 4 and 5 were nobody's positive: never in the softmax
    assert (tmp_path / "run" / "metrics.json").is_file()
    # a rerun with the same plan finds the finished state and returns the same factors without training
    again, _ = fit_encoder(texts, pos, cards, embedder.check(), tmp_path / "run", cfg)
    assert again.digest() == enc.digest()


#: cards whose names say nothing of the style ("model alpha"): the stock encoder ranks them at chance
CARD_NAMES = ["model alpha v1", "model alpha v2", "model bravo", "model charlie", "model delta", "model echo"]
CARD_PAGES = np.array([10, 10, 11, 12, 13, 14])
HELD = [
    "a photo of a dog in the street",
    "anime girl with a sword",
    "watercolor painting of a hill",
    "pixel art castle",
]
HELD_PAGES = np.array([10, 11, 12, 13])


def _fit_two_towers(tmp_path, embedder, **cfg):
    """Train the two-tower encoder on prompts of four styles, each style's card one of ``CARD_NAMES``; returns
    (encoder, fit info, held-out model-page top-1)."""
    texts, pos = _style_prompts([0, 2, 3, 4])
    settings = CardsConfig(
        steps=60, batch_size=8, lr=3e-3, tau=0.1, rank=4, alpha=8, checkpoint_every=30, towers="both", **cfg
    )
    cards = np.zeros((len(CARD_NAMES), 384), np.float32)  # unused by the two-tower loss
    enc, info = fit_encoder(
        texts,
        pos,
        cards,
        embedder.check(),
        tmp_path / "run",
        settings,
        texts_of_cards=CARD_NAMES,
        card_pages=CARD_PAGES,
    )
    tuned = evaluate(enc.encode(embedder, HELD), HELD_PAGES, CARD_PAGES, enc.encode(embedder, CARD_NAMES))
    return enc, info, tuned["model_top1"]


def test_two_towers_learn_which_card_text_a_prompt_belongs_to(tmp_path, embedder):
    """``towers='both'``: the cards are texts read by the same updated encoder. The stock encoder ranks the cards at
    chance; after training, prompts of each style land on their card's text, and a second version of a page is
    never its own negative."""
    enc, info, tuned = _fit_two_towers(tmp_path, embedder, cards_per_step=5)
    assert enc.towers == "both" and info["positive_cards"] == 4
    stock = evaluate(embedder.encode(HELD), HELD_PAGES, CARD_PAGES, embedder.encode(CARD_NAMES))["model_top1"]
    assert stock <= 0.5 and tuned == 1.0
    texts, pos = _style_prompts([0, 2, 3, 4])
    with pytest.raises(ValueError, match="needs the cards"):
        fit_encoder(
            texts, pos, np.zeros((6, 384), np.float32), embedder.check(), tmp_path / "other", CardsConfig(towers="both")
        )


def test_the_card_bank_gives_the_nearest_cards_of_other_pages(embedder):
    """Hard negatives: for each query, the chosen cards nearest it under the encoder, never a version of the
    query's own page, no card twice, and the bank is encoded again every ``refresh_every`` steps."""
    import torch

    from diffagent.training.cards import _mean_pool

    cfg = CardsConfig(rank=2, alpha=4, towers="both", hard_negatives=2, refresh_every=3)
    model, tok = lora_model(embedder.check(), cfg)
    cards = [
        "watercolor landscapes v1",
        "watercolor landscapes v2",
        "photo realism",
        "anime girls",
        "pixel art sprites",
    ]
    pages = np.array([10, 10, 11, 12, 13])
    bank = CardBank(tok, cards, np.arange(5), pages, cfg)
    model.eval()
    with torch.no_grad():
        zq = _mean_pool(model, tok, ["a watercolor painting of a lake", "anime girl, school uniform"], 64, "cpu")
    assert set(bank.nearest(model, zq[:1], np.array([11]), k=2)) == {0, 1}  # both watercolor versions
    assert bank.refreshes == 1
    assert not {0, 1} & set(bank.nearest(model, zq[:1], np.array([10]), k=3))  # never the query's own page
    both = bank.nearest(model, zq, np.array([11, 12]), k=4)
    assert sorted(both) == [0, 1, 2, 3, 4]  # each query's four other-page cards, their union once each
    assert bank.refreshes == 1
    bank.nearest(model, zq, np.array([11, 12]), k=1)
    assert bank.refreshes == 2


def test_two_towers_learn_with_hard_negatives(tmp_path, embedder):
    _, info, tuned = _fit_two_towers(tmp_path, embedder, cards_per_step=4, hard_negatives=1, refresh_every=20)
    assert info["bank_refreshes"] == 3 and tuned == 1.0


def test_two_towers_learn_with_lora_cards_in_every_step(tmp_path, embedder):
    """LoRA prompts join each step with their cards read by the card tower: the checkpoint cards are still learnt,
    and a card of a page the prompt's image also used (``related``) is never that prompt's negative."""
    extra = ExtraPairs(
        texts=["a sprite of a knight, 8-bit", "retro game sprite of a dragon", "chibi sprite of a cat"] * 4,
        pos=np.array([0, 0, 0] * 4),
        cards=["Retro Sprites LoRA, pixel art, sprite, 8-bit"],
        card_pages=np.array([99]),
        related=[frozenset({99, 13})] * 12,
    )
    texts, pos = _style_prompts([0, 2, 3, 4])
    related = [frozenset({CARD_PAGES[p], 99}) if p == 4 else frozenset({CARD_PAGES[p]}) for p in pos]
    settings = CardsConfig(
        steps=60, batch_size=8, lr=3e-3, tau=0.1, rank=4, alpha=8, checkpoint_every=30, towers="both"
    )
    settings.cards_per_step, settings.lora_prompts = 6, 2
    enc, info = fit_encoder(
        texts,
        pos,
        np.zeros((len(CARD_NAMES), 384), np.float32),
        embedder.check(),
        tmp_path / "run",
        settings,
        texts_of_cards=CARD_NAMES,
        card_pages=CARD_PAGES,
        extra=extra,
        related=related,
    )
    assert info["lora_pairs"] == 12 and info["lora_cards"] == 1 and info["positive_cards"] == 4
    tuned = evaluate(enc.encode(embedder, HELD), HELD_PAGES, CARD_PAGES, enc.encode(embedder, CARD_NAMES))
    assert tuned["model_top1"] == 1.0
    with pytest.raises(ValueError, match="towers=both"):
        fit_encoder(
            texts,
            pos,
            np.zeros((len(CARD_NAMES), 384), np.float32),
            embedder.check(),
            tmp_path / "query",
            CardsConfig(lora_prompts=2),
            extra=extra,
        )


def test_lora_use_pairs_prompts_with_the_loras_their_creators_used(tiny_registry):
    """A prompt goes with the LoRA whose page shows its image, else the first its metadata names; at most
    ``per_page`` prompts a LoRA page; its related pages are every resource of the image."""

    def pair(i, loras=(), page=101, page_version=None):
        return Pair(
            image_id=i,
            page_model_id=page,
            page_version_id=page_version,
            split="train",
            instruction=f"prompt {i} <lora:x:1>",
            target=Target(
                checkpoint_version_id=1001,
                checkpoint_model_id=101,
                loras=[TargetLora(name=n, weight=0.7) for n in loras],
            ),
        )

    use = LoraUse(tiny_registry)
    train = [
        pair(0, ["filmGrain_v1"]),
        pair(1, ["filmGrain_v1", "watercolorStyle_v1"]),
        pair(2, ["watercolorStyle_v1"], page=204, page_version=2004),  # shown on the Pixel Art page
        pair(3, ["notInTheRegistry"]),
        pair(4),
        *[pair(10 + i, ["filmGrain_v1"]) for i in range(5)],
    ]
    extra = use.pairs(train, per_page=3, seed=0)
    card_of = {t: extra.cards[c].split(".")[0] for t, c in zip(extra.texts, extra.pos, strict=True)}
    assert len(extra.texts) == 4  # Film Grain capped at 3 of its 7, Pixel Art 1; none for unknown LoRAs
    assert all(not t.endswith(">") for t in extra.texts)
    assert card_of["prompt 2"].startswith("Pixel Art") and sorted(extra.card_pages.tolist()) == [201, 204]
    assert sum(c.startswith("Film Grain") for c in card_of.values()) == 3
    assert use.related(train[2]) == frozenset({101, 202, 204}) and use.related(train[4]) == frozenset({101})


def test_lora_prompts_need_two_towers(tiny_registry, tmp_path):
    with pytest.raises(UserInputError, match="--towers both"):
        train_cards(
            tiny_registry,
            tmp_path / "pairs.jsonl",
            tmp_path / "e.npz",
            work_dir=tmp_path,
            cfg=CardsConfig(lora_prompts=4),
        )


def test_factors_of_names_layers_as_the_numpy_encoder_does(embedder):
    model, _ = lora_model(embedder.check(), CardsConfig(rank=2, alpha=4))
    names = set(factors_of(model))
    assert len(names) == 6 * 6 and LAYER in names and "encoder.layer.5.output.dense" in names
    w = {f"{n}.weight" for n in names}
    from diffagent.registry.bert import NumpyBert

    assert w <= set(NumpyBert(embedder.check(), 32).w)


def test_train_cards_end_to_end_on_the_tiny_registry(tiny_registry, tmp_path):
    prompts = [
        "watercolor painting of a fox",
        "portrait photo of an old fisherman",
        "1girl, solo, school uniform",
        "cinematic photo of a lighthouse",
    ]
    targets = [(1003, 103), (1001, 101), (1002, 102), (1004, 104)]
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as fh:
        for i in range(24):
            split = "train" if i < 16 else ("val" if i < 20 else "test")
            ck, page = targets[i % 4]
            fh.write(
                Pair(
                    image_id=i,
                    page_model_id=page,
                    split=split,
                    instruction=prompts[i % 4],
                    target=Target(checkpoint_version_id=ck, checkpoint_model_id=page),
                ).model_dump_json()
                + "\n"
            )
    cfg = CardsConfig(steps=20, batch_size=4, lr=2e-3, rank=2, alpha=4, checkpoint_every=10)
    meta = train_cards(
        tiny_registry, path, tmp_path / "out" / "e.npz", work_dir=tmp_path / "work", cfg=cfg, eval_limit=10
    )
    assert meta["train_pairs"] == 16 and meta["cards"] >= 4 and meta["config"]["steps"] == 20
    assert set(meta["results"]) >= {"val/all", "test/all"}
    assert meta["results"]["val/all"]["adapted"]["model_top1"] >= meta["results"]["val/all"]["stock"]["model_top1"]
    assert CardEncoder.load(tmp_path / "out" / "e.npz").embedder == tiny_registry.embedder.name
    assert CardEncoder.load(tmp_path / "out" / "e.npz").towers == "query"
    both = CardsConfig(steps=20, batch_size=4, lr=2e-3, rank=2, alpha=4, checkpoint_every=10, towers="both")
    meta = train_cards(
        tiny_registry, path, tmp_path / "out" / "b.npz", work_dir=tmp_path / "work-b", cfg=both, eval_limit=10
    )
    loaded = CardEncoder.load(tmp_path / "out" / "b.npz")
    assert (
        meta["towers"] == "both"
        and loaded.towers == "both"
        and loaded.digest() != CardEncoder.load(tmp_path / "out" / "e.npz").digest()
    )
    assert meta["results"]["val/all"]["adapted"]["n"] == 4


def test_the_card_signal_reaches_retrieval(tiny_registry):
    from diffagent.agent.retrieve import first_stage

    name = tiny_registry.embedder.name
    zero = {LAYER: (np.zeros((2, 384), np.float32), np.zeros((384, 2), np.float32))}
    stock = CardEncoder(zero, 1.0, {"embedder": name})  # no update: the card signal is the semantic one
    hits = first_stage(tiny_registry, "a watercolor fox", base=None, limit=10, card=stock)
    assert hits and all("card" in h.signals for h in hits)
    assert max(h.signals["card"] for h in hits) > 0
    assert all(abs(h.signals["card"] - h.signals["semantic"]) < 1e-5 for h in hits)
    assert "card" not in first_stage(tiny_registry, "a watercolor fox", base=None, limit=10)[0].signals
    other = CardEncoder(zero, 1.0, {"embedder": "another-model"})  # vectors of another space: not used
    assert "card" not in first_stage(tiny_registry, "a watercolor fox", base=None, limit=10, card=other)[0].signals


def test_the_best_matching_cards_join_the_rankers_pool(tiny_registry):
    """``card_pool``: the checkpoints whose cards match best follow the fused hits (flagged), so a model no creator's
    image shows can reach the ranker; the ranker's pool holds them besides its usual 60."""
    from diffagent.agent.retrieve import RetrievalWeights, first_stage

    name = tiny_registry.embedder.name
    zero = {LAYER: (np.zeros((2, 384), np.float32), np.zeros((384, 2), np.float32))}
    stock = CardEncoder(zero, 1.0, {"embedder": name})
    one = first_stage(
        tiny_registry, "a watercolor fox", base=None, limit=1, card=stock, weights=RetrievalWeights(card_pool=0)
    )
    pooled = first_stage(
        tiny_registry, "a watercolor fox", base=None, limit=1, card=stock, weights=RetrievalWeights(card_pool=3)
    )
    assert len(one) == 1 and len(pooled) > 1 and pooled[0].version.id == one[0].version.id
    by_card = sorted(pooled, key=lambda h: -h.signals["card"])[:3]
    assert all(h.signals.get("card_pool") == 1.0 for h in by_card)
    assert all("card_pool" not in h.signals for h in pooled if h not in by_card)
    # without a card encoder there is no card pool
    assert (
        len(first_stage(tiny_registry, "a watercolor fox", base=None, limit=1, weights=RetrievalWeights(card_pool=3)))
        == 1
    )


def test_the_cli_passes_the_training_prompt_length(tiny_registry_path, tmp_path, monkeypatch, capsys):
    """``--max-length`` sets the prompt tokens seen in training (64 by default; requests are encoded with 128)."""
    import diffagent.training.cards as cards_module
    from diffagent.cli import main

    seen = {}

    def fake_train(registry, pairs, out, *, work_dir, cfg, eval_limit, progress):
        seen["cfg"] = cfg
        return {"results": {}, "seconds": 0.0, "final_loss": None}

    monkeypatch.setattr(cards_module, "train_cards", fake_train)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("")

    def run(*extra: str) -> int:
        common = ["--registry", str(tiny_registry_path), "--pairs", str(pairs), "--work-dir", str(tmp_path)]
        return main(["train", "cards", *common, *extra, "--quiet"])

    assert run("--max-length", "128") == 0
    assert seen["cfg"].max_length == 128
    assert run() == 0
    assert seen["cfg"].max_length == 64 and seen["cfg"].towers == "query"
    assert run("--towers", "both", "--cards-per-step", "48") == 0
    assert seen["cfg"].towers == "both" and seen["cfg"].cards_per_step == 48 and seen["cfg"].card_length == 96
