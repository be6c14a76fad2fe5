"""VinePPO: Monte Carlo value estimates per reasoning step, and k-step truncated returns.

Kazemnejad et al. 2024, arXiv:2410.01679: Monte Carlo advantages (VinePPO Eq. 5–7) and
k-step truncated returns (VinePPO Eq. 17); the ``vine`` sampler estimates the Monte Carlo
values V̂_MC of every reasoning step's start state (VinePPO §3) that ``vineppo`` reads.
"""
from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
from torch import Tensor

from rlloom import hookimpl
from rlloom.batch import RolloutBatch
from rlloom.errors import ConfigError, ParameterError, TrainingError
from rlloom.kinds import AdvantageOutput
from rlloom.rollout import PromptBatch, SamplerContext, WrappingSampler
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
            raise ParameterError(f"k must be an integer >= 1, got {k!r}")
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


def reasoning_step_ends(completion_ids: Tensor, mask: Tensor, delimiter_ids: list[int]) -> Tensor:
    """[B,T] long, 1 on the last token of every reasoning step, 0 elsewhere and on padding.

    A step ends at the last token of each occurrence of the token sequence ``delimiter_ids``
    among a row's real tokens (``mask`` 1, right-padded), and the last real token always ends
    the row's last step.
    """
    real = mask > 0
    n, width = len(delimiter_ids), completion_ids.shape[1]
    ends = torch.zeros_like(real)
    if 0 < n <= width:
        windows = completion_ids.unfold(1, n, 1)  # [B, T−n+1, n]
        ends[:, n - 1 :] = (windows == torch.tensor(delimiter_ids, dtype=completion_ids.dtype)).all(-1)
    return ((ends & real) | (last_token(mask.long()) > 0)).long()


