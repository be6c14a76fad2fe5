"""CISPO: Clipped IS-weight Policy Optimization (Chen et al. 2025, "MiniMax-M1", arXiv:2506.13585).

PPO's clip (seed 003, DAPO Eq. (1)) drops the gradient of every token whose ratio leaves the
clip range; those are often the rare "fork" tokens of long reasoning. CISPO clips the
importance-sampling weight instead, detaches it, and keeps every token's gradient:

    J_CISPO(θ) = E[(1/Σ_i|o_i|) Σ_i Σ_t sg(r̂_{i,t}) Â_{i,t} log π_θ(o_{i,t} | q, o_{i,<t})],
    r̂_{i,t} = clip(r_{i,t}, 1 − ε_low^IS, 1 + ε_high^IS),

with r_{i,t} the token ratio of seed 003, DAPO Eq. (6), taken in log space (seed 004 §2.6).
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
        ∇loss_{i,t} = −clip(r_{i,t}) · A_{i,t} · ∇log π_θ,

    a REINFORCE gradient reweighted by a truncated importance weight; no token's gradient is
    zeroed. On-policy (r = 1) it is the vanilla policy gradient.

    Parameters (defaults checked against the paper): the paper imposes no lower bound on the
    weight, "setting ε_low^IS to a large value", and tunes only ε_high^IS without publishing
    its value. ``eps_low`` = 1.0 gives the lower bound 0, which a ratio never crosses, so no
    lower bound (any ``eps_low`` ≥ 1 is the same); ``eps_high`` = 0.28 is DAPO's clip-higher
    value, a common choice for CISPO in open implementations.

    Shapes: ``logprobs`` [B,T], ``batch.advantages`` [B,T] → ``loss`` [B,T], 0 on padding.
    The loss value is a surrogate whose gradient is the one above, not an estimate of
    −J. Metrics: ``clip/low_frac`` (r < 1−ε_low), ``clip/high_frac`` (r > 1+ε_high),
    ``clip/frac`` (either), counted whatever the sign of A because the clip acts on the
    weight, not on the objective (a clipped token keeps its gradient); ``ratio/mean|min|max``
    and ``kl/old_approx``.
    """

    requires: ClassVar[set[str]] = {"advantages"}
    needs_logits: ClassVar[bool] = False
    consumes: ClassVar[str] = "rollout"

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
