"""REINFORCE advantages: return-to-go, with a learned baseline, and REINFORCE++.

REINFORCE (Williams 1992; return-to-go G_t), REINFORCE with baseline (A_t = G_t − V(s_t);
Sutton & Barto 2018, §13.4); REINFORCE++ (Hu 2025: return-to-go, optionally minus a group-mean
baseline, then whitened over the whole batch).
"""
from __future__ import annotations

from typing import ClassVar

from rlloom.errors import ParameterError
from rlloom import hookimpl
from rlloom.batch import RolloutBatch
from rlloom.kinds import AdvantageOutput
from rlloom.ops import masked_whiten
from rlloom.algos.returns import (
    Groups,
    check_clip,
    check_unit,
    discounted_returns,
    finish,
    read,
    token_rewards,
)


class ReinforceAdvantage:
    """Return-to-go G_t = Σ_{k≥t} γ^{k−t} r_k as the advantage of token t (REINFORCE).

    REINFORCE, Williams 1992: ∇J = E[Σ_t ∇ log π(a_t|s_t) G_t], G_t = Σ_{k=t}^{T} γ^{k−t} r_k.

    Per-token rewards r_t [B,T]: ``batch.token_rewards`` when set, plus ``batch.rewards`` [B] on
    the last real token. Output: ``advantages`` = ``returns`` = G_t [B,T], 0 on padding.
    ``gamma`` in [0, 1] is the per-token discount; ``clip`` clips advantages to [−clip, clip].
    """

    requires: ClassVar[set[str]] = {"rewards"}

    def __init__(self, gamma: float = 1.0, clip: float | None = None):
        self.gamma = check_unit("gamma", gamma)
        self.clip = check_clip(clip)

    def __call__(self, batch: RolloutBatch) -> AdvantageOutput:
        r, mask = token_rewards(batch, "reinforce")
        returns = discounted_returns(r, mask, self.gamma)
        return finish(returns, mask, self.clip, returns=returns)


class ReinforceBaselineAdvantage:
    """Return-to-go minus the critic's value, A_t = G_t − V(s_t) (REINFORCE with baseline).

    REINFORCE with baseline (Williams 1992; Sutton & Barto 2018, §13.4): A_t = G_t − V_φ(s_t),
    G_t = Σ_{k≥t} γ^{k−t} r_k; the critic regresses on G_t.

    Inputs: per-token rewards as in ``reinforce``; ``batch.values`` [B,T], V(s_t) of the state
    before token t. Output: ``advantages`` [B,T] and ``returns`` = G_t [B,T] (the critic's
    target), both 0 on padding. ``clip`` clips advantages (not returns) to [−clip, clip].
    """

    requires: ClassVar[set[str]] = {"rewards", "values"}

    def __init__(self, gamma: float = 1.0, clip: float | None = None):
        self.gamma = check_unit("gamma", gamma)
        self.clip = check_clip(clip)

    def __call__(self, batch: RolloutBatch) -> AdvantageOutput:
        r, mask = token_rewards(batch, "reinforce_baseline")
        values = read(batch, "values", "reinforce_baseline").to(r.dtype)
        returns = discounted_returns(r, mask, self.gamma)
        return finish(returns - values, mask, self.clip, returns=returns)


class ReinforcePPAdvantage:
    """REINFORCE++: whiten over the batch's tokens of G_t, optionally minus the group mean of R.

    REINFORCE++, Hu 2025 (arXiv:2501.03262): per-token return-to-go normalised over the global
    batch, not per prompt; G_t as in ``reinforce``:

        baseline="none":  Â_{i,t} = whiten_{(j,s) valid}( G_{j,s} )_{i,t}
        baseline="group": Â_{i,t} = whiten_{(j,s) valid}( G_{j,s} − mean_{k∈G(j)} R_k )_{i,t}

    with G_{i,t} = Σ_{k≥t} γ^{k−t} r_{i,k} (a KL penalty in the token rewards gives the paper's
    r − β Σ_{k≥t} KL_k), mean_{k∈G(i)} R_k the mean ``batch.rewards`` of completion i's group
    (itself included, so a group of one is its own baseline), and whiten(x) = (x − μ)/sqrt(σ² +
    1e-8) with μ and the unbiased σ² over every valid token of the batch. ``none`` is plain
    REINFORCE++ (verl's ``reinforce_plus_plus``; ``group_ids`` unused); ``group`` is REINFORCE++
    with baseline (verl's ``reinforce_plus_plus_baseline``, whose group of one has baseline 0).
    Output: ``advantages`` [B,T] and ``returns`` = G_t [B,T], 0 on padding; ``clip`` clips the
    whitened advantages. Metrics: ``adv/*``; with ``group`` also ``reward/group_std_mean``,
    ``reward/zero_std_frac`` and ``adv/single_groups`` (as in ``grpo``).
    """

    requires: ClassVar[set[str]] = {"rewards", "group_ids"}
    BASELINES: ClassVar[tuple[str, ...]] = ("group", "none")

    def __init__(self, gamma: float = 1.0, clip: float | None = None, baseline: str = "group"):
        if baseline not in self.BASELINES:
            raise ParameterError(
                f"baseline must be one of {', '.join(self.BASELINES)} ('group': minus the group's mean "
                f"reward; 'none': plain REINFORCE++), got {baseline!r}"
            )
        self.gamma = check_unit("gamma", gamma)
        self.clip = check_clip(clip)
        self.baseline = baseline

    def __call__(self, batch: RolloutBatch) -> AdvantageOutput:
        r, mask = token_rewards(batch, "reinforce_pp")
        returns = discounted_returns(r, mask, self.gamma)
        if self.baseline == "none":
            return finish(masked_whiten(returns, mask), mask, self.clip, returns=returns)
        rewards = read(batch, "rewards", "reinforce_pp")
        groups = Groups(batch.group_ids)
        centred = (returns - groups.mean(rewards).unsqueeze(1)) * mask
        return finish(
            masked_whiten(centred, mask),
            mask,
            self.clip,
            returns=returns,
            metrics=groups.reward_metrics(rewards),
        )


@hookimpl
def rlloom_advantage():
    return {
        "reinforce": ReinforceAdvantage,
        "reinforce_baseline": ReinforceBaselineAdvantage,
        "reinforce_pp": ReinforcePPAdvantage,
    }