class VineSampler(WrappingSampler):
    """VinePPO sampler: Monte Carlo values V̂_MC of every reasoning step's start, from K continuations.

    VinePPO, Kazemnejad et al. 2024, Eq. 5–7: V̂_MC(s) = (1/K) Σ_k R(η_k), η_k ~ π_θ(·|s), where s
    is the prompt plus the completion tokens before a step and R scores prefix(s) + η_k with the
    run's rewards (and the row's columns, e.g. ``answer``). Wraps ``base``: samples and scores
    the batch, splits each completion at the ``delimiter`` tokens (the last real token always
    ends the last step), and samples ``num_rollouts`` = K continuations of every step's start
    state (the prompt is step 0's) through ``base`` with ``num_generations=K``.

    Output, beside ``base``'s fields: ``values`` [B,T], V̂_MC of the start of the step holding
    token t (constant within a step, 0 on padding); ``step_ends`` [B,T], 1 on each step's last
    token. Metrics: ``vine/continuations``, ``vine/continuation_tokens``, ``vine/states``, ``vine/steps_mean``,
    ``vine/value_mean``, ``vine/time_s`` (a share of ``time/sample_s``).

    All states of the batch go to ``base`` in one left-padded call at token level (at most
    ``max_states_per_call`` states a call when set); identical states (a prompt shared by its
    group, equal prefixes) are estimated once and share V̂. Every continuation gets ``base``'s
    ``max_new_tokens``, also from a later state. ``base`` must return K completions per state
    (``generate``, not a filtering sampler), else a ``TrainingError``.
    """

    def __init__(self, base: Any, num_rollouts: int = 4, delimiter: str = "\n", max_states_per_call: int | None = None):
        if not callable(base):
            raise ParameterError(f"base must be a sampler (callable), got {type(base).__name__}")
        if isinstance(num_rollouts, bool) or not isinstance(num_rollouts, int) or num_rollouts < 1:
            raise ParameterError(f"num_rollouts (K continuations per state) must be an integer >= 1, got {num_rollouts!r}")
        if not isinstance(delimiter, str) or not delimiter:
            raise ParameterError(f"delimiter must be a non-empty string (the text ending a reasoning step), "
                             f"got {delimiter!r}")
        if max_states_per_call is not None and (
            isinstance(max_states_per_call, bool) or not isinstance(max_states_per_call, int) or max_states_per_call < 1
        ):
            raise ParameterError(f"max_states_per_call must be an integer >= 1 or null (all states in one call), "
                             f"got {max_states_per_call!r}")
        super().__init__(base)
        self.num_rollouts, self.delimiter = num_rollouts, delimiter
        self.max_states_per_call = max_states_per_call

    @property
    def provides(self) -> frozenset[str]:
        return super().provides | {"values", "step_ends"}

    def __call__(self, ctx: SamplerContext, prompts: PromptBatch, num_generations: int | None = None) -> RolloutBatch:
        batch = self.base(ctx, prompts, num_generations)
        if batch.rewards is None:
            batch = ctx.score(batch)
        start = time.perf_counter()
        ends = reasoning_step_ends(batch.completion_ids, batch.mask, self._delimiter_ids(ctx.tokenizer))
        real = batch.mask > 0
        after_end = torch.cat([torch.ones_like(real[:, :1]), ends[:, :-1] > 0], dim=1)
        step_index = ends.cumsum(1) - ends  # [B,T]: the step token t belongs to
        positions = (real & after_end).nonzero().tolist()  # (row, first token) of every step
        prompt_rows = [ids[m > 0].tolist() for ids, m in zip(batch.prompt_ids, batch.prompt_mask)]
        completion_rows = batch.completion_ids.tolist()
        distinct: dict[tuple, int] = {}
        states: list[tuple[int, int]] = []  # (row, prefix length) of each distinct state
        state_of = []
        for b, s in positions:
            key = (int(batch.group_ids[b]), tuple(prompt_rows[b]), tuple(completion_rows[b][:s]))
            if key not in distinct:
                distinct[key] = len(states)
                states.append((b, s))
            state_of.append(distinct[key])
        v_states, tokens = self._estimate(ctx, batch, states, prompt_rows, completion_rows)
        steps = int(ends.sum(1).max()) if len(batch) else 0
        table = torch.zeros(len(batch), max(steps, 1))
        if positions:
            rows, first = torch.tensor(positions).T
            table[rows, step_index[rows, first]] = v_states[torch.tensor(state_of)]
        batch.values = table.gather(1, step_index.clamp(max=table.shape[1] - 1)) * real
        batch.step_ends = ends
        batch.metrics = {
            **batch.metrics,
            "vine/continuations": float(len(states) * self.num_rollouts),
            "vine/continuation_tokens": float(tokens),
            "vine/states": float(len(states)),
            "vine/steps_mean": float(ends.sum()) / max(len(batch), 1),
            "vine/value_mean": float(v_states.mean()) if len(states) else 0.0,
            "vine/time_s": time.perf_counter() - start,
        }
        return batch

    def _delimiter_ids(self, tokenizer: Any) -> list[int]:
        ids = list(tokenizer(self.delimiter, add_special_tokens=False)["input_ids"])
        unk = getattr(tokenizer, "unk_token_id", None)
        if not ids or (unk is not None and unk in ids):
            raise ConfigError(f"sampler.delimiter: {self.delimiter!r} is not in the tokenizer's vocabulary "
                              f"(tokens {ids}), so no reasoning step could end at it")
        return ids

    def _estimate(self, ctx: SamplerContext, batch: RolloutBatch, states: list[tuple[int, int]],
                  prompt_rows: list[list[int]], completion_rows: list[list[int]]) -> tuple[Tensor, int]:
        """V̂_MC [S] of the ``states`` (row, prefix length), the mean reward of K continuations,
        and the number of continuation tokens sampled."""
        k, tok = self.num_rollouts, ctx.tokenizer
        columns = {c: v for c, v in batch.columns.items() if not c.startswith("reward/")}
        sums, counts = torch.zeros(len(states)), torch.zeros(len(states))
        tokens = 0
        size = self.max_states_per_call or max(len(states), 1)
        for lo in range(0, len(states), size):
            chunk = states[lo : lo + size]
            prefixes = [completion_rows[b][:s] for b, s in chunk]
            source = [b for b, _ in chunk]
            ids, attn = _pad([prompt_rows[b] + p for b, p in zip(source, prefixes)], tok.pad_token_id, left=True)
            out = self.base(ctx, PromptBatch(
                ids, attn, torch.arange(len(chunk)), [batch.prompts[b] for b in source],
                {c: [v[b] for b in source] for c, v in columns.items()},
            ), k)
            state = out.group_ids.long()
            if len(out) != len(chunk) * k or bool((torch.bincount(state, minlength=len(chunk)) != k).any()):
                raise TrainingError(
                    f"sampler 'vine': base {type(self.base).__name__} returned {len(out)} completions for "
                    f"{len(chunk)} states × {k} continuations; base must return num_generations completions "
                    f"per prompt (a plain sampler such as `generate`, not a filtering one)"
                )
            # The reward sees the whole completion: the state's prefix followed by the continuation.
            tails = [ids_[m > 0].tolist() for ids_, m in zip(out.completion_ids, out.mask)]
            full = [prefixes[i] + t for i, t in zip(state.tolist(), tails)]
            full_ids, full_mask = _pad(full, tok.pad_token_id, left=False)
            rows = torch.tensor(source)[state]
            scored = ctx.score(RolloutBatch(
                prompt_ids=batch.prompt_ids[rows],
                prompt_mask=batch.prompt_mask[rows],
                completion_ids=full_ids,
                mask=full_mask,
                group_ids=state,
                prompts=[batch.prompts[b] for b in rows.tolist()],
                completions=tok.batch_decode(full_ids, skip_special_tokens=True),
                columns={c: [v[b] for b in rows.tolist()] for c, v in columns.items()},
                truncated=out.truncated,
            ))
            sums[lo : lo + len(chunk)] += torch.zeros(len(chunk)).index_add_(0, state, scored.rewards.float())
            counts[lo : lo + len(chunk)] += k
            tokens += int(out.mask.sum())
        return sums / counts.clamp(min=1), tokens


def _pad(rows: list[list[int]], pad: int, left: bool) -> tuple[Tensor, Tensor]:
    """Token rows as ids and attention mask [N, longest], padded on the left or the right."""
    width = max([len(r) for r in rows] + [1])
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
    return ids, mask


@hookimpl
def rlloom_advantage():
    return {"vineppo": VinePPOAdvantage, "kstep": KStepAdvantage}


@hookimpl
def rlloom_sampler():
    return {"vine": VineSampler}
