"""CISPO: Clipped IS-weight Policy Optimization (Chen et al. 2025, "MiniMax-M1", arXiv:2506.13585).

PPO's clip (Schulman et al. 2017, Eq. 7) drops the gradient of every token whose ratio leaves the
clip range; those are often the rare "fork" tokens of long reasoning. CISPO clips the
importance-sampling weight instead, detaches it, and keeps every token's gradient:

    J_CISPO(θ) = E[(1/Σ_i|o_i|) Σ_i Σ_t sg(r̂_{i,t}) Â_{i,t} log π_θ(o_{i,t} | q, o_{i,<t})],
    r̂_{i,t} = clip(r_{i,t}, 1 − ε_low^IS, 1 + ε_high^IS),

with r_{i,t} the token ratio (DAPO, Yu et al. 2025, Eq. 6), taken in log space.
The paper's 1/Σ|o_i| is the ``token_mean`` aggregation.
"""
from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from rlloom import hookimpl
from rlloom.batch import RolloutBatch
from rlloom.kinds import LossOutput
from rlloom.algos.ratio import (
    check_positive,
    clip_metrics,
    log_ratio,
    ratio_metrics,
    zero_padding,
)


class CISPO:
    """CISPO loss −sg(clip(r, 1−ε_low, 1+ε_high))·A·log π per token (MiniMax-M1).

    Chen et al. 2025, "MiniMax-M1", the CISPO objective above. Per token

        loss_{i,t} = −sg(clip(r_{i,t}, 1 − ε_low, 1 + ε_high)) · A_{i,t} · log π_θ,

    whose gradient −clip(r_{i,t})·A_{i,t}·∇log π_θ is REINFORCE reweighted by a truncated
    importance weight: no token's gradient is zeroed, and on-policy (r = 1) it is the vanilla
    policy gradient. The loss value is a surrogate for that gradient, not an estimate of −J.

    Defaults: the paper sets no lower bound ("ε_low^IS large") and does not publish ε_high^IS;
    ``eps_low`` = 1.0 gives the bound 0, which no ratio crosses (any value ≥ 1 is the same), and
    ``eps_high`` = 0.28 is DAPO's clip-higher value, common in open CISPO implementations.

    Shapes: ``logprobs`` [B,T], ``batch.advantages`` [B,T] → ``loss`` [B,T], 0 on padding.
    Metrics: ``clip/low_frac`` (r < 1−ε_low), ``clip/high_frac`` (r > 1+ε_high), ``clip/frac``
    (either), counted whatever the sign of A (the clip acts on the weight, and a clipped token
    keeps its gradient); ``ratio/mean|min|max`` and ``kl/old_approx``.
    """

    requires: ClassVar[set[str]] = {"advantages"}
    needs_logits: ClassVar[bool] = False
    consumes: ClassVar[str] = "rollout"
    off_policy_params: ClassVar[frozenset[str]] = frozenset({"eps_low", "eps_high"})

    def __init__(self, eps_low: float = 1.0, eps_high: float = 0.28):
        self.eps_low = check_positive("eps_low", eps_low)
        self.eps_high = check_positive("eps_high", eps_high)

    def __call__(self, logprobs: Tensor, batch: RolloutBatch, logits: Tensor | None = None) -> LossOutput:
        mask = batch.mask
        lr = log_ratio(logprobs, batch)
        ratio = lr.exp()
        weight = ratio.clamp(1.0 - self.eps_low, 1.0 + self.eps_high).detach()
        loss = -weight * batch.advantages * logprobs
        metrics = ratio_metrics(ratio, lr, mask)
        metrics.update(
            clip_metrics(ratio < 1.0 - self.eps_low, ratio > 1.0 + self.eps_high, mask)
        )
        return LossOutput(zero_padding(loss, mask), mask, metrics)


@hookimpl
def rlloom_policy_loss():
    return {"cispo": CISPO}
