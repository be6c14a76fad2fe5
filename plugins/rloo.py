"""RLOO: REINFORCE leave-one-out advantages (Ahmadian et al. 2024, "Back to Basics")."""
from __future__ import annotations

from typing import ClassVar

from rlloom import hookimpl
from rlloom.batch import RolloutBatch
from rlloom.kinds import AdvantageOutput
from rlloom.algos.returns import Groups, check_clip, finish, group_relative, read, read_mask


class RLOOAdvantage:
    """Leave-one-out baseline r_i − mean of the other G−1 rewards of the group, per token.

    RLOO, Ahmadian et al. 2024 ("Back to Basics"); an action-independent baseline as in
    REINFORCE with baseline (Williams 1992):

        Â_{i,t} = R_i − (1/(G−1)) Σ_{j≠i} R_j

    Inputs: ``batch.rewards`` [B], ``batch.group_ids`` [B] (any ids, any order, any sizes),
    ``batch.mask`` [B,T]. Output: ``advantages`` [B,T] (0 on padding), no returns. The same
    computation as ``grpo`` with ``leave_one_out: true, scale: none``. ``clip`` clips advantages
    to [−clip, clip]. Metrics as in ``grpo`` (``adv/single_groups`` counts groups of one).

    A group of one has no other member, so no baseline exists: its baseline is 0 and Â = R,
    plain REINFORCE for that completion. This follows verl's ``rloo`` estimator, which leaves
    a lone completion's score unchanged.
    """

    requires: ClassVar[set[str]] = {"rewards", "group_ids"}

    def __init__(self, clip: float | None = None):
        self.clip = check_clip(clip)

    def __call__(self, batch: RolloutBatch) -> AdvantageOutput:
        rewards = read(batch, "rewards", "rloo")
        mask = read_mask(batch, rewards)
        groups = Groups(batch.group_ids)
        seq = group_relative(rewards, groups, scale="none", eps=0.0, leave_one_out=True)
        return finish(seq.unsqueeze(1) * mask, mask, self.clip, metrics=groups.reward_metrics(rewards))


@hookimpl
def rlloom_advantage():
    return {"rloo": RLOOAdvantage}
