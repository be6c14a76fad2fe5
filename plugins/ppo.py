"""PPO: the clipped surrogate policy loss and the critic's value losses.

Policy (PPO, Schulman et al. 2017, Eq. 7; written as in DAPO, Yu et al. 2025, Eq. 1):

    L(θ) = −E[min(r_t A_t, clip(r_t, 1 − ε, 1 + ε) A_t)],   r_t = π_θ / π_old.

The clip range may be asymmetric, [1 − ε_low, 1 + ε_high] (DAPO Eq. 10; ProRL, Liu et al. 2025,
Eq. 3: "clip-higher" lets good tokens rise further than bad ones fall, against entropy
collapse); the DAPO and ProRL presets configure ``ppo_clip`` with ``eps_low``/``eps_high``.
Dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL") bounds the
unclipped branch for A < 0, where a large ratio would otherwise give an unbounded loss.

Value (the critic regression of PPO; VinePPO, Kazemnejad et al. 2024, Eq. 4): ½(V − G)²,
optionally with the value moved at most ε' from the rollout-time value, the PPO value clipping.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from rlloom.errors import ParameterError
from rlloom import hookimpl
from rlloom.batch import RolloutBatch
from rlloom.kinds import LossOutput
from rlloom.ops import masked_mean
from rlloom.algos.ratio import check_positive, clipped_surrogate, log_ratio, zero_padding


class PPOClip:
    """PPO clipped surrogate −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A) per token, optional dual clip.

    PPO, Schulman et al. 2017, Eq. 7 (symmetric ε; DAPO, Yu et al. 2025, Eq. 1), with the
    decoupled ε_low, ε_high of DAPO Eq. 10 / ProRL, Liu et al. 2025, Eq. 3. Per token, with
    r = exp(log π_θ − log π_old):

        loss = −min(r·A, clip(r, 1 − ε_low, 1 + ε_high)·A)

    and with ``dual_clip`` = c > 1 (Ye et al. 2020), for A < 0 only,
    loss = min(−min(r·A, clip(r)·A), −c·A): a token with A < 0 whose ratio exceeds c
    contributes the constant −c·A and no gradient.

    Parameters: ``eps`` the symmetric clip range; ``eps_low`` / ``eps_high`` override its
    lower / upper side (each defaults to ``eps``); ``dual_clip`` the bound c (null: off).
    Peer conventions: dual clip is off by default here and in TRL (whose GRPO ``delta``, default
    None, is the same bound when δ > 1+ε_high: ``dual_clip: δ``); verl always applies it with
    ``clip_ratio_c=3.0`` (``dual_clip: 3.0`` reproduces verl).

    Shapes: ``logprobs`` [B,T], ``batch.advantages`` [B,T] (``batch.old_logprobs`` [B,T] when
    off-policy) → ``loss`` [B,T], 0 on padding; the engine aggregates it.
    Metrics: ``clip/low_frac`` (A<0 and r<1−ε_low), ``clip/high_frac`` (A>0 and r>1+ε_high),
    ``clip/frac`` (either), ``clip/dual_frac`` (A<0 and r>c, when dual clip is on),
    ``ratio/mean|min|max``, ``kl/old_approx``.
    """

    requires: ClassVar[set[str]] = {"advantages"}
    needs_logits: ClassVar[bool] = False
    consumes: ClassVar[str] = "rollout"
    off_policy_params: ClassVar[frozenset[str]] = frozenset({"eps", "eps_low", "eps_high", "dual_clip"})

    def __init__(
        self,
        eps: float = 0.2,
        eps_low: float | None = None,
        eps_high: float | None = None,
        dual_clip: float | None = None,
    ):
        check_positive("eps", eps)
        self.eps_low = check_positive("eps_low", eps if eps_low is None else eps_low)
        self.eps_high = check_positive("eps_high", eps if eps_high is None else eps_high)
        if dual_clip is not None and not dual_clip > 1:
            raise ParameterError(f"dual_clip must be > 1 or null (off), got {dual_clip!r}")
        self.dual_clip = dual_clip

    def __call__(self, logprobs: Tensor, batch: RolloutBatch, logits: Tensor | None = None) -> LossOutput:
        adv, mask = batch.advantages, batch.mask
        lr = log_ratio(logprobs, batch)
        ratio = lr.exp()
        loss, metrics = clipped_surrogate(ratio, adv, self.eps_low, self.eps_high, lr, mask)
        if self.dual_clip is not None:
            loss = torch.where(adv < 0, torch.minimum(loss, -self.dual_clip * adv), loss)
            dual = (adv < 0) & (ratio > self.dual_clip) & mask.bool()
            metrics["clip/dual_frac"] = masked_mean(dual.float(), mask.float())
        return LossOutput(zero_padding(loss, mask), mask, metrics)


def _value_metrics(values: Tensor, error: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``value/mean`` (mean V) and ``value/error`` (mean |V − G|) over valid tokens."""
    weights = mask.to(values.dtype)
    return {
        "value/mean": masked_mean(values.detach(), weights),
        "value/error": masked_mean(error.detach().abs(), weights),
    }


