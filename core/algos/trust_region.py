"""Trust-region pieces: conjugate gradient and flat parameter vectors.

TRPO (Schulman et al. 2015, §6 and Appendix C) solves F s = g for the natural-gradient
direction without forming the Fisher matrix F: conjugate gradient needs only products F v.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int, tolerance: float = 1e-12
) -> tuple[Tensor, float]:
    """Approximately solve A x = b for symmetric positive-definite A given ``matvec(v) = A v``.

    ``b`` [n] → (x [n], ‖b − A x‖), at most ``iterations`` steps (Hestenes & Stiefel 1952),
    stopping early when the squared residual falls below ``tolerance``. Exact in n steps
    for an n×n A in exact arithmetic.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iterations):
        if rr <= tolerance:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_next = r @ r
        p = r + (rr_next / rr) * p
        rr = rr_next
    return x, float(rr.sqrt())


def flat(tensors: Iterable[Tensor | None], like: list[Tensor]) -> Tensor:
    """Tensors shaped like the parameters ``like`` as one float64 vector (None → zeros)."""
    return torch.cat([
        (t if t is not None else torch.zeros_like(p)).reshape(-1).double() for t, p in zip(tensors, like)
    ])


@torch.no_grad()
def set_flat(params: list[Tensor], vector: Tensor) -> None:
    """Write the vector ``vector`` (as from ``flat``) into ``params`` in place."""
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(vector[offset : offset + n].view_as(p).to(p.dtype))
        offset += n
