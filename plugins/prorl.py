"""ProRL (Liu et al. 2025, arXiv:2505.24864): prolonged RL with periodic reference resets.

ProRL keeps β > 0 in J(θ) = E[R] − β·KL[π_θ ‖ π_ref] (ProRL Eq. 4) and
hard-resets π_ref ← π_θ periodically so the KL term does not freeze learning, resetting the
optimizer state too (optional here). Its clip-higher
ε_low/ε_high (ProRL Eq. 3) is ``ppo_clip(eps_low=..., eps_high=...)``.
"""
from __future__ import annotations

from typing import Any

from rlloom.errors import ParameterError
from rlloom import hookimpl
from rlloom.kinds import RefUpdate
from rlloom.algos.reference import FrozenCopy


class PeriodicReset(FrozenCopy):
    """ProRL hard reset: π_ref ← π_θ every ``every`` steps (optionally the optimizer state too)."""

    def __init__(self, every: int = 50, reset_optimizer: bool = True):
        super().__init__()
        if every < 1:
            raise ParameterError(f"every must be >= 1, got {every}")
        self.every, self.reset_optimizer = every, reset_optimizer

    def on_step_end(self, step: int, policy: Any, metrics: dict[str, float]) -> RefUpdate:
        if (step + 1) % self.every:
            return RefUpdate({"ref/reset": 0.0})
        self.load_from(policy)
        return RefUpdate({"ref/reset": 1.0}, reset_optimizer=self.reset_optimizer)


@hookimpl
def rlloom_ref_policy():
    return {"periodic_reset": PeriodicReset}