class MSEValueLoss:
    """Critic regression ½(V − G)² per token towards the returns.

    L_value = E[½(V_θ(s) − V_target(s))²], the critic loss of PPO (Schulman et al. 2017), whose
    gradient is (V_θ − V_target)∇V_θ. V_target is ``batch.returns``, the
    value targets of the advantage estimator (GAE returns, return-to-go, Monte Carlo values).

    Shapes: ``values`` [B,T], ``batch.returns`` [B,T] → ``loss`` [B,T], 0 on padding; the
    engine aggregates it. Metrics: ``value/mean``, ``value/error`` (mean |V − G|).
    """

    requires: ClassVar[set[str]] = {"returns"}

    def __call__(self, values: Tensor, batch: RolloutBatch) -> LossOutput:
        error = values - batch.returns
        loss = zero_padding(0.5 * error.square(), batch.mask)
        return LossOutput(loss, batch.mask, _value_metrics(values, error, batch.mask))


class ClippedMSEValueLoss:
    """Clipped critic regression ½·max((V−G)², (clip(V, V_old−ε, V_old+ε) − G)²) per token.

    VinePPO, Kazemnejad et al. 2024, Eq. 4 (PPO value clipping):

        L_V = E_τ[(1/2T) Σ_t max(‖V_φ(s_t) − G_t‖²,
                                 ‖clip(V_φ(s_t), V_φk(s_t) − ε', V_φk(s_t) + ε') − G_t‖²)]

    with V_φk the values at rollout time (``batch.old_values``) and G_t ``batch.returns``. The
    per-token term here is ½·max(...); the 1/T average is the aggregation's job (``token_mean``
    or ``seq_mean_token_mean``), as for every per-token loss. Taking the max keeps the update
    pessimistic: once V has moved more than ε from V_old in the direction that lowers the
    error, the clipped term is larger and has no gradient.

    Parameters: ``eps`` the clip range ε' (> 0), in the units of the returns.
    Shapes: ``values``, ``batch.returns``, ``batch.old_values`` [B,T] → ``loss`` [B,T], 0 on
    padding. Metrics: ``value/clip_frac`` (tokens where the clipped term is the larger),
    ``value/mean``, ``value/error`` (mean |V − G|).
    """

    requires: ClassVar[set[str]] = {"returns", "old_values"}
    off_policy_params: ClassVar[frozenset[str]] = frozenset({"eps"})

    def __init__(self, eps: float = 0.2):
        self.eps = check_positive("eps", eps)

    def __call__(self, values: Tensor, batch: RolloutBatch) -> LossOutput:
        mask, old = batch.mask, batch.old_values
        error = values - batch.returns
        clipped_values = old + (values - old).clamp(-self.eps, self.eps)
        unclipped_sq = error.square()
        clipped_sq = (clipped_values - batch.returns).square()
        loss = zero_padding(0.5 * torch.maximum(unclipped_sq, clipped_sq), mask)
        metrics = _value_metrics(values, error, mask)
        metrics["value/clip_frac"] = masked_mean(
            ((clipped_sq > unclipped_sq) & mask.bool()).float(), mask.float()
        )
        return LossOutput(loss, mask, metrics)


@hookimpl
def rlloom_policy_loss():
    return {"ppo_clip": PPOClip}


@hookimpl
def rlloom_value_loss():
    return {"mse": MSEValueLoss, "clipped_mse": ClippedMSEValueLoss}
