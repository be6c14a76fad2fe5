"""TRPO: the importance-weighted surrogate of Trust Region Policy Optimization.

TRPO, Schulman et al. 2015: maximise

    L_TRPO(θ) = E_{s,a∼π_old}[π_θ(a|s)/π_old(a|s) · A^{π_old}(s, a)]  s.t.  KL(π_old ‖ π_θ) ≤ δ.

The surrogate is the policy loss ``trpo_surrogate``; the constrained step is the update rule
``natural_gradient``: conjugate gradient on Fisher-vector products for the direction, scaled to
the trust region's edge, then a backtracking line search under the KL bound.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from rlloom.errors import ParameterError
from rlloom import hookimpl
from rlloom.algos.trust_region import conjugate_gradient, flat, set_flat
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


class NaturalGradient:
    """TRPO's step: natural-gradient direction by conjugate gradient, line search under KL ≤ δ.

    TRPO, Schulman et al. 2015, §6 and Appendix C. With g = −∇L (L the step's loss, so g
    ascends the surrogate) and F the Fisher matrix, the Hessian of the mean KL(π_old ‖ π_θ)
    over the step's completion tokens at θ_old, damped as F + λI:

        s ≈ F⁻¹g (``cg_iters`` steps of conjugate gradient),  Δθ = √(2δ / sᵀFs) · s,

    the largest step along s whose quadratic KL model equals δ. Line search: θ_old + bᵏΔθ for
    k = 0 … ``max_backtracks`` − 1 (b = ``backtrack_factor``) until the loss decreases and the
    measured KL ≤ δ; if none does, θ stays θ_old. The KL at each completion position is exact
    over the vocabulary, Σ_v π_old(v)(log π_old(v) − log π_θ(v)), from π_old's logits kept for
    the step (``old_policy = "logits"``; [B,T,V] on the CPU), as TRPO does for discrete actions:
    a bound on the sampled tokens alone would let mass move freely among the others. Its
    Hessian at θ_old is the Fisher matrix. All sums run over every microbatch and process.

    The learning rate is not used (δ sets the step). The value head, if any, is not trained
    by this rule, so pipelines with a critic are refused. Metrics: ``trpo/kl`` (after the
    step), ``trpo/expected_improve`` (gᵀΔθ of the accepted fraction), ``trpo/actual_improve``,
    ``trpo/backtracks``, ``trpo/accepted``, ``trpo/cg_residual``, ``grad_norm`` (‖g‖).
    """

    old_policy: ClassVar[str] = "logits"
    trains_critic: ClassVar[bool] = False

    def __init__(
        self,
        max_kl: float = 0.01,
        damping: float = 0.1,
        cg_iters: int = 10,
        backtrack_factor: float = 0.5,
        max_backtracks: int = 10,
    ):
        if not max_kl > 0:
            raise ParameterError(f"max_kl must be > 0, got {max_kl}")
        if damping < 0:
            raise ParameterError(f"damping must be >= 0, got {damping}")
        if cg_iters < 1 or max_backtracks < 1:
            raise ParameterError(f"cg_iters and max_backtracks must be >= 1, got {cg_iters}, {max_backtracks}")
        if not 0 < backtrack_factor < 1:
            raise ParameterError(f"backtrack_factor must be in (0, 1), got {backtrack_factor}")
        self.max_kl, self.damping, self.cg_iters = max_kl, damping, cg_iters
        self.backtrack_factor, self.max_backtracks = backtrack_factor, max_backtracks

    def make_optimizer(self, params: list[Any], lr: float) -> torch.optim.Optimizer:
        # Holds the parameter groups the engine schedules and logs; it only takes empty steps.
        return torch.optim.SGD(params, lr=lr)

    @torch.no_grad()
    def step(self, closure: Any) -> dict[str, float]:
        with torch.enable_grad():
            closure.accumulate_gradient()
        g = -closure.gradient()
        loss_old = closure.step_loss()
        # An empty optimizer step (no gradients left) keeps the learning-rate schedule's
        # bookkeeping in order; the parameters move only below.
        closure.optimizer.zero_grad(set_to_none=True)
        closure.optimizer.step()
        params = closure.params
        theta_old = flat(params, params).cpu()

        def fvp(v: Tensor) -> Tensor:
            with torch.enable_grad():
                return closure.fisher_vector_product(v) + self.damping * v

        s, residual = conjugate_gradient(fvp, g, self.cg_iters)
        curvature = float(s @ fvp(s))
        metrics = {"grad_norm": float(g.norm()), "trpo/cg_residual": residual, "trpo/accepted": 0.0,
                   "trpo/backtracks": float(self.max_backtracks), "trpo/expected_improve": 0.0,
                   "trpo/actual_improve": 0.0, "trpo/kl": 0.0}
        if not (curvature > 0 and math.isfinite(curvature)):
            return metrics  # no direction (e.g. every advantage is 0): keep θ_old
        full_step = math.sqrt(2 * self.max_kl / curvature) * s
        for k in range(self.max_backtracks):
            fraction = self.backtrack_factor**k
            set_flat(params, (theta_old + fraction * full_step).to(params[0].device))
            loss_new, kl = closure.evaluate()
            improve = loss_old - loss_new
            if kl <= self.max_kl and improve > 0:
                metrics.update({"trpo/accepted": 1.0, "trpo/backtracks": float(k), "trpo/kl": kl,
                                "trpo/expected_improve": float(g @ (fraction * full_step)),
                                "trpo/actual_improve": improve})
                return metrics
        set_flat(params, theta_old.to(params[0].device))
        return metrics


@hookimpl
def rlloom_update():
    return {"natural_gradient": NaturalGradient}


@hookimpl
def rlloom_policy_loss():
    return {"trpo_surrogate": TRPOSurrogate}
