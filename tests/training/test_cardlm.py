"""The card-LM formulation on a tiny random Gemma 3: the prompt's likelihood comes to depend on the card, so the
PMI ranks the right card first after training, where the untrained model ranks at chance."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tiny_llm import tiny_gemma  # noqa: E402

from diffagent.training.cardlm import (  # noqa: E402
    CARD_HEAD,
    CardLMConfig,
    CardPair,
    EvalItem,
    evaluate,
    request_logprobs,
    train_cardlm,
)
from diffagent.training.config import LoraShape  # noqa: E402
from diffagent.training.model import add_lora  # noqa: E402

#: four "models", each with the words its creators write
STYLES = {
    "inkline": "ink lines sketch monochrome",
    "aquarelle": "watercolor wash soft paper",
    "neonpunk": "neon city rain night",
    "realvis": "photo portrait skin bokeh",
}


def _pairs() -> list[CardPair]:
    out = []
    for name, words in STYLES.items():
        w = words.split()
        for i in range(6):
            out.append(CardPair(CARD_HEAD.format(card=f"{name} v1. {words}"), " ".join(w[i % 4 :] + w[: i % 4])))
    return out


def _items() -> list[EvalItem]:
    cards = tuple(CARD_HEAD.format(card=f"{n} v1. {w}") for n, w in STYLES.items())
    return [
        EvalItem(
            request=" ".join(w.split()[1:] + w.split()[:1]),
            cards=cards,
            ranker=(0.25,) * 4,
            target=j,
            target_has_prompts=j % 2 == 0,
        )
        for j, w in enumerate(STYLES.values())
    ]


def test_training_makes_the_prompt_depend_on_the_card(tmp_path, toy_tok):
    model = add_lora(tiny_gemma(seed=1), LoraShape(r=8, alpha=16))

    def scored():
        model.eval()
        return evaluate(lambda prefixes, request: request_logprobs(model, toy_tok, prefixes, request), _items())

    before = scored()
    model.train()
    state = train_cardlm(
        model,
        toy_tok,
        _pairs(),
        CardLMConfig(steps=60, batch_size=4, lr=2e-2, warmup_steps=0, checkpoint_every=20),
        tmp_path,
        progress=False,
    )
    after = scored()
    assert state.step == 60 and state.losses[-1] < 0.5 * state.losses[0]
    assert after["all"]["pmi_top1"] == 1.0 and before["all"]["pmi_top1"] <= 0.5
    # the creator's card explains the prompt better than another card of the shortlist
    assert after["all"]["nll_creator_card"] < after["all"]["nll_other_card"] - 0.5
    assert after["all"]["n"] == 4 and after["no_creator_prompts"]["n"] == 2
    assert after["all"]["ranker_top1"] == 0.25  # ties go to the first candidate: one of four
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_fusion_adds_pmi_per_token_to_the_ranker_logit():
    items = [EvalItem(request="a b", cards=("x", "y"), ranker=(0.6, 0.4), target=1, target_has_prompts=True)]

    def logprob(prefixes, request):  # the no-card prefix first, then the two cards
        return [(-10.0, 2), (-10.0, 2), (-6.0, 2)]

    r = evaluate(logprob, items, betas=(0.1, 1.0))["all"]
    assert r["ranker_top1"] == 0.0 and r["pmi_top1"] == 1.0
    # ranker logit gap log(0.6/0.4) = 0.405; PMI per token of card y = 2.0: beta 0.1 adds 0.2, beta 1 adds 2
    assert r["fused_top1"] == {"0.1": 0.0, "1.0": 1.0}
    assert r["nll_creator_card"] == 3.0 and r["nll_other_card"] == 5.0


def test_contrastive_term_scores_each_prompt_under_its_negatives(tmp_path, toy_tok):
    """With negatives, each step also scores the prompt under other cards and pushes its own card above them;
    the loop logs both parts, and the contrastive part falls as the card comes to matter."""
    cards = {n: CARD_HEAD.format(card=f"{n} v1. {w}") for n, w in STYLES.items()}
    pairs = [CardPair(p.card, p.request, tuple(c for c in cards.values() if c != p.card)[:2]) for p in _pairs()]
    model = add_lora(tiny_gemma(seed=1), LoraShape(r=8, alpha=16))
    model.train()
    state = train_cardlm(
        model,
        toy_tok,
        pairs,
        CardLMConfig(steps=40, batch_size=4, lr=2e-2, warmup_steps=0, checkpoint_every=20, negatives=2),
        tmp_path,
        progress=False,
    )
    contrast, lm = state.extras["contrast"], state.extras["lm"]
    assert len(contrast) == len(lm) == 40
    # chance for one own card among three is log 3 = 1.10
    assert contrast[0] > 0.8 and sum(contrast[-5:]) / 5 < 0.2
    assert all(abs(t - (a + b)) < 1e-3 for t, a, b in zip(state.losses, lm, contrast, strict=True))
    model.eval()
    after = evaluate(lambda prefixes, request: request_logprobs(model, toy_tok, prefixes, request), _items())
    assert after["all"]["pmi_top1"] == 1.0


def test_hard_negatives_are_nearest_cards_of_other_pages(tiny_registry):
    from diffagent.training.cardlm import hard_negatives
    from diffagent.training.cards import card_matrix

    registry = tiny_registry
    ids, pages, _ = card_matrix(registry)
    chosen = hard_negatives(registry, [int(ids[0])], 2, pool=3, seed=0)
    negs = chosen[int(ids[0])]
    assert len(negs) == 2 and int(ids[0]) not in negs
    page_of = dict(zip(ids.tolist(), pages.tolist(), strict=True))
    assert all(page_of[n] != page_of[int(ids[0])] for n in negs)


def test_a_short_card_keeps_name_tags_and_trigger_words(tiny_registry):
    """``--card-chars 160``: the card the model reads is cut to 160 characters, which keep the page's name,
    version, tags and trigger words ahead of the description."""
    from diffagent.training.cardlm import card_prefix
    from diffagent.training.cards import card_matrix

    ids, _, _ = card_matrix(tiny_registry)
    info = tiny_registry.versions([int(ids[0])])[int(ids[0])]
    full, short = card_prefix(info), card_prefix(info, 160)
    body = short.removeprefix("Model: ").split("\nA prompt written")[0]
    assert len(body) <= 160 and full.startswith(short.split("\n")[0][:40])
    assert info.model_name in body
    assert short.endswith("A prompt written for this model:")
    assert CardLMConfig(card_chars=160).card_chars == 160
    with pytest.raises(ValueError):
        CardLMConfig(card_chars=5)
