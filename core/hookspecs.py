"""Every extension point of rlloom, as pluggy hook specifications.

Registration hooks (one per component kind) are called once, when the registry is built;
each returns ``{name: factory}`` for the components the plugin provides. ``rlloom_kinds`` lets
a plugin add a kind of its own. Lifecycle hooks observe a run; their return values are
ignored, and they must not change the objects they are given.
"""
from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT = "rlloom"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Factories = dict[str, Callable[..., Any]]


@hookspec
def rlloom_advantage() -> Factories:
    """Advantage estimators: ``batch -> AdvantageOutput`` (GRPO, GAE, RLOO, ...)."""


@hookspec
def rlloom_policy_loss() -> Factories:
    """Policy losses: ``(logprobs, batch) -> LossOutput`` (PPO clip, DPO, SFT NLL, ...)."""


@hookspec
def rlloom_kl() -> Factories:
    """KL estimators: ``(logprobs, ref_logprobs, logits, ref_logits) -> [B,T]`` (k1, k2, k3, exact)."""


@hookspec
def rlloom_reward() -> Factories:
    """Reward functions: ``(prompts, completions, **columns) -> list[float]``."""


@hookspec
def rlloom_sampler() -> Factories:
    """Samplers: ``(ctx, prompts) -> RolloutBatch`` with G completions per prompt."""


@hookspec
def rlloom_ref_policy() -> Factories:
    """Reference-policy managers: none, frozen, periodic reset, EMA, ..."""


@hookspec
def rlloom_aggregation() -> Factories:
    """Loss aggregations: ``(loss [B,T], mask, scope) -> scalar`` share of the step loss."""


@hookspec
def rlloom_schedule() -> Factories:
    """Learning-rate schedules: ``(step, total_steps) -> multiplier``."""


@hookspec
def rlloom_task() -> Factories:
    """Tasks: objects with ``load(split) -> datasets.Dataset``."""


@hookspec
def rlloom_value_loss() -> Factories:
    """Critic losses: ``(values, batch) -> LossOutput``."""


@hookspec
def rlloom_update() -> Factories:
    """Update rules: ``make_optimizer(params, lr)`` and ``step(closure) -> metrics`` (AdamW,
    TRPO's natural gradient, ...)."""


@hookspec
def rlloom_kinds() -> dict[str, dict[str, Factories]]:
    """New kinds: ``{kind: {name: factory}}`` for kinds the core does not define.

    The engine only calls kinds it knows; a new kind is for plugins that read it themselves
    (through ``rlloom.registry``) from their lifecycle hooks or components.
    """


@hookspec
def rlloom_run_start(config: Any, run_id: str | None) -> None:
    """Called once before the first step with the resolved config and the MLflow run id."""


@hookspec
def rlloom_after_sample(step: int, batch: Any) -> None:
    """Called after sampling and scoring, with the step's ``RolloutBatch`` (rewards filled)."""


@hookspec
def rlloom_after_step(step: int, metrics: dict[str, float]) -> None:
    """Called after each optimizer step with the metrics logged for that step."""


@hookspec
def rlloom_run_end(step: int, metrics: dict[str, float]) -> None:
    """Called once when training ends, with the last step and its metrics."""
