"""TRPO: the importance-weighted surrogate of Trust Region Policy Optimization.

TRPO, Schulman et al. 2015: maximise
L_TRPO(θ) = E_{s,a∼π_old}[π_θ(a|s)/π_old(a|s) · A^{π_old}(s, a)] subject to KL(π_old ‖ π_θ) ≤ δ. The surrogate is this module's policy loss; the constrained
step (conjugate gradient on Fisher-vector products, line search under the KL bound) belongs
to the optimizer step, not to the loss.
"""
from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from rlloom import hookimpl
from rlloom.batch import RolloutBatch
from rlloom.kinds import LossOutput
from rlloom.algos.ratio import log_ratio, ratio_metrics, zero_padding


class TRPOSurrogate:
    """TRPO surrogate −(π/π_old)·A per token, unclipped; the KL constraint is the optimizer's.

    TRPO, Schulman et al. 2015: L(θ) = π_θ(a|s)/π_old(a|s) · A^{π_old}(s, a). Per token, with
    r = exp(log π_θ − log π_old) (the token ratio of DAPO, Yu et al. 2025, Eq. 6, in log space):

        loss_{i,t} = −r_{i,t} · A_{i,t},   ∇loss_{i,t} = −r_{i,t} · A_{i,t} · ∇log π_θ.

    At θ = θ_old (r = 1) the gradient is the policy gradient −A·∇log π (VinePPO, Kazemnejad
    et al. 2024, Eq. 2).

    Shapes: ``logprobs`` [B,T], ``batch.advantages`` [B,T] (``batch.old_logprobs`` [B,T] when
    off-policy) → ``loss`` [B,T], 0 on padding. Metrics: ``ratio/mean|min|max`` and
    ``kl/old_approx`` (the per-token estimate of the KL the trust region bounds).
    """

    requires: ClassVar[set[str]] = {"advantages"}
    needs_logits: ClassVar[bool] = False
    consumes: ClassVar[str] = "rollout"

    def __call__(self, logprobs: Tensor, batch: RolloutBatch, logits: Tensor | None = None) -> LossOutput:
        lr = log_ratio(logprobs, batch)
        ratio = lr.exp()
        loss = zero_padding(-ratio * batch.advantages, batch.mask)
        return LossOutput(loss, batch.mask, ratio_metrics(ratio, lr, batch.mask))


@hookimpl
def rlloom_policy_loss():
    return {"trpo_surrogate": TRPOSurrogate}
