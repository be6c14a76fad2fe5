"""KL estimators between the policy and the reference, and the KL coefficient β.

The regularised objective is J(θ) = E[R] − β·KL[π_θ ‖ π_ref] (VinePPO, Kazemnejad et al. 2024,
Eq. 1; ProRL, Liu et al. 2025, Eq. 4). The engine only has tokens sampled from π_θ, so KL is
estimated per token from the two log-probs of the sampled token (Schulman 2020,
"Approximating the KL divergence"), or computed exactly from the full distributions:

- ``k1``: log π_θ − log π_ref, unbiased, can be negative (the one-sample Monte Carlo
  estimate of E_{π_θ}[log π_θ/π_ref]).
- ``k2``: ½(log π_θ − log π_ref)², biased, ≥ 0, low variance.
- ``k3``: r − log r − 1, unbiased and ≥ 0 (VinePPO, Kazemnejad et al. 2024, Eq. 10; the KL
  estimator of GRPO, Shao et al. 2024; r may be taken in either direction).
- ``exact``: Σ_v π_θ(v)(log π_θ(v) − log π_ref(v)) over the vocabulary, from logits.

Every estimator maps [B,T] log-probs to a [B,T] estimate in (at least) float32. At padding
positions both log-probs are 0 by convention, and every sampled estimator is then 0; the
engine masks and aggregates the result.

The coefficient β and its control live with the engine (``rlloom.kl_control``).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from rlloom.errors import ParameterError
from rlloom import hookimpl


def _float(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 when it already is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _log_ratio(logprobs: Tensor, ref_logprobs: Tensor, clamp: float | None) -> Tensor:
    """log π_θ − log π_ref [B,T], clamped to [−clamp, clamp] when ``clamp`` is set."""
    log_ratio = _float(logprobs) - _float(ref_logprobs)
    return log_ratio if clamp is None else log_ratio.clamp(-clamp, clamp)


def _finite_log_softmax(logits: Tensor) -> Tensor:
    """log softmax in float32 (or wider) with −inf clamped to the dtype's lowest finite value,
    so masked tokens (π(v) = 0) contribute 0·log 0 = 0 and no NaN, in value or gradient."""
    logp = torch.log_softmax(_float(logits), dim=-1)
    return logp.clamp(min=torch.finfo(logp.dtype).min)


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ParameterError(f"{name} must be > 0 or null, got {value}")


class _LogRatioKL:
    """A per-token estimate computed from the (optionally clamped) log-ratio alone."""

    needs_logits: ClassVar[bool] = False

    def __init__(self, clamp: float | None = None):
        _check_positive("clamp", clamp)
        self.clamp = clamp

    def __call__(
        self,
        logprobs: Tensor,
        ref_logprobs: Tensor,
        logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
    ) -> Tensor:
        return self.estimate(_log_ratio(logprobs, ref_logprobs, self.clamp))

    def estimate(self, log_ratio: Tensor) -> Tensor:
        raise NotImplementedError


class K1(_LogRatioKL):
    """k1 = log π_θ − log π_ref per token: unbiased, can be negative (Schulman 2020).

    KL(π_θ ‖ π_ref) = E_{o∼π_θ}[log π_θ(o)/π_ref(o)] estimated from one sample (the k1 of
    Schulman 2020, "Approximating KL divergence"). Under samples o ∼ π_θ, E[k1] = KL(π_θ ‖ π_ref)
    exactly, but a single sample is negative whenever π_ref(o) > π_θ(o), so its variance is high.

    Shapes: ``logprobs``, ``ref_logprobs`` [B,T] → [B,T] (float32 or wider).
    ``clamp``: clamp the log-ratio to [−clamp, clamp] (stability against outlier tokens).

    Gradient when used as a loss (log π_ref held fixed): ∇k1 = ∇log π_θ, whose expectation
    under π_θ is Σ_o ∇π_θ(o) = 0. As a loss term k1 therefore does not pull the policy toward
    the reference on average; use it as a reward penalty (score-function gradient) or choose
    k2 / k3 / exact for a KL loss.
    """

    def estimate(self, log_ratio: Tensor) -> Tensor:
        return log_ratio


class K2(_LogRatioKL):
    """k2 = ½(log π_θ − log π_ref)² per token: biased, ≥ 0, low variance (Schulman 2020).

    Under o ∼ π_θ, E[k2] = KL(π_θ ‖ π_ref) + O(δ³) for nearby distributions (it is an
    f-divergence with the same second-order expansion), and differs from it otherwise.

    Shapes: ``logprobs``, ``ref_logprobs`` [B,T] → [B,T] (float32 or wider).
    ``clamp``: clamp the log-ratio to [−clamp, clamp] before squaring.

    Gradient when used as a loss: ∇k2 = (log π_θ − log π_ref)·∇log π_θ, whose expectation under
    π_θ is Σ_o π_θ(o)·log(π_θ(o)/π_ref(o))·∇log π_θ(o) = ∇KL(π_θ ‖ π_ref): on-policy, k2 in the
    loss gives the exact gradient of the reverse KL.
    """

    def estimate(self, log_ratio: Tensor) -> Tensor:
        return 0.5 * log_ratio.square()


class K3:
    """k3 = r − log r − 1 per token: unbiased and ≥ 0 (Schulman 2020; VinePPO Eq. 10).

    k3 estimator, Schulman 2020, "Approximating KL divergence"; VinePPO, Kazemnejad et al. 2024,
    Eq. 10; the KL estimator of GRPO, Shao et al. 2024 (DeepSeekMath), and verl's "low_var_kl".
    ``direction="ref_over_policy"`` (default, the papers' form): r = π_ref/π_θ, unbiased for
    KL(π_θ ‖ π_ref) under o ∼ π_θ. ``direction="policy_over_ref"``: r = π_θ/π_ref, unbiased for
    KL(π_ref ‖ π_θ) only under o ∼ π_ref (under o ∼ π_θ it is ≥ 0 but biased). Computed as
    expm1(log r) − log r with log r = ±(log π_θ − log π_ref) in float32 (or wider).

    Shapes: ``logprobs``, ``ref_logprobs`` [B,T] → [B,T].
    ``clamp``: clamp the log-ratio to [−clamp, clamp] before exponentiating (input clamping).
    ``clamp_output``: clamp the estimate to [−c, c] (verl's low-variance KL uses c = 10).
    Peer conventions: both clamps are off by default, as in TRL's GRPO k3; verl's
    ``low_var_kl``/``k3`` is ``clamp: 20, clamp_output: 10`` (releases before the log-ratio
    clamp was added: ``clamp_output: 10`` alone).

    Used as a loss, ref_over_policy's expected gradient under π_θ is ∇KL(π_ref ‖ π_θ), the
    forward KL's, not the reverse KL's that k2 gives (derivation in tests/plugins/test_kl.py).
    """

    needs_logits: ClassVar[bool] = False
    DIRECTIONS: ClassVar[tuple[str, ...]] = ("ref_over_policy", "policy_over_ref")

    def __init__(
        self,
        direction: str = "ref_over_policy",
        clamp: float | None = None,
        clamp_output: float | None = None,
    ):
        if direction not in self.DIRECTIONS:
            raise ParameterError(f"direction must be one of {', '.join(self.DIRECTIONS)}, got {direction!r}")
        _check_positive("clamp", clamp)
        _check_positive("clamp_output", clamp_output)
        self.direction = direction
        self.clamp = clamp
        self.clamp_output = clamp_output

    def __call__(
        self,
        logprobs: Tensor,
        ref_logprobs: Tensor,
        logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
    ) -> Tensor:
        log_r = _log_ratio(logprobs, ref_logprobs, self.clamp)
        if self.direction == "ref_over_policy":
            log_r = -log_r
        kl = torch.expm1(log_r) - log_r
        if self.clamp_output is not None:
            kl = kl.clamp(-self.clamp_output, self.clamp_output)
        return kl


class ExactKL:
    """Exact per-position KL(π_θ ‖ π_ref) = Σ_v π_θ(v)(log π_θ(v) − log π_ref(v)) from logits.

    The KL loss L_KL = D_KL(π_θ ‖ π_ref), summed over the whole vocabulary at each position
    instead of estimated from the sampled token, so it has no sampling variance.
    ``logits``, ``ref_logits`` [B,T,V] → [B,T] float32 (float64 for float64 input),
    computed ``chunk_size`` rows at a time so no float32 copy of the whole [B,T,V] exists.
    The sampled log-probs are not used.

    Gradient when used as a loss: the exact ∇KL(π_θ ‖ π_ref) at each visited position.
    """

    needs_logits: ClassVar[bool] = True
    chunk_size: ClassVar[int] = 8

    def __call__(
        self,
        logprobs: Tensor,
        ref_logprobs: Tensor,
        logits: Tensor | None = None,
        ref_logits: Tensor | None = None,
    ) -> Tensor:
        if logits is None or ref_logits is None:
            raise ValueError("the exact KL needs the policy's and the reference's logits [B,T,V]")
        if logits.shape != ref_logits.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} differ")
        out = []
        for rows, ref_rows in zip(logits.split(self.chunk_size), ref_logits.split(self.chunk_size)):
            logp = _finite_log_softmax(rows)
            ref_logp = _finite_log_softmax(ref_rows).to(logp.dtype)
            out.append((logp.exp() * (logp - ref_logp)).sum(-1))
        if not out:
            return logits.new_zeros(logits.shape[:-1], dtype=torch.promote_types(logits.dtype, torch.float32))
        return torch.cat(out)


@hookimpl
def rlloom_kl():
    return {"k1": K1, "k2": K2, "k3": K3, "exact": ExactKL}
