"""Tensor helpers every component shares: masked reductions, log-probs, entropy, global sums.

Masked statistics are ``masked_mean(x, mask) = Σ x·mask / Σ mask`` over the valid elements.
Log-probs are taken in float32 (logits upcast chunk by chunk) without a second [B,T,V] tensor.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x·mask over ``dim`` (all elements when None)."""
    prod = x * mask
    return prod.sum() if dim is None else prod.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ x·mask / Σ mask over ``dim``; 0 where the mask is empty."""
    return masked_sum(x, mask, dim) / mask.sum(dim if dim is not None else None).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked elements of ``x`` (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(x, mask)
    count = mask.sum()
    var = masked_sum((x - mean) ** 2, mask) / count.clamp(min=1)
    if unbiased:
        var = var * count / (count - 1).clamp(min=1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − mean) / sqrt(var + eps) over the masked elements; padding stays 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def selective_log_softmax(logits: Tensor, index: Tensor, chunk_size: int = 8) -> Tensor:
    """log softmax(logits)[..., index] in float32: [B,T,V], [B,T] → [B,T].

    Works ``chunk_size`` rows at a time and subtracts the log-sum-exp from the gathered
    logit, so no float32 copy of the whole [B,T,V] tensor and no [B,T,V] log-prob tensor exist.
    """
    out = []
    for rows, idx in zip(logits.split(chunk_size), index.split(chunk_size)):
        rows = rows.float()
        picked = rows.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(rows, dim=-1))
    return torch.cat(out) if out else logits.new_zeros(index.shape, dtype=torch.float32)


def entropy_from_logits(logits: Tensor, chunk_size: int = 8) -> Tensor:
    """H(π) = −Σ_v π_v log π_v per position, [B,T,V] → [B,T], in float32, chunked over rows
    (the entropy bonus of PPO, Schulman et al. 2017). Logits of −inf (masked tokens) count as
    0·log 0 = 0."""
    out = []
    for rows in logits.split(chunk_size):
        logp = torch.log_softmax(rows.float(), dim=-1).clamp(min=torch.finfo(torch.float32).min)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(x: Tensor | float, op) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).clone()
    if is_distributed():
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = t.to(device)
        dist.all_reduce(t, op=op)
    return t.cpu()


def global_sum(x: Tensor | float) -> Tensor:
    """Σ of ``x`` over every process (``x`` itself with one process)."""
    return _all_reduce(x, dist.ReduceOp.SUM)


def global_max(x: Tensor | float) -> Tensor:
    """Max of ``x`` over every process."""
    return _all_reduce(x, dist.ReduceOp.MAX)


def global_mean(x: Tensor | float) -> Tensor:
    """Mean of a per-process scalar over processes: (1/N) Σ_i x_i."""
    world = dist.get_world_size() if is_distributed() else 1
    return global_sum(x) / world


def global_masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Σ x·mask / Σ mask over all processes' elements (token-weighted, not process-averaged)."""
    both = global_sum(torch.stack([masked_sum(x.detach().double(), mask), mask.sum().double()]))
    return both[0] / both[1].clamp(min=1)
