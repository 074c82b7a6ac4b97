"""The loss maths on known numbers, and the answer-only forward pass against a plain full forward."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from diffagent.training.losses import length_normalized, ranking_loss, rrhf_loss, sft_loss  # noqa: E402
from diffagent.training.model import answer_logprobs, make_batch  # noqa: E402
from diffagent.training.rrhf import shared_prompt_logprobs  # noqa: E402


def test_ranking_loss_on_known_numbers():
    p = torch.tensor([-1.0, -0.5, -2.0])
    rewards = [1.0, 0.0, 2.0]
    # pairs (worse, better): (1, 0): relu(-0.5 - -1.0) = 0.5; (1, 2): relu(-0.5 - -2.0) = 1.5;
    # (0, 2): relu(-1.0 - -2.0) = 1.0
    assert float(ranking_loss(p, rewards)) == pytest.approx(3.0)
    # already in reward order: nothing to fix
    assert float(ranking_loss(torch.tensor([-3.0, -2.0, -1.0]), [0.0, 1.0, 2.0])) == 0.0
    # ties in reward contribute nothing, whatever the probabilities
    assert float(ranking_loss(torch.tensor([-0.1, -5.0]), [1.0, 1.0])) == 0.0


def test_ranking_loss_gradient_raises_the_better_candidate():
    p = torch.tensor([-0.5, -1.0], requires_grad=True)  # worse candidate (reward 0) is more likely
    ranking_loss(p, [0.0, 1.0]).backward()
    assert p.grad.tolist() == [1.0, -1.0]  # descent lowers p_worse and raises p_better


def test_rrhf_loss_is_rank_plus_weighted_sft_on_the_best():
    lp = torch.tensor([[-1.0, -1.0, 0.0], [-0.2, -0.4, -0.6], [-3.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = [0.5, 1.5, -1.0]
    p = length_normalized(lp, mask)
    assert p.tolist() == pytest.approx([-1.0, -0.4, -3.0])
    total, rank, sft = rrhf_loss(lp, mask, rewards, sft_weight=0.5)
    # worse/better pairs: (0,1): relu(-1.0+0.4)=0; (2,0): relu(-3+1)=0; (2,1): 0 -> the ranking holds
    assert float(rank) == 0.0
    assert float(sft) == pytest.approx(0.4)  # mean NLL of the best (index 1): (0.2+0.4+0.6)/3
    assert float(total) == pytest.approx(0.2)
    assert float(sft_loss(lp, mask)) == pytest.approx((2.0 + 1.2 + 3.0) / 6)


def _reference_logprobs(model, prompt, answer):
    """Log-probabilities of the answer tokens from one plain full-sequence forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer]), use_cache=False).logits[0]
    lps = torch.log_softmax(logits.float(), dim=-1)
    return [float(lps[len(prompt) - 1 + t, tok]) for t, tok in enumerate(answer)]


def test_answer_only_logits_match_a_full_forward_with_padding(tiny_model):
    seqs = [([2, 40, 41, 42, 43, 44], [3, 30, 31]), ([2, 50, 51], [4, 30, 32, 33, 34]), ([2, 60], [5])]
    tiny_model.eval()
    b = make_batch(seqs)
    with torch.no_grad():
        lp = answer_logprobs(tiny_model, b)
    assert len(b.keep) < b.input_ids.shape[1] * len(seqs)  # the head ran on answer positions only
    for i, (prompt, answer) in enumerate(seqs):
        assert lp[i, : len(answer)].tolist() == pytest.approx(_reference_logprobs(tiny_model, prompt, answer), abs=1e-4)
        assert lp[i, len(answer) :].abs().sum() == 0


def test_shared_prompt_equals_separate_sequences_across_the_sliding_window(tiny_model):
    # the prompt (40 tokens) is longer than the sliding window (16), as Gemma's real prompts are
    prompt = [2] + [20 + (i * 7) % 200 for i in range(39)]
    answers = [[3, 30, 31], [4, 30, 32, 33, 34], [5], [6, 30, 35, 7]]
    tiny_model.eval()
    with torch.no_grad():
        lp, mask = shared_prompt_logprobs(tiny_model, prompt, answers)
    for i, a in enumerate(answers):
        assert lp[i, : len(a)].tolist() == pytest.approx(_reference_logprobs(tiny_model, prompt, a), abs=1e-4)
        assert mask[i].tolist() == [1.0] * len(a) + [0.0] * (mask.shape[1] - len(a))


def test_shared_prompt_gradients_reach_lora_weights_in_every_layer(tiny_model):
    from diffagent.training.config import LoraShape
    from diffagent.training.model import add_lora

    model = add_lora(tiny_model, LoraShape(r=2, alpha=4))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # B starts at zero, which would hide A's gradient
    lp, mask = shared_prompt_logprobs(model, [2] + list(range(20, 60)), [[3, 30], [4, 30, 31]])
    (-lp.sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and math.isfinite(float(g.abs().sum())) for g in grads.values())
    assert all(float(g.abs().sum()) > 0 for n, g in grads.items() if "k_proj" in n)  # through the cached keys
