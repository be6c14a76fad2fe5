"""Shared pieces of the advantage estimators: per-token rewards, discounted returns, group
statistics, parameter checks and the common finish (clipping, padding, metrics).

Shapes: B completions × T completion positions, right-padded; ``mask`` [B,T] is 1 on real
tokens. Every [B,T] tensor returned here is 0 on padding.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlloom.errors import ParameterError
from rlloom.batch import RolloutBatch
from rlloom.kinds import AdvantageOutput
from rlloom.ops import masked_mean, masked_var

# ------------------------------------------------------------------ parameter checks


def check_clip(clip: float | None) -> float | None:
    """``clip`` is None (no clipping) or a positive bound."""
    if clip is not None and not clip > 0:
        raise ParameterError(f"clip must be a positive number or null (no clipping), got {clip!r}")
    return clip


def check_unit(name: str, value: float) -> float:
    """A discount-like parameter in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ParameterError(f"{name} must lie in [0, 1], got {value!r}")
    return float(value)


# ------------------------------------------------------------------ batch fields


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def read(batch: RolloutBatch, name: str, component: str) -> Tensor:
    """``batch.<name>`` detached, in float32 (float64 stays float64); a clear error if unset."""
    value = getattr(batch, name, None)
    if value is None:
        raise ValueError(f"advantage '{component}' needs batch.{name}, which is not set")
    return value.detach().to(_compute_dtype(value))


def read_mask(batch: RolloutBatch, like: Tensor) -> Tensor:
    """``batch.mask`` [B,T] as 0/1 in the dtype and device of ``like``."""
    return batch.mask.detach().to(device=like.device, dtype=like.dtype)


def last_token(mask: Tensor) -> Tensor:
    """[B,T] one-hot of each row's last real token (all zeros for an empty row)."""
    lengths = mask.sum(dim=1).long()
    index = (lengths - 1).clamp(min=0)
    onehot = torch.zeros_like(mask)
    onehot.scatter_(1, index.unsqueeze(1), (lengths > 0).to(mask.dtype).unsqueeze(1))
    return onehot


def token_rewards(batch: RolloutBatch, component: str) -> tuple[Tensor, Tensor]:
    """Per-token rewards r_t [B,T] and the mask [B,T].

    r_t = ``batch.token_rewards`` (when set) plus the sequence reward ``batch.rewards`` [B] on the
    last real token of each row; 0 on padding.
    """
    rewards = read(batch, "rewards", component)
    mask = read_mask(batch, rewards)
    r = rewards.unsqueeze(1) * last_token(mask)
    if batch.token_rewards is not None:
        r = r + batch.token_rewards.detach().to(r.dtype)
    return r * mask, mask


