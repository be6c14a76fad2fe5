"""A KL estimator: the absolute log-ratio (``kl: {name: abs_log_ratio, coef: 0.02}``)."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor


class AbsLogRatio:
    """|log π_θ − log π_ref| per token: a non-negative KL penalty (verl's ``abs`` estimator).

    A biased estimate of KL(π_θ ‖ π_ref) (Schulman 2020, "Approximating KL divergence", lists
    k1 = log π_θ − log π_ref, unbiased but of either sign; this is |k1|), ≥ 0 like k2 and k3.
    Shapes: ``logprobs``, ``ref_logprobs`` [B,T] → [B,T] in float32 (or wider); padding
    positions hold 0 in both, so 0 there. ``clamp``: clamp the estimate to [0, clamp]
    (null: off).
    """

    needs_logits: ClassVar[bool] = False

    def __init__(self, clamp: float | None = None):
        if clamp is not None and not clamp > 0:
            raise ValueError(f"clamp must be > 0 or null, got {clamp}")
        self.clamp = clamp

    def __call__(
        self,
        logprobs: Tensor,
        ref_logprobs: Tensor,
        logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
    ) -> Tensor:
        dtype = torch.promote_types(logprobs.dtype, torch.float32)
        kl = (logprobs.to(dtype) - ref_logprobs.to(dtype)).abs()
        return kl if self.clamp is None else kl.clamp(max=self.clamp)
