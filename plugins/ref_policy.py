"""Reference-policy managers: none, frozen initial weights, EMA mix, reset on KL dominance.

The reference enters through the KL-regularised objective
J(θ) = E[R] − β·KL[π_θ ‖ π_ref] (VinePPO, Kazemnejad et al. 2024, Eq. 1; ProRL, Liu et al.
2025, Eq. 4). ProRL's periodic hard reset lives in ``prorl.py``.
"""
from __future__ import annotations

from typing import Any

import torch

from rlloom.errors import ParameterError
from rlloom import hookimpl
from rlloom.kinds import RefUpdate
from rlloom.models import unwrap_lm
from rlloom.algos.reference import FrozenCopy


class NoReference:
    """No reference policy (β = 0, as DAPO drops the KL term; Yu et al. 2025): nothing is built."""

    model = None

    def setup(self, policy: Any) -> None:
        return None

    def on_step_end(self, step: int, policy: Any, metrics: dict[str, float]) -> RefUpdate:
        return RefUpdate()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class Frozen(FrozenCopy):
    """π_ref = the initial policy, frozen for the whole run (GRPO's π_ref, Shao et al. 2024)."""


class EMA(FrozenCopy):
    """π_ref ← (1 − rate)·π_ref + rate·π_θ in weight space after every ``every`` steps.

    A slowly moving reference: the KL anchor follows the policy with time constant
    ≈ every/rate steps (rate = 1 is a hard reset every ``every`` steps).
    """

    def __init__(self, rate: float = 0.05, every: int = 1):
        super().__init__()
        if not 0 < rate <= 1:
            raise ParameterError(f"rate must be in (0, 1], got {rate}")
        if every < 1:
            raise ParameterError(f"every must be >= 1, got {every}")
        self.rate, self.every = rate, every

    @torch.no_grad()
    def on_step_end(self, step: int, policy: Any, metrics: dict[str, float]) -> RefUpdate:
        if (step + 1) % self.every:
            return RefUpdate()
        current = unwrap_lm(policy).state_dict()
        for name, ref in self.model.state_dict().items():
            if ref.is_floating_point():
                ref.lerp_(current[name].to(ref.device, ref.dtype), self.rate)
        return RefUpdate({"ref/updated": 1.0})


class KLDominanceReset(FrozenCopy):
    """Hard-reset π_ref ← π_θ when the KL term dominates the policy term (ProRL-style reset).

    After each step, |loss/kl| > ``ratio``·|loss/policy| (β·KL against the policy loss, as
    logged) triggers π_ref ← π_θ, at most once every ``min_interval`` steps; optionally the
    optimizer state is reset too (``reset_optimizer``).
    """

    def __init__(self, ratio: float = 1.0, min_interval: int = 10, reset_optimizer: bool = False):
        super().__init__()
        if ratio <= 0:
            raise ParameterError(f"ratio must be > 0, got {ratio}")
        self.ratio, self.min_interval, self.reset_optimizer = ratio, min_interval, reset_optimizer
        self.last_reset = -min_interval

    def on_step_end(self, step: int, policy: Any, metrics: dict[str, float]) -> RefUpdate:
        kl, pol = abs(metrics.get("loss/kl", 0.0)), abs(metrics.get("loss/policy", 0.0))
        if kl > self.ratio * pol and step - self.last_reset >= self.min_interval:
            self.load_from(policy)
            self.last_reset = step
            return RefUpdate({"ref/reset": 1.0}, reset_optimizer=self.reset_optimizer)
        return RefUpdate({"ref/reset": 0.0})

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_reset": self.last_reset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_reset = int(state["last_reset"])


@hookimpl
def rlloom_ref_policy():
    return {"none": NoReference, "frozen": Frozen, "ema": EMA, "kl_dominance_reset": KLDominanceReset}
