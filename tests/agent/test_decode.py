"""Constrained decoding over a fake model whose logits we control."""

from __future__ import annotations

import numpy as np
import pytest

from diffagent.agent.decode import Decoder, Labels, dedupe

VOCAB = 50
CK = (10, 11, 12, 13)
LO = (20, 21, 22)
NONE, END, BETWEEN = 30, 31, (32, 33)


def labels(max_loras=2):
    return Labels(checkpoints=CK, loras=LO, none=NONE, end=END, between=BETWEEN, max_loras=max_loras)


def fake_logits(prefs: dict[tuple, dict[int, float]]):
    """logits(seq): -5 everywhere, +big on token 0 (never allowed), then per-suffix preferences."""
    calls = []

    def logits(tokens):
        calls.append(tuple(tokens))
        x = np.full(VOCAB, -5.0, dtype=np.float32)
        x[0] = 100.0  # a token outside every allowed set: masking must ignore it
        for suffix, pref in prefs.items():
            if tuple(tokens[-len(suffix) :]) == suffix if suffix else True:
                for t, v in pref.items():
                    x[t] = v
        return x

    logits.calls = calls
    return logits


PROMPT = [1, 2, 3]


def test_greedy_follows_the_masked_argmax_and_never_emits_other_tokens():
    fn = fake_logits({(): {12: 5.0, 11: 1.0}, BETWEEN: {21: 4.0, NONE: 1.0}, (21,): {END: 3.0, 22: 1.0}})
    d = Decoder(fn, PROMPT, labels(), n_loras=3).greedy()
    assert d.checkpoint == 2 and d.loras == (1,) and d.done
    assert 0 not in d.tokens
    assert d.logprob < 0


def test_checkpoint_logprobs_are_a_distribution_over_labels_only():
    fn = fake_logits({(): {10: 2.0, 11: 1.0, 12: 0.0, 13: -1.0}})
    lp = Decoder(fn, PROMPT, labels(), n_loras=0).checkpoint_logprobs()
    assert lp.shape == (4,)
    assert np.isclose(np.exp(lp).sum(), 1.0)
    assert list(np.argsort(-lp)) == [0, 1, 2, 3]


def test_none_ends_the_lora_list_and_max_loras_is_respected():
    fn = fake_logits({(): {10: 5.0}, BETWEEN: {NONE: 9.0}})
    assert Decoder(fn, PROMPT, labels(), n_loras=3).greedy().loras == ()
    fn = fake_logits({(): {10: 5.0}, BETWEEN: {20: 9.0}, (20,): {21: 9.0}, (21,): {22: 9.0}})
    d = Decoder(fn, PROMPT, labels(max_loras=2), n_loras=3).greedy()
    assert d.loras == (0, 1) and d.done


def test_sampling_is_reproducible_by_seed_and_varies_across_seeds():
    fn = fake_logits({(): {10: 1.0, 11: 1.0, 12: 1.0, 13: 1.0}, BETWEEN: {NONE: 5.0}})
    dec = Decoder(fn, PROMPT, labels(), n_loras=3)
    a = [d.checkpoint for d in dec.sample(12, temperature=1.0, seed=7)]
    b = [d.checkpoint for d in dec.sample(12, temperature=1.0, seed=7)]
    c = [d.checkpoint for d in dec.sample(12, temperature=1.0, seed=8)]
    assert a == b
    assert a != c
    assert len(set(a)) > 1


def test_low_temperature_sampling_concentrates_on_the_mode():
    fn = fake_logits({(): {10: 3.0, 11: 1.0}, BETWEEN: {NONE: 5.0}})
    picks = [d.checkpoint for d in Decoder(fn, PROMPT, labels(), n_loras=3).sample(20, temperature=0.05, seed=1)]
    assert set(picks) == {0}


def test_diverse_beam_search_spreads_groups_over_checkpoints():
    fn = fake_logits({(): {10: 3.0, 11: 2.5, 12: 2.0}, BETWEEN: {NONE: 5.0}})
    dec = Decoder(fn, PROMPT, labels(), n_loras=3)
    plain = dec.diverse_beam_search(groups=3, beams_per_group=1, diversity_penalty=0.0)
    diverse = dec.diverse_beam_search(groups=3, beams_per_group=1, diversity_penalty=10.0)
    assert {d.checkpoint for d in plain} == {0}  # without a penalty every group takes the argmax
    assert {d.checkpoint for d in diverse} == {0, 1, 2}
    assert all(d.done for d in diverse)
    # ranked by the model's own log-probability
    assert [d.checkpoint for d in diverse] == [0, 1, 2]


def test_dedupe_keeps_the_best_of_each_choice():
    fn = fake_logits({(): {10: 3.0, 11: 2.9}, BETWEEN: {NONE: 5.0}})
    dec = Decoder(fn, PROMPT, labels(), n_loras=3)
    out = dedupe(dec.sample(30, temperature=1.0, seed=3))
    keys = [d.key for d in out]
    assert len(keys) == len(set(keys))
    assert out == sorted(out, key=lambda d: -d.logprob)


def test_logits_are_memoised_per_sequence():
    fn = fake_logits({(): {10: 3.0}, BETWEEN: {NONE: 5.0}})
    dec = Decoder(fn, PROMPT, labels(), n_loras=3)
    dec.greedy()
    n = len(fn.calls)
    dec.greedy()
    assert len(fn.calls) == n


@pytest.mark.parametrize("n_loras", [0, 1, 3])
def test_every_strategy_yields_only_candidate_indices(n_loras):
    rng = np.random.default_rng(0)

    def noisy(tokens):
        x = rng.normal(size=VOCAB).astype(np.float32) * 3
        x[0] = 50
        return x

    dec = Decoder(noisy, PROMPT, labels(), n_loras=n_loras)
    for d in [dec.greedy(), *dec.sample(5, seed=1), *dec.diverse_beam_search(groups=3)]:
        assert 0 <= d.checkpoint < len(CK)
        assert all(0 <= j < n_loras for j in d.loras)
        assert len(d.loras) == len(set(d.loras)) <= 2
