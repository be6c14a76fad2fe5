"""An advantage estimator: the group-median baseline (``advantage: median_baseline``)."""
from __future__ import annotations

from typing import ClassVar

import torch

from rlloom import AdvantageOutput, RolloutBatch
from rlloom.algos import Groups, check_positive, finish, read, read_mask


class MedianBaseline:
    """Group-median baseline: A_i = r_i − median(r_group), broadcast to tokens.

    Like GRPO's group-mean centring (Shao et al. 2024) with the median as the baseline, so one
    outlier reward in a group does not shift every other member's advantage. For an even
    group size the median is the mean of the two middle rewards. Shapes: rewards [B],
    group_ids [B], mask [B,T] → advantages [B,T] (0 on padding). ``scale``: a positive factor
    on every advantage.
    """

    requires: ClassVar[set[str]] = {"rewards", "group_ids"}

    def __init__(self, scale: float = 1.0):
        self.scale = check_positive("scale", scale)

    def __call__(self, batch: RolloutBatch) -> AdvantageOutput:
        rewards = read(batch, "rewards", "median_baseline")
        groups = Groups(batch.group_ids)
        baseline = torch.empty_like(rewards)
        for g in range(len(groups.ids)):
            members = groups.inverse == g
            ordered = rewards[members].sort().values
            n = ordered.numel()
            baseline[members] = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
        advantages = (rewards - baseline) * self.scale
        mask = read_mask(batch, rewards)
        # finish: zero padding and the adv/* metrics every builtin reports, per token
        return finish(advantages[:, None] * mask, mask, clip=None)

