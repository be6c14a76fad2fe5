"""GSPO: Group Sequence Policy Optimization (Zheng et al. 2025, arXiv:2507.18071).

GSPO clips one importance ratio per sequence instead of one per token. The sequence ratio is
the length-normalised likelihood ratio

    s_i(θ) = (π_θ(y_i | x) / π_old(y_i | x))^{1/|y_i|} = exp((1/|y_i|) Σ_t log r_{i,t}),

with r_{i,t} the token ratio (DAPO, Yu et al. 2025, Eq. 6) taken in log space, and the
objective is the GRPO clipped surrogate (ProRL, Liu et al. 2025, Eq. 1; DAPO Eq. 5) at
sequence level:

    J_GSPO(θ) = E[(1/G) Σ_i min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i)].
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from rlloom import hookimpl
from rlloom.batch import RolloutBatch
from rlloom.kinds import LossOutput
from rlloom.ops import masked_mean
from rlloom.algos.ratio import check_positive, clipped_surrogate, log_ratio, zero_padding


class GSPO:
    """GSPO sequence-ratio clipped loss −min(s·A, clip(s, 1−ε_low, 1+ε_high)·A), per token.

    Zheng et al. 2025, "Group Sequence Policy Optimization", GSPO-token form: token t of
    sequence i carries s_{i,t} = sg[s_i]·π_θ(y_{i,t})/sg[π_θ(y_{i,t})] (value s_i, gradient
    s_i ∇log π_θ(y_{i,t})), with s_i = exp(mean_t(log π_θ − log π_old)), and

        loss_{i,t} = −min(s_{i,t} A_i, clip(s_{i,t}, 1 − ε_low, 1 + ε_high) A_i),

    A_i the masked mean of ``batch.advantages`` over the sequence (the constant of GRPO-type
    advantages). Under ``seq_mean_token_mean`` this has the value and gradient of the
    sequence-level J_GSPO; under ``token_mean`` longer sequences weigh more. ``eps_low`` /
    ``eps_high`` default to the paper's 3e-4 / 4e-4: a sequence ratio is a geometric mean of
    token ratios, so it stays far closer to 1 than a token ratio.

    Shapes: ``logprobs`` [B,T], ``batch.advantages`` [B,T] → ``loss`` [B,T], 0 on padding.
    Metrics: ``clip/low_frac``, ``clip/high_frac``, ``clip/frac`` and ``ratio/mean|min|max``
    over tokens, each carrying its sequence's ratio; ``kl/old_approx`` from the token ratios.
    """

    requires: ClassVar[set[str]] = {"advantages"}
    needs_logits: ClassVar[bool] = False
    consumes: ClassVar[str] = "rollout"
    off_policy_params: ClassVar[frozenset[str]] = frozenset({"eps_low", "eps_high"})

    def __init__(self, eps_low: float = 3e-4, eps_high: float = 4e-4):
        self.eps_low = check_positive("eps_low", eps_low)
        self.eps_high = check_positive("eps_high", eps_high)

    def __call__(self, logprobs: Tensor, batch: RolloutBatch, logits: Tensor | None = None) -> LossOutput:
        mask = batch.mask
        weights = mask.to(logprobs.dtype)
        lr = log_ratio(logprobs, batch)
        seq_log_ratio = masked_mean(lr, weights, dim=1).detach().unsqueeze(1)  # log sg[s_i], [B,1]
        adv = masked_mean(batch.advantages, weights, dim=1).unsqueeze(1)  # A_i, [B,1]
        ratio = torch.exp(seq_log_ratio + logprobs - logprobs.detach())  # s_{i,t}, [B,T]
        loss, metrics = clipped_surrogate(ratio, adv, self.eps_low, self.eps_high, lr, mask)
        return LossOutput(zero_padding(loss, mask), mask, metrics)


@hookimpl
def rlloom_policy_loss():
    return {"gspo": GSPO}
