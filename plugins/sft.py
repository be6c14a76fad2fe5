"""Supervised fine-tuning: the token negative log-likelihood, with label smoothing and focal weighting.

The SFT loss is L_SFT(θ) = −E_{(x,y)} [ Σ_t log π_θ(y_t | x, y_<t) ]. The loss here is per
token; whether tokens are summed or averaged (per sequence, per batch) is the aggregation's job.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from rlloom.errors import ParameterError
from rlloom import hookimpl
from rlloom.batch import SFTBatch
from rlloom.kinds import LossOutput
from rlloom.ops import masked_mean


class _MeanLogProb(torch.autograd.Function):
    """(1/V) Σ_v log softmax(z)_v = mean_v z_v − logsumexp(z): [B,L,V] → [B,L].

    Computed in (at least) float32, ``chunk_size`` rows at a time. Only the logits and the
    [B,L] log-sum-exp are kept for backward, so neither a log-softmax nor a float32 copy of
    the [B,L,V] logits outlives a chunk; backward recomputes the softmax chunk by chunk:
    ∂/∂z_v = 1/V − softmax(z)_v.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, chunk_size: int) -> Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        means, lses = [], []
        for rows in logits.split(chunk_size):
            rows = rows.to(dtype)
            lse = torch.logsumexp(rows, dim=-1)
            means.append(rows.mean(-1) - lse)
            lses.append(lse)
        lse = torch.cat(lses)
        ctx.save_for_backward(logits, lse)
        ctx.chunk_size = chunk_size
        return torch.cat(means)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, lse = ctx.saved_tensors
        vocab = logits.shape[-1]
        grads = []
        for rows, row_lse, g in zip(
            logits.split(ctx.chunk_size), lse.split(ctx.chunk_size), grad_out.split(ctx.chunk_size)
        ):
            probs = torch.exp(rows.to(lse.dtype) - row_lse.unsqueeze(-1))
            grads.append((g.unsqueeze(-1) * (1.0 / vocab - probs)).to(logits.dtype))
        return torch.cat(grads), None


class NLL:
    """Token negative log-likelihood (SFT), with optional label smoothing and focal weighting.

    Call: ``loss(logprobs, batch, logits=None) -> LossOutput`` with ``batch`` an ``SFTBatch``,
    ``logprobs`` [B,L] = log π(input_ids[b,t] | input_ids[b,<t]) aligned by the engine (position
    0 predicts nothing and is 0 in ``loss_mask``), ``logits`` [B,L,V] aligned with them (given
    only when ``needs_logits``, i.e. ``label_smoothing > 0``, or for the accuracy metric) →
    per-token loss [B,L] (0 where ``loss_mask`` is 0) with ``mask = batch.loss_mask``.

    - Plain: ℓ_t = −log π(y_t), whose gradient is −∇log π(y_t).
    - Label smoothing ε (Szegedy et al. 2016): ℓ_t = −Σ_v q(v) log π(v), q = (1−ε)·onehot(y_t)
      + ε/V, evaluated from the logits in float32, chunked, with no [B,L,V] log-softmax.
    - Focal (Lin et al. 2017): ℓ_t = −α (1−p_t)^γ log p_t, p_t = π(y_t); with label smoothing
      the weight α (1−p_t)^γ multiplies the smoothed loss; it is not detached, as in Lin et al.

    ``label_smoothing`` ε ∈ [0, 1), ``focal_gamma`` γ ≥ 0, ``focal_alpha`` α > 0; γ = 0, α = 1
    is the plain NLL. Metrics: ``sft/nll`` (the plain NLL's mean over loss tokens, whatever
    the smoothing or focal setting) and, when logits are given, ``sft/token_accuracy``
    (fraction of loss tokens whose argmax is the target).
    """

    requires: ClassVar[set[str]] = set()
    needs_logits: ClassVar[bool] = False
    consumes: ClassVar[str] = "supervised"
    chunk_size: ClassVar[int] = 8

    def __init__(self, label_smoothing: float = 0.0, focal_gamma: float = 0.0, focal_alpha: float = 1.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ParameterError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if not focal_gamma >= 0.0:
            raise ParameterError(f"focal_gamma must be >= 0, got {focal_gamma}")
        if not focal_alpha > 0.0:
            raise ParameterError(f"focal_alpha must be > 0, got {focal_alpha}")
        self.label_smoothing = float(label_smoothing)
        self.focal_gamma = float(focal_gamma)
        self.focal_alpha = float(focal_alpha)
        self.needs_logits = self.label_smoothing > 0.0

    def __call__(self, logprobs: Tensor, batch: SFTBatch, logits: Tensor | None = None) -> LossOutput:
        mask = batch.loss_mask.to(logprobs.dtype)
        nll = -logprobs
        loss = nll
        if self.label_smoothing > 0.0:
            if logits is None:
                raise ValueError("nll with label_smoothing > 0 needs the logits [B,L,V]; none were given")
            eps = self.label_smoothing
            mean_logp = _MeanLogProb.apply(logits, self.chunk_size).to(logprobs.dtype)
            loss = (1.0 - eps) * nll - eps * mean_logp
        if self.focal_gamma > 0.0:
            # 1 − p_t = −expm1(log p_t), exact for p_t near 1.
            loss = self.focal_alpha * (-torch.expm1(logprobs)).clamp(min=0.0) ** self.focal_gamma * loss
        elif self.focal_alpha != 1.0:
            loss = self.focal_alpha * loss
        metrics: dict[str, Tensor | float] = {"sft/nll": masked_mean(nll.detach(), mask)}
        if logits is not None:
            correct = (logits.detach().argmax(-1) == batch.input_ids).to(mask.dtype)
            metrics["sft/token_accuracy"] = masked_mean(correct, mask)
        return LossOutput(loss=loss * mask, mask=batch.loss_mask, metrics=metrics)


@hookimpl
def rlloom_policy_loss():
    return {"nll": NLL}
