"""DAPO: Decoupled clip and Dynamic sAmpling Policy Optimization (Yu et al. 2025, arXiv:2503.14476).

The pieces DAPO adds to the pipeline:

- ``overlong`` reward: soft overlong punishment, DAPO Eq. 13.
- ``dynamic`` sampler: dynamic sampling, keeping only groups with mixed outcomes, DAPO Eq. 8.

Its decoupled clip (ε_low, ε_high; Eq. 10) is ``ppo_clip(eps_low=..., eps_high=...)`` and its
token-level loss is the ``token_mean`` aggregation.
"""
from __future__ import annotations

from typing import Any

import torch

from rlloom.errors import ParameterError
from rlloom import hookimpl
from rlloom.batch import RolloutBatch
from rlloom.rewarding import column
from rlloom.rollout import PromptBatch, SamplerContext, WrappingSampler, concat_rollouts


class Overlong:
    """DAPO soft overlong punishment: 0 up to max_len - cache_len tokens, then falling to -1.

    DAPO, Yu et al. 2025, Eq. 13, with ``L = |y|`` the completion's length in tokens (the
    ``completion_lengths`` column), ``L_max = max_len`` and ``L_cache = cache_len``::

        R_length(y) = 0                                  if L ≤ L_max − L_cache
                      ((L_max − L_cache) − L) / L_cache  if L_max − L_cache < L ≤ L_max
                      −1                                 if L > L_max

    The penalty falls linearly from 0 to −1 across the last ``cache_len`` tokens of the
    budget; it is added to the outcome reward before advantages are normalised. ``max_len``
    is normally the sampler's generation budget, so a truncated completion gets −1.
    """

    def __init__(self, max_len: int, cache_len: int):
        if not 0 < cache_len <= max_len:
            raise ParameterError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
        self.max_len, self.cache_len = int(max_len), int(cache_len)

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        lengths = column(columns, "completion_lengths", "reward 'overlong'")
        free = self.max_len - self.cache_len
        return [
            0.0 if n <= free else (free - n) / self.cache_len if n <= self.max_len else -1.0
            for n in map(int, lengths)
        ]


class DynamicSampling(WrappingSampler):
    """DAPO dynamic sampling: keep only prompts whose G rewards are not all equal.

    DAPO, Yu et al. 2025, Eq. 8: 0 < |{o_i : is_equivalent(a, o_i)}| < G. A group whose
    completions are all right or all wrong has zero group-relative advantage and only adds
    noise, so it is dropped; with a ±1 outcome reward "rewards not all equal" is exactly
    Eq. 8, and it extends to shaped rewards. Wraps the sampler ``base``: samples and scores
    a batch, keeps the mixed groups, and draws further prompt batches (``ctx.next_prompts``)
    until as many groups as prompts were asked for are kept or ``max_batches`` batches were
    drawn. When nothing is kept the last batch is returned unfiltered (its advantages are 0).
    Metrics (in the batch's ``metrics``): ``filter/kept_frac`` (kept ÷ sampled groups),
    ``filter/batches``.
    """

    def __init__(self, base: Any, max_batches: int = 3):
        if max_batches < 1:
            raise ParameterError(f"max_batches must be >= 1, got {max_batches}")
        super().__init__(base)
        self.max_batches = max_batches

    def __call__(self, ctx: SamplerContext, prompts: PromptBatch, num_generations: int | None = None) -> RolloutBatch:
        wanted = len(prompts)
        kept: list[RolloutBatch] = []
        kept_groups = sampled_groups = draws = 0
        batch = None
        while draws < self.max_batches and kept_groups < wanted:
            if draws:
                prompts = ctx.next_prompts()
            batch = ctx.score(self.base(ctx, prompts, num_generations))
            draws += 1
            mixed = [g for g in batch.group_ids.unique().tolist() if _spread(batch, g) > 0]
            sampled_groups += int(batch.group_ids.unique().numel())
            mixed = mixed[: wanted - kept_groups]
            if mixed:
                rows = torch.isin(batch.group_ids, torch.tensor(mixed)).nonzero().squeeze(1)
                kept.append(batch.select(rows))
                kept_groups += len(mixed)
        out = concat_rollouts(kept, ctx.tokenizer.pad_token_id) if kept else batch
        out.metrics = {
            **out.metrics,
            "filter/kept_frac": kept_groups / max(sampled_groups, 1),
            "filter/batches": float(draws),
        }
        return out


def _spread(batch: RolloutBatch, group: int) -> float:
    rewards = batch.rewards[batch.group_ids == group]
    return float(rewards.max() - rewards.min())


@hookimpl
def rlloom_reward():
    return {"overlong": Overlong}


@hookimpl
def rlloom_sampler():
    return {"dynamic": DynamicSampling}
