"""Importance ratios in log space and the metrics every ratio-based policy loss reports.

The ratio of the current to the old policy on a sampled token (DAPO, Yu et al. 2025, Eq. 6),

    r_{i,t} = π_θ(o_{i,t} | q, o_{i,<t}) / π_old(o_{i,t} | q, o_{i,<t}),

is computed in log space, r = exp(log π_θ − log π_old), for numerical stability. The
log-ratio is clamped to ±``LOG_RATIO_LIMIT`` before ``exp``: e^20 ≈ 4.9e8 is finite
in float32 and bfloat16, so one outlier token cannot turn the loss into inf/NaN; a clamped token
gets no gradient through the ratio (at that distance from the old policy a clipped loss
gives it none anyway, except the unclipped A<0 branch, which ``dual_clip`` bounds).

Old log-probs are ``batch.old_logprobs`` when the engine filled them (several epochs or
minibatches per rollout), else ``logprobs.detach()``: on-policy the ratio is exactly 1 and its
gradient is ∇log π, so every ratio loss reduces to the policy gradient A·∇log π.

Shapes: B completions × T positions; every [B,T] tensor returned is 0 on padding. Metrics are
detached scalars averaged over the valid tokens of the microbatch.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rlloom.errors import ParameterError
from rlloom.batch import RolloutBatch
from rlloom.ops import masked_mean

LOG_RATIO_LIMIT = 20.0


def check_positive(name: str, value: float) -> float:
    """``value`` > 0, else ValueError naming the parameter."""
    if not value > 0:
        raise ParameterError(f"{name} must be > 0, got {value!r}")
    return value


def old_logprobs(logprobs: Tensor, batch: RolloutBatch) -> Tensor:
    """log π_old [B,T]: ``batch.old_logprobs``, or the current log-probs detached (on-policy)."""
    return batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach()


def log_ratio(logprobs: Tensor, batch: RolloutBatch) -> Tensor:
    """log r = log π_θ − log π_old [B,T], clamped to ±LOG_RATIO_LIMIT, 0 on padding.

    Computed in float32 at least (float64 stays float64).
    """
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    diff = logprobs.to(dtype) - old_logprobs(logprobs, batch).to(dtype)
    return torch.where(batch.mask.bool(), diff.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT), 0.0)


def zero_padding(loss: Tensor, mask: Tensor) -> Tensor:
    """``loss`` with padding positions set to 0 (and no gradient flowing through them)."""
    return torch.where(mask.bool(), loss, 0.0)


def ratio_metrics(ratio: Tensor, token_log_ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``ratio/mean``, ``ratio/min``, ``ratio/max`` of ``ratio`` [B,T] over valid tokens, and
    ``kl/old_approx``, the mean over valid tokens of r − 1 − log r with r the token ratio.

    ``kl/old_approx`` is the non-negative k3 estimator (Schulman 2020, "Approximating KL
    divergence"): under tokens sampled from π_old, E[r − 1 − log r] = KL(π_old ‖ π_θ).
    ``ratio`` is the ratio the loss uses (the sequence ratio broadcast to tokens for GSPO); the
    KL always uses the token log-ratio. With no valid token, min and max are 1 (the ratio on
    padding).
    """
    valid = mask.bool()
    weights = mask.to(ratio.dtype)
    r = ratio.detach()
    lr = token_log_ratio.detach()
    smallest = torch.where(valid, r, float("inf")).amin()
    largest = torch.where(valid, r, float("-inf")).amax()
    return {
        "ratio/mean": masked_mean(r, weights),
        "ratio/min": torch.where(torch.isfinite(smallest), smallest, 1.0),
        "ratio/max": torch.where(torch.isfinite(largest), largest, 1.0),
        "kl/old_approx": masked_mean(torch.expm1(lr) - lr, weights),
    }


def clip_metrics(low: Tensor, high: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``clip/low_frac``, ``clip/high_frac`` and ``clip/frac`` (either) over valid tokens.

    ``low`` / ``high`` [B,T] bool mark the tokens where the loss's lower / upper clip binds.
    """
    valid = mask.bool()
    weights = mask.to(torch.float32)
    low, high = low & valid, high & valid
    return {
        "clip/low_frac": masked_mean(low.float(), weights),
        "clip/high_frac": masked_mean(high.float(), weights),
        "clip/frac": masked_mean((low | high).float(), weights),
    }


def clipped_surrogate(
    ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float, token_log_ratio: Tensor, mask: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """−min(r·A, clip(r, 1−ε_low, 1+ε_high)·A) per token [B,T] (PPO, Schulman et al.
    2017, Eq. 7; DAPO, Yu et al. 2025, Eq. 10) and its ratio and clip metrics; the clip binds
    low where A < 0 and r < 1−ε_low, high where A > 0 and r > 1+ε_high."""
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = -torch.minimum(ratio * adv, clipped * adv)
    metrics = ratio_metrics(ratio, token_log_ratio, mask)
    metrics.update(clip_metrics((adv < 0) & (ratio < 1.0 - eps_low), (adv > 0) & (ratio > 1.0 + eps_high), mask))
    return loss, metrics
