"""A frozen copy of the policy, the base of every reference-policy manager that holds one."""
from __future__ import annotations

import copy
from typing import Any

import torch

from rlloom.kinds import RefUpdate
from rlloom.models import unwrap_lm


class FrozenCopy:
    """π_ref as a gradient-free copy of the policy's language model (value head dropped).

    ``load_from(policy)`` copies the policy's current weights into it (π_ref ← π_θ);
    ``state_dict``/``load_state_dict`` carry the weights through checkpoints.
    """

    def __init__(self) -> None:
        self.model: Any = None

    def setup(self, policy: Any) -> None:
        self.model = copy.deepcopy(unwrap_lm(policy))
        self.model.eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def load_from(self, policy: Any) -> None:
        self.model.load_state_dict(unwrap_lm(policy).state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"weights": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["weights"])

    def on_step_end(self, step: int, policy: Any, metrics: dict[str, float]) -> RefUpdate:
        return RefUpdate()
