"""GRPO: group-relative advantages (Shao et al. 2024, DeepSeekMath; ProRL Eq. 2, DAPO Eq. 4/9).

G completions answer one prompt; each completion's sequence reward is compared with its
group's, and the result is given to every token of the completion.
"""
from __future__ import annotations

from typing import ClassVar

from rlloom.errors import ParameterError
from rlloom import hookimpl
from rlloom.batch import RolloutBatch
from rlloom.kinds import AdvantageOutput
from rlloom.algos.returns import (
    GROUP_SCALES,
    Groups,
    check_clip,
    finish,
    group_relative,
    read,
    read_mask,
)


class GRPOAdvantage:
    """Group-relative advantage (r − group mean) / (group std + eps), broadcast to every token.

    GRPO, Shao et al. 2024 (DeepSeekMath); ProRL, Liu et al. 2025, Eq. 2; DAPO, Yu et al. 2025,
    Eq. 4/9:

        Â_{i,t} = (R_i − mean({R_j}_{j∈G(i)})) / (std({R_j}_{j∈G(i)}) + eps)

    Inputs: ``batch.rewards`` [B], ``batch.group_ids`` [B] (arbitrary ids, any order, groups of
    any size), ``batch.mask`` [B,T]. Output: ``advantages`` [B,T] (0 on padding), no returns.

    Variant chosen: the std is the unbiased (Bessel-corrected, ``torch.std`` default) sample std,
    as GRPO implementations compute it. ``scale``: ``group`` divides by the group's std, ``batch``
    by the std of all rewards of the batch, ``none`` does not divide (Dr. GRPO, Liu et al.
    2025: A = r − mean(r_1..r_G)). ``leave_one_out`` replaces the group mean by the mean of the
    other G−1 completions (the RLOO baseline). ``clip`` clips advantages to [−clip, clip].
    ``eps``: the ε added to the std in the denominator.

    Peer conventions for the std epsilon: ``eps: 1e-6`` (default) is verl's ``grpo`` estimator
    (``epsilon=1e-6``); ``eps: 1e-4`` is TRL's ``GRPOTrainer`` (``std + 1e-4``, with its
    ``scale_rewards`` group/batch/none matching ``scale``).

    Groups must be whole within the batch. A group of one: with ``scale="group"`` its mean is 0
    and its std 1, so Â = R/(1+eps) (verl's convention); with ``leave_one_out`` its baseline is 0
    (no other member); with ``scale`` ``none``/``batch`` its own mean gives Â = 0. Metrics:
    ``adv/*``, ``reward/group_std_mean`` (mean over groups of the group std),
    ``reward/zero_std_frac`` (fraction of groups whose rewards are all equal),
    ``adv/single_groups`` (number of groups of one).
    """

    requires: ClassVar[set[str]] = {"rewards", "group_ids"}

    def __init__(
        self,
        scale: str = "group",
        eps: float = 1e-6,
        leave_one_out: bool = False,
        clip: float | None = None,
    ):
        if scale not in GROUP_SCALES:
            raise ParameterError(f"scale must be one of {', '.join(GROUP_SCALES)}, got {scale!r}")
        if not eps >= 0:
            raise ParameterError(f"eps must be >= 0, got {eps!r}")
        self.scale = scale
        self.eps = float(eps)
        self.leave_one_out = bool(leave_one_out)
        self.clip = check_clip(clip)

    def __call__(self, batch: RolloutBatch) -> AdvantageOutput:
        rewards = read(batch, "rewards", "grpo")
        mask = read_mask(batch, rewards)
        groups = Groups(batch.group_ids)
        seq = group_relative(rewards, groups, self.scale, self.eps, self.leave_one_out)
        return finish(seq.unsqueeze(1) * mask, mask, self.clip, metrics=groups.reward_metrics(rewards))


class GroupMeanAdvantage(GRPOAdvantage):
    """Group-mean baseline r − mean(group), not divided by the std (Dr. GRPO).

    Dr. GRPO, Liu et al. 2025 (Understanding R1-Zero-like training): A_i = r_i − mean(r_1, ...,
    r_G), broadcast to every token of completion i; identical to ``grpo`` with ``scale: none``.
    Shapes and metrics as in ``grpo``.
    """

    def __init__(self, clip: float | None = None):
        super().__init__(scale="none", clip=clip)


@hookimpl
def rlloom_advantage():
    return {"grpo": GRPOAdvantage, "group_mean": GroupMeanAdvantage}
