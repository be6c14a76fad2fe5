"""VinePPO: Monte Carlo value estimates per reasoning step, and k-step truncated returns.

Kazemnejad et al. 2024, arXiv:2410.01679: Monte Carlo advantages (VinePPO Eq. 5–7) and
k-step truncated returns (VinePPO Eq. 17).
"""
from __future__ import annotations

from typing import ClassVar

import torch

from rlloom import hookimpl
from rlloom.batch import RolloutBatch
from rlloom.kinds import AdvantageOutput
from rlloom.algos.returns import (
    check_clip,
    check_unit,
    discounted_returns,
    finish,
    last_token,
    next_values,
    read,
    read_mask,
    token_rewards,
)


class VinePPOAdvantage:
    """Monte Carlo step advantages r_k + γV̂(s_{k+1}) − V̂(s_k), given to every token of step k.

    VinePPO, Kazemnejad et al. 2024, Eq. 5–7:

        V̂_MC(s) = (1/K) Σ_{k=1}^{K} R(η_k),   Â_MC(s_k, a_k) = r_k + γ V̂_MC(s_{k+1}) − V̂_MC(s_k),
        r_k = R(x; y) on the last step, 0 otherwise.

    Inputs: ``batch.rewards`` R [B]; ``batch.values`` [B,T], where ``values[b, t]`` is V̂_MC of the
    state at the START of the reasoning step containing token t (constant within a step; the
    sampler estimates it from K continuations); ``batch.step_ends`` [B,T], 1 at the last token of
    each step (None: every token is its own step); the last real token always ends a step.
    V̂(s_K) = 0 after the final step. ``gamma`` discounts per step, not per token.
    ``batch.token_rewards`` are not read: the Monte Carlo values estimate returns of R alone.

    Output: ``advantages`` [B,T] (Â of the token's step) and ``returns`` [B,T] = r_k + γV̂(s_{k+1})
    (the Monte Carlo target), 0 on padding. ``clip`` clips advantages to [−clip, clip].
    """

    requires: ClassVar[set[str]] = {"rewards", "values"}

    def __init__(self, gamma: float = 1.0, clip: float | None = None):
        self.gamma = check_unit("gamma", gamma)
        self.clip = check_clip(clip)

    def __call__(self, batch: RolloutBatch) -> AdvantageOutput:
        rewards = read(batch, "rewards", "vineppo")
        mask = read_mask(batch, rewards)
        values = read(batch, "values", "vineppo").to(rewards.dtype) * mask
        last = last_token(mask)
        if batch.step_ends is None:
            ends = mask > 0
        else:
            ends = (last > 0) | ((batch.step_ends.to(mask.device) > 0) & (mask > 0))
        # At a step's last token t, V̂(s_{k+1}) is the value at token t+1 (0 past the end) and
        # r_k is R if t is the last real token; the scan carries both back over the step.
        value_after = next_values(values, mask)
        reward_here = rewards.unsqueeze(1) * last
        targets = torch.zeros_like(values)
        target = torch.zeros_like(rewards)
        for t in reversed(range(values.shape[1])):
            step_target = reward_here[:, t] + self.gamma * value_after[:, t]
            target = torch.where(ends[:, t], step_target, target)
            targets[:, t] = target
        returns = targets * mask
        return finish(returns - values, mask, self.clip, returns=returns)


class KStepAdvantage:
    """k-step truncated return minus the critic's value, Σ_{l<k} γ^l r_{t+l} + γ^k V(s_{t+k}) − V(s_t).

    VinePPO, Kazemnejad et al. 2024, Eq. 17:

        Â^(k)_t = Σ_{l=0}^{k−1} γ^l δ_{t+l} = Σ_{l=0}^{k−1} γ^l r_{t+l} + γ^k V(s_{t+k}) − V(s_t)

    at token level. Inputs: per-token rewards r_t [B,T] (``batch.token_rewards`` when set, plus
    ``batch.rewards`` [B] on the last real token; 0 past the end) and ``batch.values`` [B,T],
    V(s_t) of the state before token t (V = 0 past the last real token). The truncated sum is
    taken as G_t − γ^k G_{t+k} with G the return-to-go. Output: ``advantages`` [B,T] and
    ``returns`` = Â + V [B,T] (the k-step target), 0 on padding. k = 1 is the one-step TD error
    (``gae`` with λ = 0); k ≥ T is G_t − V(s_t) (``reinforce_baseline``). ``clip`` clips the
    advantages to [−clip, clip].
    """

    requires: ClassVar[set[str]] = {"rewards", "values"}

    def __init__(self, k: int = 1, gamma: float = 1.0, clip: float | None = None):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        self.k = k
        self.gamma = check_unit("gamma", gamma)
        self.clip = check_clip(clip)

    def __call__(self, batch: RolloutBatch) -> AdvantageOutput:
        r, mask = token_rewards(batch, "kstep")
        values = read(batch, "values", "kstep").to(r.dtype) * mask
        returns_to_go = discounted_returns(r, mask, self.gamma)
        discount = self.gamma**self.k
        truncated = returns_to_go - discount * next_values(returns_to_go, mask, self.k)
        returns = (truncated + discount * next_values(values, mask, self.k)) * mask
        return finish(returns - values, mask, self.clip, returns=returns)


@hookimpl
def rlloom_advantage():
    return {"vineppo": VinePPOAdvantage, "kstep": KStepAdvantage}