def discounted_returns(r: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Return-to-go G_t = Σ_{k≥t} γ^{k−t} r_k per row, [B,T] → [B,T] (REINFORCE, Williams 1992).

    Computed backwards, G_t = r_t + γ G_{t+1}, with G = 0 after the last real token.
    """
    out = torch.zeros_like(r)
    carry = r.new_zeros(r.shape[0])
    for t in reversed(range(r.shape[1])):
        carry = r[:, t] + gamma * carry
        out[:, t] = carry
    return out * mask


def next_values(values: Tensor, mask: Tensor, shift: int = 1) -> Tensor:
    """V(s_{t+shift}) [B,T] from V(s_t) = ``values`` [B,T]; 0 beyond each row's last real token."""
    v = values * mask
    tail = torch.zeros_like(v[:, : min(shift, v.shape[1])])
    return torch.cat([v[:, shift:], tail], dim=1)


# ------------------------------------------------------------------ groups


class Groups:
    """The prompt groups of a batch, from ``group_ids`` [B] (any ids, any order, any sizes).

    Per-group statistics are returned per row ([B]), so each completion reads its own group's.
    A group of one (a lone completion) has no other member to compare with; ``lone`` marks
    its row and ``single_count`` counts such groups.
    """

    def __init__(self, group_ids: Tensor):
        self.ids, self.inverse, self.counts = torch.unique(
            group_ids.detach(), return_inverse=True, return_counts=True
        )

    def _sum(self, x: Tensor) -> Tensor:
        return torch.zeros(len(self.ids), dtype=x.dtype, device=x.device).index_add_(0, self.inverse, x)

    @property
    def lone(self) -> Tensor:
        """[B] bool: the row is the only completion of its group."""
        return self.counts[self.inverse] == 1

    def single_count(self, like: Tensor) -> Tensor:
        """The number of groups of one, as a scalar in ``like``'s dtype (``adv/single_groups``)."""
        return (self.counts == 1).sum().to(like.dtype)

    def mean(self, x: Tensor) -> Tensor:
        """mean over the row's group, [B] → [B]."""
        return (self._sum(x) / self.counts.to(x.dtype))[self.inverse]

    def leave_one_out_mean(self, x: Tensor) -> Tensor:
        """(1/(G−1)) Σ_{j≠i} x_j over the row's group, [B] → [B]; 0 for a group of one (empty sum)."""
        total = self._sum(x)[self.inverse]
        return (total - x) / (self.counts[self.inverse] - 1).clamp(min=1).to(x.dtype)

    def group_std(self, x: Tensor) -> Tensor:
        """Unbiased std of each group, [B] → [num_groups] (0 for a group of one)."""
        mean = self._sum(x) / self.counts.to(x.dtype)
        sq = self._sum((x - mean[self.inverse]) ** 2)
        return (sq / (self.counts - 1).clamp(min=1).to(x.dtype)).sqrt()

    def all_equal(self, x: Tensor) -> Tensor:
        """[num_groups] bool: every reward of the group is the same."""
        n = len(self.ids)
        high = x.new_full((n,), -torch.inf).scatter_reduce(0, self.inverse, x, "amax")
        low = x.new_full((n,), torch.inf).scatter_reduce(0, self.inverse, x, "amin")
        return high == low

    def reward_metrics(self, rewards: Tensor) -> dict[str, Tensor]:
        """``reward/group_std_mean``, ``reward/zero_std_frac`` and ``adv/single_groups``."""
        return {
            "reward/group_std_mean": self.group_std(rewards).mean(),
            "reward/zero_std_frac": self.all_equal(rewards).to(rewards.dtype).mean(),
            "adv/single_groups": self.single_count(rewards),
        }


def unbiased_std(x: Tensor) -> Tensor:
    """Bessel-corrected std of all elements of ``x`` (0 for a single element)."""
    return (((x - x.mean()) ** 2).sum() / max(x.numel() - 1, 1)).sqrt()


GROUP_SCALES = ("group", "batch", "none")


def group_relative(
    rewards: Tensor, groups: Groups, scale: str, eps: float, leave_one_out: bool
) -> Tensor:
    """Sequence advantages [B] from sequence rewards [B] and their groups.

    Baseline: the group mean (GRPO, Shao et al. 2024), or with ``leave_one_out`` the mean of the
    other G−1 completions (RLOO, Ahmadian et al. 2024). Scale: ``group`` divides by the group's
    unbiased std + eps (ProRL, Liu et al. 2025, Eq. 2; DAPO, Yu et al. 2025, Eq. 4/9), ``batch``
    by the unbiased std of every reward in the batch + eps, ``none`` does not divide (Dr. GRPO,
    Liu et al. 2025).

    A group of one has no peers to form a baseline from: its baseline is 0 and, with
    ``scale="group"``, its std is taken as 1, so it gets R (R/(1+eps)); verl's
    ``compute_grpo_outcome_advantage`` and RLOO estimators treat it the same way.
    """
    lone = groups.lone
    baseline = groups.leave_one_out_mean(rewards) if leave_one_out else groups.mean(rewards)
    centred = rewards - torch.where(lone, torch.zeros_like(baseline), baseline)
    if scale == "group":
        std = groups.group_std(rewards)[groups.inverse]
        return centred / (torch.where(lone, torch.ones_like(std), std) + eps)
    if scale == "batch":
        return centred / (unbiased_std(rewards) + eps)
    return centred


# ------------------------------------------------------------------ finish


def finish(
    advantages: Tensor,
    mask: Tensor,
    clip: float | None,
    returns: Tensor | None = None,
    metrics: dict[str, Any] | None = None,
) -> AdvantageOutput:
    """Clip advantages to [−clip, clip] (when set), zero padding, add ``adv/*`` metrics.

    ``returns`` are masked but never clipped. Metrics over valid tokens: ``adv/mean``,
    ``adv/std`` (unbiased), ``adv/min``, ``adv/max``, and ``returns/mean`` when returns exist.
    """
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    advantages = advantages * mask
    valid = advantages[mask > 0]
    metrics = dict(metrics or {})
    metrics["adv/mean"] = masked_mean(advantages, mask)
    metrics["adv/std"] = masked_var(advantages, mask).sqrt()
    metrics["adv/min"] = valid.min() if valid.numel() else advantages.new_zeros(())
    metrics["adv/max"] = valid.max() if valid.numel() else advantages.new_zeros(())
    if returns is not None:
        returns = returns * mask
        metrics["returns/mean"] = masked_mean(returns, mask)
    return AdvantageOutput(advantages=advantages, returns=returns, metrics=metrics)
