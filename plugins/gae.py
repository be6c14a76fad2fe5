"""GAE: generalized advantage estimation with a critic (Schulman et al. 2016; DAPO Eq. 2/3)."""
from __future__ import annotations

from typing import ClassVar

from rlloom import hookimpl
from rlloom.batch import RolloutBatch
from rlloom.kinds import AdvantageOutput
from rlloom.ops import masked_whiten
from rlloom.algos.returns import (
    check_clip,
    check_unit,
    finish,
    next_values,
    read,
    token_rewards,
)


class GAEAdvantage:
    """Generalized advantage estimation Â_t = Σ_l (γλ)^l δ_{t+l} with a critic (PPO).

    GAE, Schulman et al. 2016, as written in DAPO, Yu et al. 2025, Eq. 2/3:

        δ_t = r_t + γ V(s_{t+1}) − V(s_t),    Â_t = Σ_{l≥0} (γλ)^l δ_{t+l}

    computed backwards as Â_t = δ_t + γλ Â_{t+1}. Inputs: per-token rewards r_t [B,T]
    (``batch.token_rewards`` when set, plus ``batch.rewards`` [B] on the last real token) and
    ``batch.values`` [B,T], V(s_t) of the state before token t; V = 0 after the last real token.
    Output: ``advantages`` Â [B,T] and ``returns`` = Â + V [B,T] (the critic's target), 0 on
    padding. λ = 1 gives G_t − V(s_t) (REINFORCE with baseline), λ = 0 the one-step TD error.

    ``whiten`` normalises the advantages to zero mean and unit variance over the batch's valid
    tokens (PPO practice), after the returns are taken; ``clip`` then clips them to [−clip, clip].
    Peer conventions: off by default here; TRL's ``PPOTrainer`` and verl's ``gae`` estimator
    always whiten (mean and unbiased variance over the valid tokens, + 1e-8; TRL per process),
    so ``whiten: true`` reproduces both.
    """

    requires: ClassVar[set[str]] = {"rewards", "values"}

    def __init__(
        self,
        gamma: float = 1.0,
        lam: float = 0.95,
        whiten: bool = False,
        clip: float | None = None,
    ):
        self.gamma = check_unit("gamma", gamma)
        self.lam = check_unit("lam", lam)
        self.whiten = bool(whiten)
        self.clip = check_clip(clip)

    def __call__(self, batch: RolloutBatch) -> AdvantageOutput:
        r, mask = token_rewards(batch, "gae")
        values = read(batch, "values", "gae").to(r.dtype) * mask
        deltas = (r + self.gamma * next_values(values, mask) - values) * mask
        advantages = deltas.clone()
        for t in reversed(range(deltas.shape[1] - 1)):
            advantages[:, t] += self.gamma * self.lam * advantages[:, t + 1]
        returns = advantages + values
        if self.whiten:
            advantages = masked_whiten(advantages, mask)
        return finish(advantages, mask, self.clip, returns=returns)


@hookimpl
def rlloom_advantage():
    return {"gae": GAEAdvantage}
