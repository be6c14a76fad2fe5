"""Update rules: how the parameters move once a step's gradient is known. AdamW is the default."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from rlloom.errors import ParameterError
from rlloom import hookimpl


class AdamW:
    """AdamW (Loshchilov & Hutter 2019): clip the gradient norm to ``trainer.max_grad_norm``, then step.

    ``weight_decay`` is decoupled from the gradient; ``betas`` and ``eps`` are Adam's. Uses
    torch's multi-tensor (``foreach``) AdamW: the same arithmetic as the per-tensor loop, in a
    few batched kernels.
    """

    old_policy: ClassVar[str] = "none"
    trains_critic: ClassVar[bool] = True

    def __init__(self, weight_decay: float = 0.0, betas: list[float] = (0.9, 0.999), eps: float = 1e-8):
        if weight_decay < 0:
            raise ParameterError(f"weight_decay must be >= 0, got {weight_decay}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ParameterError(f"betas must be two numbers in [0, 1), got {list(betas)}")
        if not eps > 0:
            raise ParameterError(f"eps must be > 0, got {eps}")
        self.weight_decay, self.betas, self.eps = weight_decay, tuple(betas), eps

    def make_optimizer(self, params: list[Any], lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay, betas=self.betas, eps=self.eps, foreach=True)

    def step(self, closure: Any) -> dict[str, float]:
        closure.accumulate_gradient()
        norm = closure.clip_gradient()
        closure.optimizer.step()
        return {"grad_norm": norm}


@hookimpl
def rlloom_update():
    return {"adamw": AdamW}
