"""The KL coefficient β of J(θ) = E[R] − β·KL[π_θ ‖ π_ref]: fixed, or adapted towards a target.

Configured with the KL estimator under ``kl:`` (``coef``, ``target``, ``horizon``; see
``rlloom.kinds.KLKeys``); the engine updates the controller once per step with the step's
measured ``kl/mean``.
"""
from __future__ import annotations


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, coef: float):
        if coef < 0:
            raise ValueError(f"the KL coefficient must be >= 0, got {coef}")
        self.coef = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """β stays fixed."""

    def state_dict(self) -> dict[str, float]:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.coef = float(state["coef"])


class AdaptiveKLController:
    """β adapted toward a target KL (Ziegler et al. 2019, "Fine-Tuning Language Models from
    Human Preferences", §2.2).

    After each step with measured KL ``current_kl`` over ``n_steps`` steps (or samples, as the
    caller counts ``horizon``):
        e = clip(current_kl / target − 1, −0.2, 0.2),   β ← β·(1 + e·n_steps / horizon).
    β rises while the KL is above ``target`` and falls while it is below, at most 20 % per
    ``horizon``.
    """

    def __init__(self, init_coef: float, target: float, horizon: int):
        if init_coef < 0:
            raise ValueError(f"the initial KL coefficient must be >= 0, got {init_coef}")
        if not target > 0:
            raise ValueError(f"the KL target must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"the KL horizon must be > 0, got {horizon}")
        self.coef = float(init_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.coef = float(state["coef"])


def make_kl_controller(
    coef: float, target: float | None = None, horizon: int = 10000
) -> FixedKLController | AdaptiveKLController:
    """A fixed β = ``coef`` when ``target`` is None, else one adapting from ``coef`` toward it."""
    if target is None:
        return FixedKLController(coef)
    return AdaptiveKLController(coef, target, horizon)
