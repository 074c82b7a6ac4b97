"""The two training objectives, on per-token answer log-probabilities (``model.answer_logprobs``).

SFT: mean negative log-likelihood of the answer tokens (the prompt is context, not a target).

RRHF (Yuan et al., 2023): for one prompt with candidates y_1..y_m, rewards r_i and length-
normalized log-probabilities p_i = (1/|y_i|) sum_t log P(y_i,t | x, y_i,<t),

    L_rank = sum over pairs with r_i < r_j of max(0, p_i - p_j)
    L      = L_rank + sft_weight * L_sft(best candidate)

so the model is pushed to give every better-rewarded answer at least the likelihood of every worse
one; ties in reward contribute nothing.
"""

from __future__ import annotations


def sft_loss(lp, mask):
    """Mean NLL over all real answer tokens of the batch."""
    return -lp.sum() / mask.sum().clamp(min=1)


def length_normalized(lp, mask):
    """p_i: the mean token log-probability of each sequence [B]."""
    return lp.sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def ranking_loss(p, rewards):
    """sum over (i, j) with r_i < r_j of relu(p_i - p_j). ``p``: [m] tensor; ``rewards``: [m]."""
    import torch

    r = torch.as_tensor(rewards, dtype=p.dtype, device=p.device)
    worse = (r.unsqueeze(1) < r.unsqueeze(0)).to(p.dtype)  # [i, j] = 1 where r_i < r_j
    return (torch.relu(p.unsqueeze(1) - p.unsqueeze(0)) * worse).sum()


def rrhf_loss(lp, mask, rewards, *, sft_weight: float = 1.0):
    """(total, ranking part, SFT part) for the m candidates of one prompt."""
    p = length_normalized(lp, mask)
    rank = ranking_loss(p, rewards)
    best = max(range(len(rewards)), key=lambda i: rewards[i])  # the first best on ties
    sft = sft_loss(lp[best : best + 1], mask[best : best + 1])
    return rank + sft_weight * sft, rank, sft
