"""Vanilla policy gradient: the REINFORCE loss −A·log π per token.

The policy-gradient theorem gives g_pg = E_τ[Σ_t ∇_θ log π_θ(a_t | s_t) · A(s_t, a_t)]
(Sutton et al. 2000; VinePPO, Kazemnejad et al. 2024, Eq. 2); REINFORCE (Williams 1992) uses
the return-to-go G_t in place of A, and REINFORCE with baseline G_t − V(s_t). The advantage
estimator decides which of these A is; this loss only turns it into a gradient.
"""
from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from rlloom import hookimpl
from rlloom.batch import RolloutBatch
from rlloom.kinds import LossOutput
from rlloom.algos.ratio import log_ratio, ratio_metrics, zero_padding


class PolicyGradient:
    """Vanilla policy gradient −A·log π per token (REINFORCE, no ratio, no clip).

    VinePPO, Kazemnejad et al. 2024, Eq. 2; REINFORCE, Williams 1992. Per token

        loss_{i,t} = −A_{i,t} · log π_θ(o_{i,t} | q, o_{i,<t}),   ∇loss = −A_{i,t} ∇log π_θ,

    so descending the aggregated loss ascends the policy-gradient estimate.

    Shapes: ``logprobs`` [B,T], ``batch.advantages`` [B,T] → ``loss`` [B,T], 0 on padding.
    Metrics: ``ratio/*`` and ``kl/old_approx`` against ``batch.old_logprobs`` when the engine
    set them (a vanilla gradient reused over several epochs is not corrected by the ratio;
    these show how far it has drifted), else 1 and 0.
    """

    requires: ClassVar[set[str]] = {"advantages"}
    needs_logits: ClassVar[bool] = False
    consumes: ClassVar[str] = "rollout"

    def __call__(self, logprobs: Tensor, batch: RolloutBatch, logits: Tensor | None = None) -> LossOutput:
        lr = log_ratio(logprobs, batch)
        loss = zero_padding(-batch.advantages * logprobs, batch.mask)
        return LossOutput(loss, batch.mask, ratio_metrics(lr.exp(), lr, batch.mask))


@hookimpl
def rlloom_policy_loss():
    return {"pg": PolicyGradient}
